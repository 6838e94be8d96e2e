//! The `vepc` command and the shim as a hostile user meets them (issue 22): endless
//! and garbage input, values past every bound, environment values the shim cannot
//! use, programs that hang or print without end. Each must end with one line and
//! exit status 2, within seconds and a few hundred MB, never a hang, a panic or the
//! OOM killer.

#![allow(unsafe_code)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::shim_beside_vepc;

/// How it ended, what it said, how long it took, and its peak memory.
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    peak_mib: u64,
}

/// Runs `vepc args` with `env`, stdin from `stdin` (a path) or nothing, measuring its
/// peak resident memory (`wait4`'s `ru_maxrss`). A watchdog kills it after 60 s.
fn vepc(args: &[&str], env: &[(&str, &std::ffi::OsStr)], stdin: Option<&str>) -> Ended {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vepc"));
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(match stdin {
            Some(p) => Stdio::from(std::fs::File::open(p).expect("stdin file")),
            None => Stdio::null(),
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    // Reaped by wait4 below, which also gives its own peak memory.
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("vepc runs");
    let pid = child.id() as libc::pid_t;
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(child.stdout.take().map(|o| Box::new(o) as _));
    let err = read(child.stderr.take().map(|e| Box::new(e) as _));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = std::sync::Arc::clone(&done);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        if !d.load(std::sync::atomic::Ordering::Acquire) {
            // SAFETY: a signal to our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    // SAFETY: waits for our own child, with its own resource usage.
    let (status, peak_kib) = unsafe {
        let mut status = 0;
        let mut u: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut u);
        (status, u.ru_maxrss as u64)
    };
    done.store(true, std::sync::atomic::Ordering::Release);
    let took = start.elapsed();
    Ended {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took,
        peak_mib: peak_kib / 1024,
    }
}

/// One line on stderr, starting with `prefix` and saying `says`, exit 2, quickly, in
/// little memory.
fn refused(e: &Ended, prefix: &str, says: &str, what: &str) {
    assert_eq!(e.code, Some(2), "{what}: {}", e.stderr);
    assert!(
        e.stderr.starts_with(prefix) && e.stderr.contains(says),
        "{what}: {}",
        e.stderr
    );
    assert_eq!(
        e.stderr.lines().count(),
        1,
        "{what}: one line: {}",
        e.stderr
    );
    assert!(e.took < Duration::from_secs(3), "{what}: took {:?}", e.took);
    assert!(e.peak_mib < 300, "{what}: {} MiB", e.peak_mib);
}

fn scratch(name: &str, text: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("vepc-adv-{}-{name}", std::process::id()));
    std::fs::write(&p, text).expect("scratch file");
    p
}

#[test]
fn endless_and_garbage_scripts_are_refused_at_once() {
    let none: &[(&str, &std::ffi::OsStr)] = &[];
    for source in ["/dev/zero", "/dev/urandom"] {
        let e = vepc(&["sim", source], none, None);
        refused(&e, "vepc sim: cannot read", "1 MiB", source);
        let e = vepc(&["sim", "-"], none, Some(source));
        refused(&e, "vepc sim: cannot read", "1 MiB", source);
    }
    let long = scratch("long", format!("open {}\n", "A".repeat(5000)).as_bytes());
    let e = vepc(&["sim", &long.to_string_lossy()], none, None);
    refused(&e, &long.to_string_lossy(), "at most 4096", "a long line");
    let name = scratch("name", format!("open A{}\n", "b".repeat(100)).as_bytes());
    let e = vepc(&["sim", &name.to_string_lossy()], none, None);
    refused(
        &e,
        &name.to_string_lossy(),
        "at most 64 characters",
        "a long name",
    );
    let binary = scratch("binary", b"open A\n\xff\xfe\n");
    let e = vepc(&["sim", &binary.to_string_lossy()], none, None);
    refused(&e, "vepc sim: cannot read", "not UTF-8", "binary");
    for p in [long, name, binary] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_scripts_control_characters_never_reach_the_terminal() {
    let none: &[(&str, &std::ffi::OsStr)] = &[];
    let evil = scratch(
        "evil",
        "open A\x1b[2J\nexpect \x1b]0;owned\x07\n".as_bytes(),
    );
    let e = vepc(&["sim", &evil.to_string_lossy()], none, None);
    let _ = std::fs::remove_file(&evil);
    assert_eq!(e.code, Some(2));
    assert!(!e.stderr.contains('\x1b'), "{:?}", e.stderr);
    assert!(e.stderr.contains("\\x1b"), "{:?}", e.stderr);
    // A valid script's expect text is shown escaped too.
    let ok = scratch("ok", "stats\nexpect \x1b[31mred\n".as_bytes());
    let e = vepc(&["sim", &ok.to_string_lossy()], none, None);
    let _ = std::fs::remove_file(&ok);
    assert_eq!(e.code, Some(1));
    assert!(!e.stdout.contains('\x1b'), "{:?}", e.stdout);
}

#[test]
fn values_past_their_bounds_are_script_errors() {
    let none: &[(&str, &std::ffi::OsStr)] = &[];
    for (line, says) in [
        ("microcode 4294967296", "from 0 to 4294967295"),
        ("no-entropy 18446744073709551615", "from 0 to 4294967295"),
        ("host-enclave H 1T", "at most 64G"),
    ] {
        let p = scratch("bound", format!("{line}\n").as_bytes());
        let e = vepc(&["sim", &p.to_string_lossy()], none, None);
        let _ = std::fs::remove_file(&p);
        refused(&e, &p.to_string_lossy(), says, line);
    }
    let e = vepc(
        &["bench", "--sections", "1G", "--host-enclave", "1T"],
        none,
        None,
    );
    refused(&e, "vepc bench: ", "at most 64G", "bench --host-enclave 1T");
}

/// The shim, under a program that uses the device (a shell redirecting from it),
/// with each kind of value it cannot use: one line naming the variable, exit 2.
#[test]
fn the_shim_refuses_values_it_cannot_use() {
    use std::os::unix::ffi::OsStrExt;
    let shim = shim_beside_vepc();
    let dir = std::env::temp_dir();
    let bad_utf8 = std::ffi::OsStr::from_bytes(b"64\xffM");
    let cases: &[(&str, &std::ffi::OsStr, &str)] = &[
        ("VEPC_SCRIPT", "/dev/zero".as_ref(), "larger than"),
        (
            "VEPC_INJECT",
            "poison=0-18446744073709551615".as_ref(),
            "the EPC has",
        ),
        (
            "VEPC_INJECT",
            "poison=0-100000".as_ref(),
            "the EPC has 32768 pages",
        ),
        ("VEPC_INJECT", "host-enclave=1T".as_ref(), "at most 64G"),
        ("VEPC_EPC", bad_utf8, "not UTF-8"),
        ("VEPC_LOG", dir.as_os_str(), "VEPC_LOG="),
        ("VEPC_LOG", "/nonexistent/dir/log".as_ref(), "VEPC_LOG="),
        ("VEPC_LOG", "/dev/full".as_ref(), "VEPC_LOG=/dev/full"),
    ];
    for (var, value, says) in cases {
        let shim_os = shim.as_os_str();
        let env: &[(&str, &std::ffi::OsStr)] = &[(var, value), ("VEPC_PRELOAD_SO", shim_os)];
        let e = vepc(
            &["preload", "--", "sh", "-c", "exec 3</dev/sgx_vepc"],
            env,
            None,
        );
        refused(
            &e,
            &format!("vepc-preload: {var}="),
            says,
            &format!("{var}={value:?}"),
        );
    }
}

#[test]
fn qemu_check_bounds_the_qemu_it_runs() {
    // qemu-check looks for the shim before it runs QEMU.
    shim_beside_vepc();
    let none: &[(&str, &std::ffi::OsStr)] = &[];
    let talker = scratch("yes", b"#!/bin/sh\nexec yes\n");
    let sleeper = scratch("sleep", b"#!/bin/sh\nexec sleep 1000\n");
    for p in [&talker, &sleeper] {
        Command::new("chmod")
            .arg("+x")
            .arg(p)
            .status()
            .expect("chmod");
    }
    let e = vepc(
        &["qemu-check", "--qemu", &talker.to_string_lossy()],
        none,
        None,
    );
    refused(
        &e,
        "vepc qemu-check: cannot run",
        "printed more than",
        "yes",
    );
    let e = vepc(
        &["qemu-check", "--qemu", &sleeper.to_string_lossy()],
        none,
        None,
    );
    assert_eq!(e.code, Some(2), "{}", e.stderr);
    assert!(e.stderr.contains("longer than 10s"), "{}", e.stderr);
    assert!(e.took < Duration::from_secs(15), "{:?}", e.took);
    for p in [talker, sleeper] {
        let _ = std::fs::remove_file(p);
    }
}
