//! `vepc preload`: runs an unmodified program with the model as its `/dev/sgx_vepc`,
//! through the `LD_PRELOAD` shim (`crates/vepc-preload`).
//!
//! It checks what it can before the program starts (sizes, version, the script), sets
//! the shim's variables, and replaces itself with the program, so the program's exit
//! status is the command's.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use vepc::abi::KernelVersion;
use vepc::script;

/// The shim's file name, as `cargo build --release` leaves it.
const SHIM: &str = "libvepc_preload.so";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// EPC section sizes (VEPC_EPC), e.g. `64M,32M`. Default: the script's `epc` line, else 128M.
    #[arg(long)]
    epc: Option<String>,
    /// The kernel the device behaves like (VEPC_KERNEL), e.g. `5.15`.
    #[arg(long)]
    kernel: Option<String>,
    /// Guest actions to run once before the program's first REMOVE_ALL (VEPC_SCRIPT);
    /// the program's instances are S0, S1, … in the order it maps them.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Injected faults (VEPC_INJECT): REMOVE_ALL answers to force, e.g.
    /// `S0:remove-all=EBUSY@1`, and the host at start: `poison=N[-M]`,
    /// `host-enclave=SIZE`.
    #[arg(long)]
    inject: Option<String>,
    /// Append one JSON object per intercepted call to this file (VEPC_LOG).
    #[arg(long)]
    log: Option<PathBuf>,
    /// How first touches reach the model (VEPC_FAULTS): auto, userfaultfd or eager.
    #[arg(long)]
    faults: Option<String>,
    /// The shim to load. Default: $VEPC_PRELOAD_SO, else libvepc_preload.so beside
    /// this binary.
    #[arg(long)]
    shim: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<OsString>,
}

/// Exit status when the program cannot be started, as env(1) and shells use.
const CANNOT_RUN: u8 = 127;

pub fn main(args: &Args) -> ExitCode {
    let (code, msg) = match prepare(args) {
        Ok(mut cmd) => {
            let err = cmd.exec();
            let program = args.command[0].to_string_lossy();
            (CANNOT_RUN, format!("cannot run {program}: {err}"))
        }
        Err(msg) => (2, msg),
    };
    eprintln!("vepc preload: {msg}");
    ExitCode::from(code)
}

/// The program's command with the shim's environment, or why not.
fn prepare(args: &Args) -> Result<Command, String> {
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some(epc) = &args.epc {
        vepc::model::Epc::parse_sizes(epc).map_err(|e| format!("--epc {epc}: {e}"))?;
        cmd.env("VEPC_EPC", epc);
    }
    if let Some(k) = &args.kernel {
        KernelVersion::parse_with_fixes(k).map_err(|why| format!("--kernel {k}: {why}"))?;
        cmd.env("VEPC_KERNEL", k);
    }
    if let Some(path) = &args.script {
        let text = script::read_file(path).map_err(|e| {
            format!(
                "--script {}: {e}",
                script::escape(&path.display().to_string())
            )
        })?;
        let names: Vec<String> = (0..64).map(|n| format!("S{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        script::parse_attached(&text, &names)
            .map_err(|e| format!("{}:{}:{}: {}", path.display(), e.line, e.col, e.msg))?;
        cmd.env("VEPC_SCRIPT", absolute(path));
    }
    if let Some(rules) = &args.inject {
        cmd.env("VEPC_INJECT", rules);
    }
    if let Some(log) = &args.log {
        cmd.env("VEPC_LOG", absolute(log));
    }
    if let Some(f) = &args.faults {
        if !matches!(f.as_str(), "auto" | "userfaultfd" | "eager") {
            return Err(format!("--faults {f}: expected auto, userfaultfd or eager"));
        }
        cmd.env("VEPC_FAULTS", f);
    }
    // Keep whatever the caller preloads already, after the shim.
    let mut preload = find_shim(args.shim.as_deref())?.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(":");
        preload.push(old);
    }
    cmd.env("LD_PRELOAD", preload);
    Ok(cmd)
}

pub(crate) fn find_shim(given: Option<&Path>) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_owned()],
        None => std::env::var_os("VEPC_PRELOAD_SO")
            .map(PathBuf::from)
            .into_iter()
            .chain(
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(|d| d.join(SHIM))),
            )
            .collect(),
    };
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| absolute(p))
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "no {SHIM} (looked at {}): build it with `cargo build --release`, or pass --shim",
                looked.join(", ")
            )
        })
}

/// The program may change directory before it opens anything: give it absolute paths.
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}
