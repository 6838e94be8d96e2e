//! One QEMU run on the shim: start it stopped (`-S`) with vEPC sections, let its
//! start-up reset run, send `system_reset` as often as asked, check it still answers,
//! quit, and cut the shim's log into the resets that made it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bounded::{self, BoundedError, Limits, wait_for};
use crate::log::{self, Reset};
use crate::qmp::{Qmp, QmpError};

/// How long QEMU may take to reach its QMP greeting (a slow CI machine, a large
/// prealloc) and to answer each message after it.
const START_LIMIT: Duration = Duration::from_secs(30);
const IO_LIMIT: Duration = Duration::from_secs(30);

/// What to run QEMU with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// One `memory-backend-epc` per entry, in bytes, all `prealloc=on`, all on node 0.
    pub sections: Vec<u64>,
    /// Guest actions (docs/SCRIPT.md) the shim runs once before QEMU's first REMOVE_ALL,
    /// on the sections named `S0`, `S1`, … (`VEPC_SCRIPT`).
    pub script: Option<String>,
    /// More of the shim's variables (`VEPC_INJECT`, `VEPC_KERNEL`, …).
    pub env: Vec<(String, String)>,
    /// How many `system_reset`s to send after the start-up reset.
    pub resets: u32,
}

impl Default for Setup {
    /// Two sections of 64 MiB and 32 MiB, one `system_reset`.
    fn default() -> Self {
        Self {
            sections: vec![64 << 20, 32 << 20],
            script: None,
            env: Vec::new(),
            resets: 1,
        }
    }
}

impl Setup {
    /// With `script` as the guest's actions.
    pub fn script(mut self, script: &str) -> Self {
        self.script = Some(script.to_owned());
        self
    }

    /// With the shim variable `key` set to `value`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// With `n` `system_reset`s after the start-up reset.
    pub fn resets(mut self, n: u32) -> Self {
        self.resets = n;
        self
    }
}

/// What one run left.
#[derive(Debug)]
pub struct Run {
    /// The REMOVE_ALL calls of each reset: the start-up reset first, then one per
    /// `system_reset`.
    pub resets: Vec<Reset>,
    /// The whole shim log.
    pub log: Vec<Value>,
    /// QEMU's standard error.
    pub stderr: String,
    /// Whether QEMU still answered QMP after the last reset.
    pub alive: bool,
}

impl Run {
    /// Lines of QEMU's stderr that contain `text`.
    pub fn stderr_lines(&self, text: &str) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains(text)).collect()
    }

    /// How QEMU's prealloc met the vEPC mappings: its `MADV_POPULATE_WRITE` calls on
    /// them and their answers. On an SGX host (and on the shim) the probe answers
    /// `EINVAL` (`VM_PFNMAP`), and QEMU touches every page from its own threads,
    /// catching `SIGBUS`; one `Ok` here would mean it populated through the kernel.
    pub fn populate_probes(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|l| l["call"] == "madvise" && l["advice"] == "MADV_POPULATE_WRITE")
            .map(|l| l["result"].to_string().trim_matches('"').to_owned())
            .collect()
    }

    /// Every REMOVE_ALL call of the run, in order.
    pub fn calls(&self) -> impl Iterator<Item = &log::Call> {
        self.resets.iter().flat_map(|r| &r.calls)
    }
}

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("cannot start {qemu}: {err}")]
    Start {
        /// The binary.
        qemu: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// A scratch directory or file could not be made.
    #[error("scratch files: {0}")]
    Scratch(std::io::Error),
    /// QMP failed; QEMU's stderr usually says why.
    #[error("{err} (QEMU {}); QEMU's stderr: {}", exit_text(.status), stderr_tail(.stderr))]
    Qmp {
        /// What failed.
        err: QmpError,
        /// How QEMU ended (`None`: still running at the time limit, then killed).
        status: Option<ExitStatus>,
        /// QEMU's standard error.
        stderr: String,
    },
    /// QEMU did not exit cleanly after `quit`.
    #[error("QEMU did not quit cleanly ({status:?}); its stderr: {}", stderr_tail(.stderr))]
    Exit {
        /// Its exit status (`None`: killed after the time limit).
        status: Option<ExitStatus>,
        /// QEMU's standard error.
        stderr: String,
    },
}

fn exit_text(status: &Option<ExitStatus>) -> String {
    status.map_or_else(|| "killed after the time limit".into(), |s| s.to_string())
}

fn stderr_tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

/// `kvm` when `/dev/kvm` can be opened, else `tcg`.
pub fn accel() -> &'static str {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm { "kvm" } else { "tcg" }
}

/// `qemu-system-x86_64` on `PATH`, if there is one.
pub fn qemu_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// How long `--version` may take, and how much it may print.
const VERSION_LIMITS: Limits = Limits {
    time: Duration::from_secs(10),
    bytes: 64 * 1024,
};

/// How much of QEMU's stderr a run keeps (the rest is read and dropped, so a chatty
/// QEMU never blocks on its pipe nor fills memory).
pub const STDERR_KEPT: usize = 1 << 20;

/// The first line of `qemu --version`, within 10 s and 64 KiB: a program that
/// hangs or prints without end is an error, not a wait.
pub fn version(qemu: &Path) -> Result<String, BoundedError> {
    let out = bounded::output(Command::new(qemu).arg("--version"), VERSION_LIMITS)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

/// Runs `qemu` with `shim` preloaded as `setup` says.
pub fn run(qemu: &Path, shim: &Path, setup: &Setup) -> Result<Run, RunError> {
    let dir = Scratch::new().map_err(RunError::Scratch)?;
    let log_path = dir.0.join("vepc.log");
    let qmp_path = dir.0.join("qmp.sock");
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-display", "none", "-S", "-m", "256M"])
        .args(["-accel", accel()]);
    let mut machine = String::from("q35");
    for (i, bytes) in setup.sections.iter().enumerate() {
        cmd.arg("-object").arg(format!(
            "memory-backend-epc,id=m{i},size={bytes},prealloc=on"
        ));
        machine.push_str(&format!(",sgx-epc.{i}.memdev=m{i},sgx-epc.{i}.node=0"));
    }
    let sizes: Vec<String> = setup.sections.iter().map(u64::to_string).collect();
    cmd.args(["-M", &machine])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .env("LD_PRELOAD", shim)
        .env("VEPC_LOG", &log_path)
        .env("VEPC_EPC", sizes.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // The caller's own shim settings would change the case under test.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VEPC_") && k != "VEPC_LOG" && k != "VEPC_EPC" {
            cmd.env_remove(k);
        }
    }
    if let Some(text) = &setup.script {
        let p = dir.0.join("guest.vsim");
        std::fs::write(&p, text).map_err(RunError::Scratch)?;
        cmd.env("VEPC_SCRIPT", p);
    }
    for (k, v) in &setup.env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|err| RunError::Start {
        qemu: qemu.to_owned(),
        err,
    })?;
    // Drain stderr as QEMU writes it, so a chatty QEMU never blocks on a full pipe.
    let stderr_reader = child.stderr.take().map(|e| {
        std::thread::spawn(move || {
            String::from_utf8_lossy(&bounded::read_keeping(e, STDERR_KEPT)).into_owned()
        })
    });
    let driven = drive(&mut child, &qmp_path, &log_path, setup.resets);
    // After a QMP failure QEMU has exited (its status says why) or hangs: a second
    // tells which, rather than the whole limit again.
    let limit = if driven.is_ok() {
        IO_LIMIT
    } else {
        Duration::from_secs(1)
    };
    let status = wait_for(&mut child, limit);
    let stderr = stderr_reader
        .and_then(|h| h.join().ok())
        .unwrap_or_default();
    let (resets, alive) = match driven {
        Ok(d) => d,
        Err(err) => {
            return Err(RunError::Qmp {
                err,
                status,
                stderr,
            });
        }
    };
    if !status.is_some_and(|s| s.success()) {
        return Err(RunError::Exit { status, stderr });
    }
    Ok(Run {
        resets,
        log: log::read(&log_path),
        stderr,
        alive,
    })
}

/// The QMP conversation. The shim appends to its log synchronously, so when the
/// greeting arrives the start-up reset's calls are in the log, and when a `RESET`
/// event arrives that reset's calls are: the log's length at each point cuts it.
fn drive(
    child: &mut Child,
    qmp_path: &Path,
    log_path: &Path,
    resets: u32,
) -> Result<(Vec<Reset>, bool), QmpError> {
    let mut qmp = Qmp::connect(qmp_path, child, START_LIMIT, IO_LIMIT)?;
    let mut seen = 0;
    let mut cut = |out: &mut Vec<Reset>| {
        let lines = log::read(log_path);
        out.push(Reset::from_lines(&lines[seen.min(lines.len())..]));
        seen = lines.len();
    };
    let mut out = Vec::new();
    cut(&mut out);
    for _ in 0..resets {
        qmp.system_reset()?;
        cut(&mut out);
    }
    let alive = qmp.execute("query-status").is_ok();
    qmp.quit()?;
    Ok((out, alive))
}

/// A scratch directory for one run, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vepc-qemu-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
