//! `VEPC_LOG`: one JSON object per line for every intercepted call, appended so that
//! several processes (a VMM and its helpers) can share one file.
//!
//! Every line has `call` (the libc entry point, or `script`, `release`, `faults`),
//! `pid` and `t_us` (microseconds since the shim started); calls on a descriptor add
//! `fd` and, once mapped, `instance` (`S0`, …); `ioctl` adds `request` and `arg` (hex
//! strings, as `strace` shows them) and `result`: the return value, or an errno name.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Map, Value};
use vepc::abi::Errno;

/// The log, or nothing when `VEPC_LOG` is unset.
#[derive(Debug)]
pub struct Log {
    file: Option<Mutex<std::fs::File>>,
    start: Instant,
}

impl Log {
    /// Opens `path` for appending; a log that cannot be opened is reported once on
    /// stderr and the program runs unlogged.
    pub fn open(path: Option<&std::path::Path>) -> Self {
        let file = path.and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| eprintln!("vepc-preload: VEPC_LOG={}: {e}", p.display()))
                .ok()
        });
        Self {
            file: file.map(Mutex::new),
            start: Instant::now(),
        }
    }

    /// Whether lines are written at all.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Writes one line: `call`, then `fields` in order.
    pub fn line(&self, call: &str, fields: Vec<(&str, Value)>) {
        let Some(file) = &self.file else { return };
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
        let mut f = vepc::sync::unpoisoned(file);
        // One write per line: with O_APPEND, lines from processes never interleave.
        let _ = f.write_all(text.as_bytes());
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
        let log = Log::open(Some(&path));
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
        let log = Log::open(None);
        assert!(!log.enabled());
        log.line("open", vec![]);
    }
}
