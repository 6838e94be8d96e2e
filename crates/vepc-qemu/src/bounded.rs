//! Child processes with bounds: every program `vepc qemu-check` runs (QEMU's
//! `--version`, `objdump` on its binary) gets a time limit and a limit on what it may
//! print. A QEMU that hangs is killed at the limit and one that prints without end is
//! stopped at the cap: the error says which, and nothing waits or grows for ever.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a program may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall time until it is killed.
    pub time: Duration,
    /// Bytes of standard output (and, separately, of standard error) kept.
    pub bytes: usize,
}

/// What a program printed before it exited.
#[derive(Debug)]
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// Why a bounded program gave no output.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    /// It could not be started.
    #[error("cannot start {program}: {err}")]
    Start {
        /// The program.
        program: String,
        /// Why.
        err: std::io::Error,
    },
    /// It ran past the time limit, and was killed.
    #[error("{program} ran longer than {}s and was stopped", .limit.as_secs())]
    TimedOut {
        /// The program.
        program: String,
        /// The limit.
        limit: Duration,
    },
    /// It printed more than the cap, and was killed.
    #[error("{program} printed more than {limit} bytes and was stopped")]
    TooMuch {
        /// The program.
        program: String,
        /// The cap.
        limit: usize,
    },
}

/// Reads `from` into memory up to `cap` bytes; `None` past the cap (the reader stops
/// there, closing its end of the pipe).
pub fn read_capped(mut from: impl Read, cap: usize) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match from.read(&mut chunk) {
            Ok(0) => return Some(buf),
            Ok(n) => {
                if buf.len() + n > cap {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Some(buf),
        }
    }
}

/// Reads `from` keeping the first `cap` bytes and discarding the rest as it comes, so
/// that the writer never blocks on a full pipe: a program's stderr, kept in part.
pub fn read_keeping(mut from: impl Read, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match from.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) => {
                let room = cap.saturating_sub(buf.len()).min(n);
                buf.extend_from_slice(&chunk[..room]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return buf,
        }
    }
}

/// Waits for `child` at most `limit`; kills it past that (`None`).
pub fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to its end within `limits`.
pub fn output(cmd: &mut Command, limits: Limits) -> Result<Output, BoundedError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| BoundedError::Start {
            program: program.clone(),
            err,
        })?;
    let cap = limits.bytes;
    let out = child
        .stdout
        .take()
        .map(|o| std::thread::spawn(move || read_capped(o, cap)));
    let err = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || read_keeping(e, cap)));
    // A reader past its cap returns at once: the program is then killed, not
    // waited for.
    let start = Instant::now();
    let mut over = false;
    let status = loop {
        if out.as_ref().is_some_and(|h| h.is_finished()) && !over {
            over = true;
        }
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if start.elapsed() > limits.time {
            break None;
        }
        if over {
            // stdout ended (or overflowed) while the program runs: give it a moment.
            if let Some(s) = wait_for(&mut child, Duration::from_millis(200).min(limits.time)) {
                break Some(s);
            }
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or(Some(Vec::new()));
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let Some(stdout) = stdout else {
        return Err(BoundedError::TooMuch {
            program,
            limit: cap,
        });
    };
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(BoundedError::TimedOut {
            program,
            limit: limits.time,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        time: Duration::from_secs(2),
        bytes: 64 * 1024,
    };

    #[test]
    fn a_program_that_prints_without_end_is_stopped_at_the_cap() {
        let t = Instant::now();
        let r = output(&mut Command::new("yes"), SMALL);
        assert!(matches!(r, Err(BoundedError::TooMuch { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_program_that_hangs_is_stopped_at_the_time_limit() {
        let t = Instant::now();
        let r = output(Command::new("sleep").arg("30"), SMALL);
        assert!(matches!(r, Err(BoundedError::TimedOut { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_quick_program_gives_its_output() {
        let r = output(Command::new("echo").arg("hi"), SMALL).expect("runs");
        assert!(r.status.success());
        assert_eq!(r.stdout, b"hi\n");
    }
}
