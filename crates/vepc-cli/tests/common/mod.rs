//! Helpers shared by the CLI's test binaries.

use std::path::PathBuf;
use std::process::Command;

/// The shim beside the `vepc` binary, where `vepc preload` and `vepc qemu-check` look
/// first. `cargo test` does not build a `cdylib`, so this asks cargo for it (a no-op
/// when it is fresh). Every test that runs either command calls it first: tests run
/// in any order.
pub fn shim_beside_vepc() -> PathBuf {
    let vepc = std::path::Path::new(env!("CARGO_BIN_EXE_vepc"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "vepc-preload", "--lib"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build -p vepc-preload: {status}");
    let so = vepc.with_file_name("libvepc_preload.so");
    assert!(so.is_file(), "{} was not built", so.display());
    so
}
