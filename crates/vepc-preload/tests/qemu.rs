//! A real client: Debian's QEMU, unmodified, on the model through the shim.
//!
//! QEMU opens `/dev/sgx_vepc` once per `memory-backend-epc`, maps it `MAP_SHARED |
//! MAP_FIXED` over a range it reserved, touches every page (`prealloc=on`), and
//! registers `sgx_epc_reset` (hw/i386/sgx.c), which runs at the machine's first reset
//! during start-up and at every reset after. Each test starts QEMU stopped (`-S`),
//! sends `system_reset` over QMP, quits, and reads the shim's log.
//!
//! Without `qemu-system-x86_64` the tests say so on stderr and skip, unless
//! `VEPC_REQUIRE_QEMU=1` (set by `.ci/run` once it has installed QEMU), which makes a
//! missing QEMU a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Scratch, brief, read_log, remove_alls, shim_path};
use serde_json::Value;

const QEMU: &str = "qemu-system-x86_64";

fn qemu_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(QEMU))
        .find(|p| p.is_file())
}

/// QEMU, or a visible skip (a failure when CI has promised QEMU).
fn qemu_or_skip(test: &str) -> Option<PathBuf> {
    let found = qemu_binary();
    if found.is_none() {
        assert!(
            std::env::var("VEPC_REQUIRE_QEMU").as_deref() != Ok("1"),
            "VEPC_REQUIRE_QEMU=1 but {QEMU} is not on PATH"
        );
        // Straight to stderr, past the test harness's capture: a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {QEMU} is not installed (apt-get install qemu-system-x86)"
        );
    }
    found
}

fn accel() -> &'static str {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm { "kvm" } else { "tcg" }
}

/// What one QEMU run left.
struct Run {
    log: Vec<Value>,
    stderr: String,
}

/// Starts QEMU with the two sections (64M and 32M, both on node 0) and, if
/// given, `script` as `VEPC_SCRIPT`; sends `system_reset`, quits, and returns the log.
fn run_qemu(qemu: &Path, script: Option<&str>, env: &[(&str, &str)]) -> Run {
    let dir = Scratch::new("qemu");
    let log = dir.path.join("vepc.log");
    let qmp = dir.path.join("qmp.sock");
    let mut cmd = Command::new(qemu);
    cmd.args(["-nodefaults", "-display", "none", "-S", "-m", "256M"])
        .args(["-accel", accel()])
        .args(["-object", "memory-backend-epc,id=m0,size=64M,prealloc=on"])
        .args(["-object", "memory-backend-epc,id=m1,size=32M,prealloc=on"])
        .args([
            "-M",
            "q35,sgx-epc.0.memdev=m0,sgx-epc.0.node=0,sgx-epc.1.memdev=m1,sgx-epc.1.node=0",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .env("LD_PRELOAD", shim_path())
        .env("VEPC_LOG", &log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(text) = script {
        cmd.env("VEPC_SCRIPT", dir.file("guest.vsim", text));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start QEMU");
    let outcome = drive(&mut child, &qmp);
    let status = wait_for(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if let Err(e) = outcome {
        panic!("QMP: {e}\nQEMU stderr:\n{stderr}");
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "QEMU did not quit cleanly ({status:?}); stderr:\n{stderr}"
    );
    Run {
        log: read_log(&log),
        stderr,
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The QMP conversation: capabilities, `system_reset` (waiting for its `RESET`
/// event, which QEMU sends after the reset handlers ran), `quit`.
fn drive(child: &mut Child, qmp: &Path) -> Result<(), String> {
    let start = Instant::now();
    let stream = loop {
        if let Ok(s) = UnixStream::connect(qmp) {
            break s;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("QEMU exited before QMP was up: {status}"));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err("no QMP socket after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut next = || -> Result<Value, String> {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))
    };
    let greeting = next()?;
    if greeting.get("QMP").is_none() {
        return Err(format!("not a QMP greeting: {greeting}"));
    }
    let mut send = |cmd: &str| writer.write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes());
    send("qmp_capabilities").map_err(|e| e.to_string())?;
    while next()?.get("return").is_none() {}
    send("system_reset").map_err(|e| e.to_string())?;
    let (mut returned, mut reset) = (false, false);
    while !(returned && reset) {
        let msg = next()?;
        returned |= msg.get("return").is_some();
        reset |= msg["event"] == "RESET";
        if msg.get("error").is_some() {
            return Err(format!("system_reset: {msg}"));
        }
    }
    send("quit").map_err(|e| e.to_string())?;
    // Closing the socket before QEMU has read `quit` would lose it: wait for its
    // answer (or for QEMU to close the connection).
    loop {
        match next() {
            Ok(msg) if msg.get("return").is_some() => return Ok(()),
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
}

/// The REMOVE_ALL calls as QEMU's rounds (`S0=1` per call). Each round calls every
/// section once, in order, so the calls come in groups of `sections`: the start-up
/// reset's round(s), then the QMP reset's. The tests compare the whole sequence, so a
/// missing, extra or reordered call shows.
fn rounds(log: &[Value], sections: usize) -> Vec<Vec<String>> {
    remove_alls(log)
        .chunks(sections)
        .map(|c| c.iter().map(|l| brief(l)).collect())
        .collect()
}

fn instances_mapped(log: &[Value]) -> Vec<(String, u64)> {
    log.iter()
        .filter(|l| l["call"].as_str().is_some_and(|c| c.starts_with("mmap")))
        .filter(|l| l["result"].as_str().is_some_and(|r| r.starts_with("0x")))
        .map(|l| {
            (
                l["instance"].as_str().unwrap_or("?").to_owned(),
                l["len"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn last_valid_pages(log: &[Value], instance: &str) -> u64 {
    remove_alls(log)
        .iter()
        .rev()
        .find(|l| l["instance"] == instance)
        .and_then(|l| l["valid_pages"].as_u64())
        .unwrap_or(u64::MAX)
}

#[test]
fn qemu_resets_every_section_once_per_round() {
    let Some(qemu) = qemu_or_skip("qemu_resets_every_section_once_per_round") else {
        return;
    };
    let run = run_qemu(&qemu, None, &[("VEPC_EPC", "64M 32M")]);
    let log = &run.log;
    // QEMU probes the device once while registering its types (open, close), then
    // opens one instance per backend and maps it whole.
    let opens = log
        .iter()
        .filter(|l| {
            l["call"].as_str().is_some_and(|c| c.contains("open")) && l["path"] == "/dev/sgx_vepc"
        })
        .count();
    assert_eq!(opens, 3, "a probe and two backends");
    assert_eq!(
        instances_mapped(log),
        vec![("S0".to_owned(), 64 << 20), ("S1".to_owned(), 32 << 20)]
    );
    // prealloc=on touched every page, and each touch was a fault the model counted.
    let calls = remove_alls(log);
    assert!(!calls.is_empty());
    for l in &calls {
        let want = if l["instance"] == "S0" { 16384 } else { 8192 };
        assert_eq!(l["present_pages"], want, "{l}");
        // QEMU passes no third argument; what it leaves there reaches the kernel.
        assert_eq!(l["arg"], "0x0", "{l}");
    }
    // Two resets (start-up and system_reset), one round each: nothing to retry.
    assert_eq!(
        rounds(log, 2),
        vec![vec!["S0=0", "S1=0"], vec!["S0=0", "S1=0"]],
        "stderr: {}",
        run.stderr
    );
    assert_eq!(last_valid_pages(log, "S0"), 0);
    assert_eq!(last_valid_pages(log, "S1"), 0);
}

/// An enclave whose SECS is in S0 and whose children are in S1: S0's first
/// REMOVE_ALL must keep the SECS and answer 1, and QEMU must go round again.
const SPLIT: &str = "\
# SECS in the first section, its children in the second
ecreate S0 0 Split
eadd S1 0 Split tcs
eadd S1 1 Split reg
einit Split
";

#[test]
fn qemu_goes_round_again_for_a_secs_whose_children_are_elsewhere() {
    let Some(qemu) = qemu_or_skip("qemu_goes_round_again_for_a_secs_whose_children_are_elsewhere")
    else {
        return;
    };
    let run = run_qemu(&qemu, Some(SPLIT), &[]);
    let log = &run.log;
    // The script ran once, before the first REMOVE_ALL, and every step succeeded.
    let script_lines: Vec<&Value> = log.iter().filter(|l| l["call"] == "script").collect();
    assert_eq!(script_lines.len(), 4, "{script_lines:?}");
    assert!(
        script_lines.iter().all(|l| l["result"] == "ok"),
        "{script_lines:?}"
    );
    // Start-up reset: round 1 leaves the SECS (1), round 2 removes it; then the
    // QMP reset finds nothing.
    assert_eq!(
        rounds(log, 2),
        vec![
            vec!["S0=1", "S1=0"],
            vec!["S0=0", "S1=0"],
            vec!["S0=0", "S1=0"],
        ]
    );
    let first = remove_alls(log)[0];
    assert_eq!(first["valid_pages"], 1, "the SECS stays after round 1");
    assert_eq!(last_valid_pages(log, "S0"), 0);
    assert_eq!(last_valid_pages(log, "S1"), 0);
    assert!(!run.stderr.contains("cannot reset vEPC"), "{}", run.stderr);
}

/// A vCPU inside an enclave: EREMOVE answers SGX_ENCLAVE_ACT, the kernel EBUSY.
const INSIDE: &str = "\
ecreate S0 0 Busy
eadd S0 1 Busy tcs
einit Busy
eenter Busy S0 1
";

#[test]
fn qemu_ignores_ebusy() {
    let Some(qemu) = qemu_or_skip("qemu_ignores_ebusy") else {
        return;
    };
    let run = run_qemu(&qemu, Some(INSIDE), &[]);
    // QEMU tests only `r > 0`: -1 with EBUSY is neither retried nor reported, and
    // the enclave's pages stay valid through both resets.
    assert_eq!(
        rounds(&run.log, 2),
        vec![vec!["S0=EBUSY", "S1=0"], vec!["S0=EBUSY", "S1=0"]]
    );
    assert_eq!(last_valid_pages(&run.log, "S0"), 2);
    assert!(
        !run.stderr.contains("vEPC"),
        "QEMU said nothing: {}",
        run.stderr
    );
}

#[test]
fn qemu_ignores_a_transient_ebusy_and_leaves_a_secs_behind() {
    let Some(qemu) = qemu_or_skip("qemu_ignores_a_transient_ebusy_and_leaves_a_secs_behind") else {
        return;
    };
    let run = run_qemu(
        &qemu,
        Some(SPLIT),
        &[("VEPC_INJECT", "S0:remove-all=EBUSY@1")],
    );
    let log = &run.log;
    // S0's first call fails before any EREMOVE; S1's children go; QEMU counts no
    // failure (it looks for r > 0 only), so there is no second round and the SECS
    // outlives the reset. The next reset removes it.
    assert_eq!(
        rounds(log, 2),
        vec![vec!["S0=EBUSY", "S1=0"], vec!["S0=0", "S1=0"]]
    );
    let calls = remove_alls(log);
    assert_eq!(calls[0]["injected"], true);
    assert_eq!(calls[1]["valid_pages"], 0);
    assert_eq!(
        calls[0]["valid_pages"], 1,
        "the SECS survived the first reset"
    );
    assert_eq!(last_valid_pages(log, "S0"), 0);
    assert!(!run.stderr.contains("vEPC"), "{}", run.stderr);
}

#[test]
fn qemu_never_sees_enotty_from_an_old_kernel() {
    let Some(qemu) = qemu_or_skip("qemu_never_sees_enotty_from_an_old_kernel") else {
        return;
    };
    let run = run_qemu(&qemu, Some(SPLIT), &[("VEPC_KERNEL", "5.15")]);
    // QEMU compares the return value with -ENOTTY, but ioctl() returns -1 and sets
    // errno: the warning never prints, the loop never breaks, and the guest's EPC
    // is left as it was.
    assert_eq!(
        rounds(&run.log, 2),
        vec![
            vec!["S0=ENOTTY", "S1=ENOTTY"],
            vec!["S0=ENOTTY", "S1=ENOTTY"]
        ]
    );
    assert_eq!(last_valid_pages(&run.log, "S0"), 1);
    assert_eq!(last_valid_pages(&run.log, "S1"), 2);
    assert!(
        !run.stderr
            .contains("does not support SGX_IOC_VEPC_REMOVE_ALL"),
        "QEMU's warning printed after all: {}",
        run.stderr
    );
}
