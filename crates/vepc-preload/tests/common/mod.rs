//! What the shim's tests share: where the built shim is, and reading its log.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// `libvepc_preload.so` of this build, built first. `cargo test` compiles a
/// `cdylib`-only package's library for nothing (its tests cannot link it), so the tests
/// ask cargo for it themselves, once per test binary, with the profile and target
/// directory they were built with: a no-op when it is fresh, never a stale shim.
pub fn shim_path() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_shim)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn build_shim() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the test binary is not in target/<profile>/deps")?;
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "vepc-preload", "--lib"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => return Err("no profile directory".into()),
    }
    let status = cmd.status().map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p vepc-preload failed: {status}"));
    }
    let so = profile_dir.join("libvepc_preload.so");
    if so.exists() {
        Ok(so)
    } else {
        Err(format!("{} was not built", so.display()))
    }
}

/// A scratch directory, removed when dropped.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vepc-preload-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a scratch dir");
        Self { path }
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).expect("write a scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Every line of a `VEPC_LOG` file.
pub use vepc_qemu::log::read as read_log;

/// The REMOVE_ALL calls in a log, in order.
pub fn remove_alls(log: &[Value]) -> Vec<&Value> {
    log.iter()
        .filter(|l| l["call"] == "ioctl" && l["request"] == "0xa404")
        .collect()
}
