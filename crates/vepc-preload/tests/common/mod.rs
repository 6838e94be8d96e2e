//! What the shim's tests share: where the built shim is, and reading its log.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

/// `libvepc_preload.so` of this build (cargo builds the package's library before its
/// integration tests; the test binary lives in `target/<profile>/deps/`).
pub fn shim_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let so = profile_dir.join("libvepc_preload.so");
    assert!(so.exists(), "{} was not built", so.display());
    so
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
pub fn read_log(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
        .collect()
}

/// The REMOVE_ALL calls in a log, in order.
pub fn remove_alls(log: &[Value]) -> Vec<&Value> {
    log.iter()
        .filter(|l| l["call"] == "ioctl" && l["request"] == "0xa404")
        .collect()
}

/// A REMOVE_ALL line as `S0=1`: instance and result.
pub fn brief(l: &Value) -> String {
    let r = &l["result"];
    let r = r.as_str().map_or_else(|| r.to_string(), str::to_owned);
    format!("{}={r}", l["instance"].as_str().unwrap_or("?"))
}
