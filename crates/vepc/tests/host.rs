//! The real-device binding, on what this machine has: no `/dev/sgx_vepc`, so files
//! that are not vEPC, and strace to see the exact system calls.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use vepc::abi::Errno;
use vepc::device::{MapOptions, VepcError, VepcFd};

fn dev_null() -> VepcFd {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    VepcFd::from(OwnedFd::from(f))
}

#[test]
fn a_missing_device_says_what_is_missing() {
    let e = VepcFd::open_path("/nonexistent/sgx_vepc").expect_err("no such device");
    assert!(matches!(e, VepcError::NoDevice { .. }), "{e:?}");
    assert_eq!(e.errno(), Errno::ENOENT);
    let msg = e.to_string();
    assert!(
        msg.contains("no SGX") && msg.contains("CONFIG_X86_SGX_KVM"),
        "{msg}"
    );
}

#[test]
fn remove_all_on_a_file_that_is_not_vepc_is_enotty_with_advice() {
    let e = dev_null()
        .remove_all()
        .expect_err("/dev/null has no such ioctl");
    assert!(matches!(e, VepcError::NoRemoveAll), "{e:?}");
    assert_eq!(e.errno(), Errno::ENOTTY);
    assert!(e.to_string().contains("older than 5.16"));
}

#[test]
fn mapping_is_shared_read_write_and_unmapped_on_drop() {
    let dir = std::env::temp_dir().join(format!("vepc-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("fake-epc");
    std::fs::write(&path, vec![0u8; 2 * 4096]).expect("file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let fd = VepcFd::from(OwnedFd::from(file));
    let region = fd
        .map(
            2 * 4096,
            MapOptions {
                noreserve: true,
                populate: true,
            },
        )
        .expect("map");
    assert_eq!(region.len(), 8192);
    let line = |addr: usize| {
        std::fs::read_to_string("/proc/self/maps")
            .expect("maps")
            .lines()
            .find(|l| l.starts_with(&format!("{addr:x}-")))
            .map(str::to_owned)
    };
    let mapped = line(region.addr()).expect("mapping present");
    assert!(mapped.contains("rw-s"), "shared and read-write: {mapped}");
    assert!(
        mapped.contains("fake-epc"),
        "a mapping of the file: {mapped}"
    );
    let addr = region.addr();
    drop(region);
    // Another test's thread may map something new at the freed address at once: what
    // must be gone is the mapping of the file.
    let after = line(addr);
    assert!(
        after.as_deref().is_none_or(|l| !l.contains("fake-epc")),
        "unmapped on drop: {after:?}"
    );

    // /dev/null cannot be mapped at all: the error carries mmap's errno.
    let e = dev_null()
        .map(4096, MapOptions::default())
        .expect_err("not mappable");
    assert_eq!(e.errno(), Errno::ENODEV);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs only as the child of `strace_sees_an_explicit_zero_argument`.
#[test]
fn strace_child_remove_all_on_dev_null() {
    if std::env::var_os("VEPC_STRACE_CHILD").is_none() {
        return;
    }
    let fd = dev_null();
    eprintln!("fd {}", fd.as_raw_fd());
    assert_eq!(fd.remove_all().map_err(|e| e.errno()), Err(Errno::ENOTTY));
}

/// docs/SEMANTICS.md §4.4: the third argument must be an explicit 0. strace shows what the
/// kernel received. strace 6.1 names the request; older ones print it as
/// `_IOC(_IOC_NONE, 0xa4, 0x4, 0)`.
#[test]
fn strace_sees_an_explicit_zero_argument() {
    let Ok(out) = Command::new("strace").arg("-V").output() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: strace is not installed; `apt-get install strace` to run this test");
        return;
    };
    assert!(out.status.success());
    let log = std::env::temp_dir().join(format!("vepc-strace-{}.log", std::process::id()));
    let status = Command::new("strace")
        .args(["-f", "-qq", "-X", "verbose", "-e", "trace=ioctl", "-o"])
        .arg(&log)
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "strace_child_remove_all_on_dev_null",
            "--exact",
            "--test-threads=1",
        ])
        .env("VEPC_STRACE_CHILD", "1")
        .status()
        .expect("strace runs");
    assert!(status.success(), "the child test failed under strace");
    let text = std::fs::read_to_string(&log).expect("strace log");
    let _ = std::fs::remove_file(&log);
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("0xa404") || l.contains("_IOC(_IOC_NONE, 0xa4, 0x4, 0)"))
        .collect();
    assert_eq!(calls.len(), 1, "exactly one REMOVE_ALL:\n{text}");
    let call = calls[0];
    assert!(
        call.contains("ioctl(")
            && (call.contains("0xa404 /* SGX_IOC_VEPC_REMOVE_ALL */, 0)")
                || call.contains("_IOC(_IOC_NONE, 0xa4, 0x4, 0), 0)")),
        "the third argument must be exactly 0: {call}"
    );
    assert!(call.contains("ENOTTY"), "{call}");
}
