//! A thousand VM lifecycles on the emulated device, in every fault mode and through
//! the reset's ENOTTY fallback, leave the process as they found it: descriptors,
//! threads, mappings and resident memory flat (issue 23: the fallback used to leak
//! the whole device at every reset). One test in its own binary, so that no other
//! test's descriptors or threads come and go meanwhile.

use std::time::{Duration, Instant};

use vepc::abi::{KernelVersion, PAGE_SIZE};
use vepc::device::{Emulated, FaultMode, MapOptions, VepcDevice, VepcSection};
use vepc::driver::Device;
use vepc::model::Epc;
use vepc::reset::{ResetOptions, reset};

const PAGE: usize = PAGE_SIZE as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    threads: usize,
    mappings: usize,
    rss_kib: u64,
}

fn footprint() -> Footprint {
    let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Footprint {
        fds: count("/proc/self/fd"),
        threads: count("/proc/self/task"),
        mappings: std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count()),
        rss_kib,
    }
}

/// One VM: a device, two sections, every page touched, a reset, the end.
fn lifecycle(mode: FaultMode, kernel: KernelVersion) {
    let model = Device::new(Epc::new(&[64 * PAGE_SIZE]).expect("EPC"), kernel);
    let dev = Emulated::new(model, mode).expect("device");
    let d = VepcDevice::emulated_on(&dev);
    let mut guest: Vec<VepcSection> = (0..2)
        .map(|_| VepcSection::open(&d, 8 * PAGE, MapOptions::default()).expect("section"))
        .collect();
    for s in &guest {
        for p in 0..8 {
            dev.touch(s.region().addr() + p * PAGE).expect("touch");
        }
    }
    let report = reset(&mut guest, &ResetOptions::default(), None).expect("reset");
    assert_eq!(report.recreated.is_some(), !kernel.has_remove_all());
}

/// Waits a moment for the fault threads of dropped devices to end (each notices
/// within a second) and for their descriptors to close: until no more threads live
/// than `base` had and two readings 50 ms apart agree.
fn settled(base: Footprint) -> Footprint {
    let start = Instant::now();
    let mut last = footprint();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = footprint();
        let quiet =
            now.threads <= base.threads && (now.fds, now.threads) == (last.fds, last.threads);
        if quiet || start.elapsed() > Duration::from_secs(5) {
            return now;
        }
        last = now;
    }
}

#[test]
fn a_thousand_lifecycles_leak_nothing_in_any_mode() {
    let old = KernelVersion::new(5, 15);
    // The harness's own threads; both snapshots below wait for this count, so that a
    // fault thread still ending from the last lifecycle is not taken for a leak.
    let base = footprint();
    for (mode, kernel) in [
        (FaultMode::Auto, KernelVersion::DEFAULT),
        (FaultMode::Userfaultfd, KernelVersion::DEFAULT),
        (FaultMode::Eager, KernelVersion::DEFAULT),
        (FaultMode::Auto, old),
        (FaultMode::Userfaultfd, old),
        (FaultMode::Eager, old),
    ] {
        // Warm up: the first lifecycles make what lives for the process (the shared
        // SIGBUS memfd, allocator arenas, glibc's cache of ended threads' stacks).
        for _ in 0..200 {
            lifecycle(mode, kernel);
        }
        let before = settled(base);
        for _ in 0..1000 {
            lifecycle(mode, kernel);
        }
        let after = settled(base);
        let what = format!("{mode:?} on {kernel}: {before:?} -> {after:?}");
        // A leak adds descriptors; a late close in the first snapshot is not one.
        assert!(after.fds <= before.fds, "{what}");
        assert!(after.threads <= before.threads, "{what}");
        // glibc keeps the stacks of ended threads for reuse (two mappings each, a
        // stack and its guard), and how many it keeps depends on how many fault
        // threads overlapped; a leak would be a thousand lifecycles' worth.
        assert!(after.mappings <= before.mappings + 8, "{what}");
        assert!(after.rss_kib < before.rss_kib + 16 * 1024, "{what}");
    }
}
