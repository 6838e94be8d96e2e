//! `VEPC_LOG`: one JSON object per line for every intercepted call, appended so that
//! several processes (a VMM and its helpers) can share one file.
//!
//! Every line has `call` (the libc entry point, or `script`, `release`, `faults`),
//! `pid` and `t_us` (microseconds since the shim started); calls on a descriptor add
//! `fd` and, once mapped, `instance` (`S0`, …); `ioctl` adds `request` and `arg` (hex
//! strings, as `strace` shows them) and `result`: the return value, or an errno name.

use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Map, Value};
use vepc::abi::Errno;
use vepc::sys::kept::Kept;

/// The most a program's log may hold, in bytes written by this process: past it one
/// last line says so and the log stops. A program that makes calls without end (a
/// VMM's `ioctl` per vCPU exit would not be logged, but a loop of `mmap`s would) does
/// not fill the disk.
pub const MAX_LOG_BYTES: u64 = 256 << 20;

/// The log, or nothing when `VEPC_LOG` is unset.
#[derive(Debug)]
pub struct Log {
    file: Option<Mutex<Sink>>,
    start: Instant,
}

#[derive(Debug)]
struct Sink {
    fd: Kept,
    path: std::path::PathBuf,
    written: u64,
    stopped: bool,
}

/// Why `VEPC_LOG` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("VEPC_LOG={}: {err}", .path.display())]
pub struct LogError {
    /// The path.
    pub path: std::path::PathBuf,
    /// What opening or writing it answered.
    pub err: std::io::Error,
}

impl Log {
    /// Opens `path` for appending, as one of the shim's own descriptors (out of the
    /// program's reach). A path that cannot be opened as a file to append to (a
    /// missing directory, a directory) is an error.
    pub fn open(path: Option<&std::path::Path>) -> Result<Self, LogError> {
        let file = match path {
            None => None,
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|err| LogError {
                        path: p.to_owned(),
                        err,
                    })?;
                Some(Mutex::new(Sink {
                    fd: Kept::new(OwnedFd::from(f)),
                    path: p.to_owned(),
                    written: 0,
                    stopped: false,
                }))
            }
        };
        Ok(Self {
            file,
            start: Instant::now(),
        })
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Writes one line: `call`, then `fields` in order. A failed write is said once on
    /// stderr and ends the log; so does reaching [`MAX_LOG_BYTES`], with a last line.
    pub fn line(&self, call: &str, fields: Vec<(&str, Value)>) {
        if let Err(e) = self.write(call, fields) {
            eprintln!("vepc-preload: {e}; nothing more is logged");
        }
    }

    /// [`line`](Self::line), answering whether the line was written (and saying
    /// nothing on stderr: the caller does).
    pub fn write(&self, call: &str, fields: Vec<(&str, Value)>) -> Result<(), LogError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut sink = vepc::sync::unpoisoned(file);
        if sink.stopped {
            return Ok(());
        }
        let mut text = self.text(call, fields);
        if sink.written + text.len() as u64 > MAX_LOG_BYTES {
            sink.stopped = true;
            text = self.text(
                "log",
                vec![
                    ("result", "stopped".into()),
                    ("bytes", sink.written.into()),
                    (
                        "why",
                        format!("VEPC_LOG holds at most {MAX_LOG_BYTES} bytes").into(),
                    ),
                ],
            );
        }
        // One write per line: with O_APPEND, lines from processes never interleave.
        match rustix::io::write(&sink.fd, text.as_bytes()) {
            Ok(n) if n == text.len() => {
                sink.written += n as u64;
                Ok(())
            }
            other => {
                sink.stopped = true;
                let err = match other {
                    Err(e) => std::io::Error::from_raw_os_error(e.raw_os_error()),
                    Ok(n) => std::io::Error::other(format!("{n} of {} bytes written", text.len())),
                };
                Err(LogError {
                    path: sink.path.clone(),
                    err,
                })
            }
        }
    }

    fn text(&self, call: &str, fields: Vec<(&str, Value)>) -> String {
        let mut obj = Map::new();
        obj.insert("call".into(), call.into());
        obj.insert("pid".into(), std::process::id().into());
        let t = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        obj.insert("t_us".into(), t.into());
        for (k, v) in fields {
            obj.insert(k.into(), v);
        }
        let mut text = Value::Object(obj).to_string();
        text.push('\n');
        text
    }
}

/// A number as the log's hex string (`0xa404`).
pub fn hex(n: u64) -> Value {
    format!("{n:#x}").into()
}

/// A call's result: the value, or the errno's name (its number if it has none).
pub fn result<T: Into<Value>>(r: Result<T, Errno>) -> Value {
    match r {
        Ok(v) => v.into(),
        Err(e) => e.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_call_first_fields() {
        let path = std::env::temp_dir().join(format!("vepc-log-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = Log::open(Some(&path)).expect("a file");
        assert!(log.enabled());
        log.line(
            "ioctl",
            vec![
                ("fd", 5.into()),
                ("request", hex(0xa404)),
                ("arg", hex(0)),
                ("result", result::<u64>(Err(Errno::EBUSY))),
            ],
        );
        log.line("ioctl", vec![("result", result(Ok::<u64, Errno>(1)))]);
        let text = std::fs::read_to_string(&path).expect("log written");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["call"], "ioctl");
        assert_eq!(lines[0]["request"], "0xa404");
        assert_eq!(lines[0]["arg"], "0x0");
        assert_eq!(lines[0]["result"], "EBUSY");
        assert_eq!(lines[1]["result"], 1);
        assert_eq!(lines[0]["pid"], std::process::id());
    }

    #[test]
    fn no_path_no_log() {
        let log = Log::open(None).expect("no file");
        assert!(!log.enabled());
        log.line("open", vec![]);
    }

    #[test]
    fn a_log_that_cannot_be_written_says_so() {
        let dir = std::env::temp_dir();
        assert!(Log::open(Some(&dir)).is_err(), "a directory");
        assert!(Log::open(Some(std::path::Path::new("/nonexistent/log"))).is_err());
        let full = Log::open(Some(std::path::Path::new("/dev/full"))).expect("opens");
        let e = full.write("init", vec![]).expect_err("ENOSPC");
        assert!(e.to_string().contains("/dev/full"), "{e}");
        // Once failed, the log is quiet.
        assert!(full.write("init", vec![]).is_ok());
    }
}
