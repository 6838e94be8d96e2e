//! A QMP client with just what driving a reset takes: the greeting, commands, events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why talking to QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// QEMU exited before its QMP socket accepted a connection.
    #[error("QEMU exited before QMP was up ({0})")]
    Exited(std::process::ExitStatus),
    /// No connection within the time limit.
    #[error("no QMP socket after {0:?}")]
    NoSocket(Duration),
    /// Reading or writing the socket failed (a timeout included).
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection.
    #[error("QEMU closed the QMP connection")]
    Closed,
    /// A line that is not a QMP message.
    #[error("not a QMP message: {0:?}")]
    Garbled(String),
    /// A command answered with an error.
    #[error("{command}: {error}")]
    Command {
        /// The command.
        command: String,
        /// QMP's error object.
        error: Value,
    },
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events read while waiting for command answers, not yet asked for.
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `socket` once QEMU (`child`) has created it, reads the greeting
    /// and enters command mode. Waits at most `limit` for the socket; each read after
    /// that at most `io_limit`.
    pub fn connect(
        socket: &Path,
        child: &mut Child,
        limit: Duration,
        io_limit: Duration,
    ) -> Result<Self, QmpError> {
        let start = Instant::now();
        let stream = loop {
            if let Ok(s) = UnixStream::connect(socket) {
                break s;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(QmpError::Exited(status));
            }
            if start.elapsed() > limit {
                return Err(QmpError::NoSocket(limit));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        stream.set_read_timeout(Some(io_limit))?;
        let mut qmp = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = qmp.next()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Garbled(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn next(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Garbled(line))
    }

    /// Runs `command` (no arguments) and returns its `return` value.
    pub fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        self.writer
            .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())?;
        loop {
            let mut msg = self.next()?;
            if let Some(error) = msg.get_mut("error") {
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    error: error.take(),
                });
            }
            if let Some(ret) = msg.get_mut("return") {
                return Ok(ret.take());
            }
            self.events.push(msg);
        }
    }

    /// Waits for the event `name` (it may have come already, during a command).
    pub fn event(&mut self, name: &str) -> Result<Value, QmpError> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return Ok(self.events.remove(i));
        }
        loop {
            let msg = self.next()?;
            if msg["event"] == name {
                return Ok(msg);
            }
            self.events.push(msg);
        }
    }

    /// `system_reset`, returning once QEMU has run every reset handler (its `RESET`
    /// event comes after them).
    pub fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset")?;
        self.event("RESET").map(drop)
    }

    /// `quit`, returning once QEMU has answered or closed the connection (closing
    /// the socket before QEMU has read `quit` would lose it).
    pub fn quit(mut self) -> Result<(), QmpError> {
        match self.execute("quit") {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e),
        }
    }
}
