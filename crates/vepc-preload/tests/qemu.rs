//! The real client: QEMU on the model through the shim, as Debian builds it (stock)
//! and with contrib/qemu's patch (patched), side by side.
//!
//! QEMU opens `/dev/sgx_vepc` once per `memory-backend-epc`, maps it `MAP_SHARED |
//! MAP_FIXED` over a range it reserved, touches every page (`prealloc=on`), and
//! registers `sgx_epc_reset` (hw/i386/sgx.c), which runs at the machine's first reset
//! during start-up and at every reset after. Each test starts QEMU stopped (`-S`),
//! sends `system_reset` over QMP, quits, and reads the shim's log, reset by reset
//! (`vepc_qemu::run`). Stock QEMU must keep showing each bug (so the tests would see
//! a Debian update that fixes one); patched QEMU must show each fixed.
//!
//! Stock is `qemu-system-x86_64` on `PATH`; patched is `$VEPC_QEMU_PATCHED` (the path
//! `contrib/qemu/build` prints). A missing one is a visible skip, unless
//! `VEPC_REQUIRE_QEMU=1` (set by `.ci/run` once it has installed and built both),
//! which makes it a failure.

mod common;

use std::io::Write;
use std::path::PathBuf;

use common::shim_path;
use std::os::unix::process::ExitStatusExt;
use vepc_qemu::check::{INSIDE, SECS_FIRST, SPLIT, TRANSIENT_EBUSY};
use vepc_qemu::disasm::{self, ThirdArg};

use vepc_qemu::run::{Run, RunError, Setup, qemu_on_path, run};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    /// Debian's `qemu-system-x86`, unmodified.
    Stock,
    /// The same source with contrib/qemu's patch.
    Patched,
}

/// The QEMUs there are, each with its build; a missing one is a visible skip.
fn qemus(test: &str) -> Vec<(Build, PathBuf)> {
    let required = std::env::var("VEPC_REQUIRE_QEMU").as_deref() == Ok("1");
    let patched = std::env::var_os("VEPC_QEMU_PATCHED")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let found = [(Build::Stock, qemu_on_path()), (Build::Patched, patched)];
    let mut out = Vec::new();
    for (build, path) in found {
        match path {
            Some(p) => out.push((build, p)),
            None => {
                let why = match build {
                    Build::Stock => {
                        "qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)"
                    }
                    Build::Patched => {
                        "VEPC_QEMU_PATCHED is not the path of a file (run contrib/qemu/build)"
                    }
                };
                assert!(!required, "VEPC_REQUIRE_QEMU=1 but {why}");
                // Straight to stderr, past the test harness's capture: a skip must show.
                let _ = writeln!(std::io::stderr(), "SKIPPED {test} on {build:?} QEMU: {why}");
            }
        }
    }
    out
}

/// Runs `setup` on every QEMU there is and hands each run to `check`.
fn on_each_qemu(test: &str, setup: Setup, check: impl Fn(Build, &Run)) {
    for (build, qemu) in qemus(test) {
        let r = run(&qemu, &shim_path(), &setup)
            .unwrap_or_else(|e| panic!("{build:?} QEMU ({}): {e}", qemu.display()));
        check(build, &r);
    }
}

/// prealloc=on touched every page of both sections (64 MiB and 32 MiB), and each
/// touch was a fault the model counted: every call saw them all present.
fn every_page_preallocated(build: Build, r: &Run) {
    for c in r.calls() {
        let want = if c.instance == "S0" { 16384 } else { 8192 };
        assert_eq!(c.present_pages, want, "{build:?}: {c}");
    }
}

/// The shim's `VEPC_INJECT` lines for the host at start, in order.
fn injected(r: &Run) -> Vec<&serde_json::Value> {
    r.log.iter().filter(|l| l["call"] == "inject").collect()
}

fn rounds(r: &Run, reset: usize) -> String {
    r.resets[reset].rounds_text()
}

fn valid(r: &Run, reset: usize) -> String {
    r.resets[reset].valid_text()
}

const RESET_ERROR: &str = "cannot reset vEPC section";

#[test]
fn qemu_resets_every_section_once_per_round() {
    on_each_qemu(
        "qemu_resets_every_section_once_per_round",
        Setup::default(),
        |build, r| {
            // QEMU probes the device once while registering its types (open, close),
            // then opens one instance per backend and maps it whole.
            let opens = r
                .log
                .iter()
                .filter(|l| {
                    l["call"].as_str().is_some_and(|c| c.contains("open"))
                        && l["path"] == "/dev/sgx_vepc"
                })
                .count();
            assert_eq!(opens, 3, "{build:?}: a probe and two backends");
            let mapped: Vec<(&str, u64)> = r
                .log
                .iter()
                .filter(|l| l["call"].as_str().is_some_and(|c| c.starts_with("mmap")))
                .filter(|l| l["result"].as_str().is_some_and(|v| v.starts_with("0x")))
                .map(|l| {
                    (
                        l["instance"].as_str().unwrap_or("?"),
                        l["len"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            assert_eq!(
                mapped,
                vec![("S0", 64 << 20), ("S1", 32 << 20)],
                "{build:?}"
            );
            // QEMU's prealloc probed MADV_POPULATE_WRITE and got EINVAL, as on an SGX
            // host (VM_PFNMAP), so it took its own path: threads touching every page,
            // catching SIGBUS.
            let probes = r.populate_probes();
            assert!(
                !probes.is_empty() && probes.iter().all(|p| p == "EINVAL"),
                "{build:?}: {probes:?}"
            );
            // prealloc=on touched every page, and each touch was a fault the model
            // counted; every call passed 0 as its argument.
            for c in r.calls() {
                let want = if c.instance == "S0" { 16384 } else { 8192 };
                assert_eq!(c.present_pages, want, "{build:?}: {c}");
                assert_eq!(c.arg, 0, "{build:?}: {c}");
            }
            // Two resets (start-up and system_reset), one round each.
            assert_eq!(r.resets.len(), 2);
            for n in 0..2 {
                assert_eq!(rounds(r, n), "[S0=0 S1=0]", "{build:?}");
                assert_eq!(valid(r, n), "valid pages after: S0=0 S1=0", "{build:?}");
            }
        },
    );
}

#[test]
fn qemu_goes_round_again_for_a_secs_whose_children_are_elsewhere() {
    on_each_qemu(
        "qemu_goes_round_again_for_a_secs_whose_children_are_elsewhere",
        Setup::default().script(SPLIT),
        |build, r| {
            // The script ran once, before the first REMOVE_ALL, and every step held.
            let script: Vec<_> = r.log.iter().filter(|l| l["call"] == "script").collect();
            assert_eq!(script.len(), 4, "{script:?}");
            assert!(script.iter().all(|l| l["result"] == "ok"), "{script:?}");
            // Round 1 keeps the SECS (S0 answers 1), round 2 removes it. Both builds.
            assert_eq!(rounds(r, 0), "[S0=1 S1=0] [S0=0 S1=0]", "{build:?}");
            assert_eq!(
                r.resets[0].calls[0].valid_pages, 1,
                "the SECS after round 1"
            );
            assert_eq!(valid(r, 0), "valid pages after: S0=0 S1=0", "{build:?}");
            assert_eq!(rounds(r, 1), "[S0=0 S1=0]", "{build:?}");
            assert!(r.stderr_lines(RESET_ERROR).is_empty(), "{}", r.stderr);
        },
    );
}

#[test]
fn a_transient_ebusy_leaves_a_secs_behind_stock_qemu() {
    on_each_qemu(
        "a_transient_ebusy_leaves_a_secs_behind_stock_qemu",
        Setup::default()
            .script(SPLIT)
            .env("VEPC_INJECT", TRANSIENT_EBUSY),
        |build, r| {
            assert!(r.resets[0].calls[0].injected);
            match build {
                // Stock tests only r > 0: S0's EBUSY counts as no failure, there is no
                // second round, and the SECS outlives the reset silently; only the
                // next reset removes it.
                Build::Stock => {
                    assert_eq!(rounds(r, 0), "[S0=EBUSY S1=0]");
                    assert_eq!(valid(r, 0), "valid pages after: S0=1 S1=0");
                    assert_eq!(rounds(r, 1), "[S0=0 S1=0]");
                }
                // Patched counts it: round 2 removes the SECS, whose children went in
                // round 1.
                Build::Patched => {
                    assert_eq!(rounds(r, 0), "[S0=EBUSY S1=0] [S0=0 S1=0]");
                    assert_eq!(valid(r, 0), "valid pages after: S0=0 S1=0");
                }
            }
            assert!(r.stderr_lines(RESET_ERROR).is_empty(), "{}", r.stderr);
        },
    );
}

/// Why the patch allows a third round: after a transient EBUSY, the section's second
/// round is its first complete pass, and a SECS below its own children answers
/// SGX_CHILD_PRESENT in it once more.
#[test]
fn a_transient_ebusy_before_a_secs_below_its_children_takes_three_rounds() {
    on_each_qemu(
        "a_transient_ebusy_before_a_secs_below_its_children_takes_three_rounds",
        Setup::default()
            .script(SECS_FIRST)
            .env("VEPC_INJECT", TRANSIENT_EBUSY),
        |build, r| {
            match build {
                Build::Stock => {
                    assert_eq!(rounds(r, 0), "[S0=EBUSY S1=0]");
                    assert_eq!(valid(r, 0), "valid pages after: S0=3 S1=0");
                }
                Build::Patched => {
                    // A two-round loop would stop after [S0=1 S1=0] and report S0.
                    assert_eq!(rounds(r, 0), "[S0=EBUSY S1=0] [S0=1 S1=0] [S0=0 S1=0]");
                    assert_eq!(valid(r, 0), "valid pages after: S0=0 S1=0");
                }
            }
            assert!(r.stderr_lines(RESET_ERROR).is_empty(), "{}", r.stderr);
        },
    );
}

#[test]
fn a_thread_left_inside_an_enclave_is_reported_by_patched_qemu_only() {
    on_each_qemu(
        "a_thread_left_inside_an_enclave_is_reported_by_patched_qemu_only",
        Setup::default().script(INSIDE),
        |build, r| {
            let reports = r.stderr_lines(RESET_ERROR);
            match build {
                // -1 with EBUSY is neither retried nor reported.
                Build::Stock => {
                    for n in 0..2 {
                        assert_eq!(rounds(r, n), "[S0=EBUSY S1=0]");
                    }
                    assert!(reports.is_empty(), "{}", r.stderr);
                }
                // Every round tries again; after the last, S0 is reported once per
                // reset with its errno, S1 (fine) never.
                Build::Patched => {
                    for n in 0..2 {
                        assert_eq!(
                            rounds(r, n),
                            "[S0=EBUSY S1=0] [S0=EBUSY S1=0] [S0=EBUSY S1=0]"
                        );
                    }
                    assert_eq!(
                        reports,
                        vec![
                            "qemu-system-x86_64: cannot reset vEPC section 0: Device or resource busy";
                            2
                        ]
                    );
                }
            }
            assert_eq!(valid(r, 1), "valid pages after: S0=2 S1=0", "{build:?}");
            assert!(r.alive, "{build:?} QEMU answers QMP after the resets");
        },
    );
}

#[test]
fn enotty_from_an_old_kernel_is_seen_by_patched_qemu_only() {
    on_each_qemu(
        "enotty_from_an_old_kernel_is_seen_by_patched_qemu_only",
        Setup::default()
            .script(SPLIT)
            .env("VEPC_KERNEL", "5.15")
            .resets(3),
        |build, r| {
            let warnings = r.stderr_lines("does not support SGX_IOC_VEPC_REMOVE_ALL");
            assert_eq!(r.resets.len(), 4);
            for n in 0..4 {
                match build {
                    // `r == -ENOTTY` never matches -1: no warning, and the loop goes
                    // on to the next section.
                    Build::Stock => {
                        assert_eq!(rounds(r, n), "[S0=ENOTTY S1=ENOTTY]");
                        assert!(warnings.is_empty(), "{}", r.stderr);
                    }
                    // errno is read: one call per reset, one warning per process.
                    Build::Patched => {
                        assert_eq!(rounds(r, n), "[S0=ENOTTY]");
                        assert_eq!(warnings.len(), 1, "{}", r.stderr);
                    }
                }
            }
            // No REMOVE_ALL, no fallback in QEMU: the guest's EPC stays as it was.
            assert_eq!(r.resets[3].calls[0].valid_pages, 1, "{build:?}");
        },
    );
}

#[test]
fn einval_is_reported_by_patched_qemu_only() {
    on_each_qemu(
        "einval_is_reported_by_patched_qemu_only",
        Setup::default()
            .script(SPLIT)
            .env("VEPC_INJECT", "remove-all=EINVAL"),
        |build, r| {
            let reports = r.stderr_lines(RESET_ERROR);
            match build {
                Build::Stock => {
                    assert_eq!(rounds(r, 0), "[S0=EINVAL S1=EINVAL]");
                    assert!(reports.is_empty(), "{}", r.stderr);
                }
                Build::Patched => {
                    assert_eq!(
                        rounds(r, 0),
                        "[S0=EINVAL S1=EINVAL] [S0=EINVAL S1=EINVAL] [S0=EINVAL S1=EINVAL]"
                    );
                    for s in 0..2 {
                        let line = format!(
                            "qemu-system-x86_64: cannot reset vEPC section {s}: Invalid argument"
                        );
                        assert_eq!(
                            reports.iter().filter(|l| **l == line).count(),
                            2,
                            "once per reset: {}",
                            r.stderr
                        );
                    }
                }
            }
        },
    );
}

/// The log shows 0 in every run; the machine code shows whether that is by chance.
/// Stock: `%rdx` is what `memory_region_get_fd()` left, and the return value is
/// compared with -ENOTTY (`cmp $0xffffffe7,%eax`). Patched: `xor %edx,%edx`.
#[test]
fn the_third_argument_is_zero_by_construction_in_patched_qemu_only() {
    for (build, qemu) in qemus("the_third_argument_is_zero_by_construction_in_patched_qemu_only") {
        let sites = match disasm::remove_all_calls(&qemu) {
            Ok(s) => s,
            Err(e) => panic!("{build:?}: {e}"),
        };
        assert_eq!(sites.len(), 1, "{build:?}: one call site: {sites:?}");
        let site = &sites[0];
        match build {
            Build::Stock => {
                assert!(
                    matches!(&site.third, ThirdArg::Leftover { from } if from.contains("memory_region_get_fd")),
                    "{site:?}"
                );
                assert_eq!(site.then, "cmp    $0xffffffe7,%eax", "r == -ENOTTY");
            }
            Build::Patched => {
                assert!(matches!(site.third, ThirdArg::Zeroed { .. }), "{site:?}");
            }
        }
    }
}

/// EPC with room to spare: 4 MiB more than QEMU's 64 MiB section.
const SPARE_EPC: &str = "68M,32M";

/// Runs `setup` on every QEMU there is, each run expected to fail, and hands each
/// failure to `check`.
fn on_each_qemu_failing(test: &str, setup: Setup, check: impl Fn(Build, &RunError)) {
    for (build, qemu) in qemus(test) {
        match run(&qemu, &shim_path(), &setup) {
            Ok(r) => panic!("{build:?} QEMU ran, and should not have: {}", r.stderr),
            Err(e) => check(build, &e),
        }
    }
}

/// How QEMU ended when it did not reach QMP, and its stderr.
fn ended(e: &RunError) -> (Option<i32>, Option<i32>, &str) {
    match e {
        RunError::Qmp {
            status: Some(s),
            stderr,
            ..
        } => (s.code(), s.signal(), stderr),
        other => panic!("expected QEMU to end before QMP: {other}"),
    }
}

/// docs/SEMANTICS.md §7.1 (arch/x86/kernel/cpu/sgx/main.c, `arch_memory_failure`,
/// Linux 5.17): a page poisoned while free moves to the poison list and is never
/// handed out. With a page to spare, QEMU's prealloc gets every page from elsewhere
/// and QEMU never knows.
#[test]
fn a_page_poisoned_while_free_never_reaches_qemu() {
    on_each_qemu(
        "a_page_poisoned_while_free_never_reaches_qemu",
        Setup::default()
            .env("VEPC_EPC", SPARE_EPC)
            .env("VEPC_INJECT", "poison=0"),
        |build, r| {
            let inject = injected(r);
            assert_eq!(inject.len(), 1, "{build:?}");
            assert_eq!(inject[0]["result"], "ok", "{build:?}: isolated");
            every_page_preallocated(build, r);
            assert_eq!(rounds(r, 0), "[S0=0 S1=0]", "{build:?}");
            assert!(r.alive, "{build:?}");
            assert!(r.stderr_lines(RESET_ERROR).is_empty(), "{}", r.stderr);
        },
    );
}

/// The same page with no EPC to spare: prealloc's last touch finds no free page
/// (`SIGBUS`), and QEMU, stock or patched, stops at start with its prealloc error.
#[test]
fn with_no_epc_to_spare_a_poisoned_page_stops_qemu_at_prealloc() {
    on_each_qemu_failing(
        "with_no_epc_to_spare_a_poisoned_page_stops_qemu_at_prealloc",
        Setup::default().env("VEPC_INJECT", "poison=0"),
        |build, e| {
            let (code, signal, stderr) = ended(e);
            assert_eq!((code, signal), (Some(1), None), "{build:?}: {stderr}");
            // Its own touch got SIGBUS at the missing page, and prealloc says so.
            assert!(
                stderr.contains("qemu_prealloc_mem: preallocating memory failed: Bad address"),
                "{build:?}: {stderr}"
            );
        },
    );
}

/// Before 5.17 `memory_failure` has no `struct page` for EPC (`-ENXIO`): the page
/// stays in service and prealloc gets it. QEMU 7.2's prealloc finds
/// `MADV_POPULATE_WRITE` refused (`EINVAL`, as on an SGX host) and writes each page
/// from its own threads; a VMM's access to EPC never reads it (abort-page semantics),
/// so nothing consumes the poison: QEMU starts, resets, and runs with a bad page in its guest's EPC. The
/// guest's first read of it would be the machine check (a `SIGBUS` that QEMU does not
/// forward to the guest, see docs/findings.md); these tests run no guest code.
#[test]
fn before_5_17_a_poisoned_page_reaches_qemu_and_prealloc_does_not_notice() {
    on_each_qemu(
        "before_5_17_a_poisoned_page_reaches_qemu_and_prealloc_does_not_notice",
        Setup::default()
            .env("VEPC_EPC", SPARE_EPC)
            .env("VEPC_KERNEL", "5.15")
            .env("VEPC_INJECT", "poison=0"),
        |build, r| {
            let inject = injected(r);
            assert_eq!(inject[0]["result"], "ENXIO", "{build:?}: not isolated");
            every_page_preallocated(build, r);
            assert!(r.alive, "{build:?}");
        },
    );
}

/// A page poisoned in use (found asynchronously, so nobody is signalled) stays with
/// its instance: QEMU reads no EPC page after prealloc, its resets' EREMOVEs succeed
/// on it as on any page (the model's choice, docs/findings.md), and it neither
/// notices nor reports anything. The page goes to the poison list only at release.
#[test]
fn a_page_poisoned_in_use_goes_unnoticed_by_qemu() {
    on_each_qemu(
        "a_page_poisoned_in_use_goes_unnoticed_by_qemu",
        Setup::default().script("poison S0 5\nexpect ok\nstats\n"),
        |build, r| {
            let script: Vec<_> = r.log.iter().filter(|l| l["call"] == "script").collect();
            assert_eq!(script[0]["result"], "ok", "{build:?}: {script:?}");
            // In use: on no list yet, so `stats` shows no poisoned page.
            assert_eq!(
                script[2]["result"], "free=0 used=24576 zombie=0",
                "{build:?}"
            );
            for n in 0..2 {
                assert_eq!(rounds(r, n), "[S0=0 S1=0]", "{build:?}");
                assert_eq!(valid(r, n), "valid pages after: S0=0 S1=0", "{build:?}");
            }
            assert!(r.alive, "{build:?}");
            assert!(r.stderr_lines(RESET_ERROR).is_empty(), "{}", r.stderr);
        },
    );
}

/// docs/SEMANTICS.md §7.2 (arch/x86/kernel/cpu/sgx/main.c, `sgx_alloc_epc_page`,
/// `ksgxd`): a host enclave holds 32 MiB of 112 MiB of EPC; prealloc's faults find
/// the free pages gone, ksgxd writes the host's pages back, and every vEPC page
/// arrives. The script's `reclaimer` says what it cost.
#[test]
fn prealloc_completes_beside_a_host_enclave_load() {
    on_each_qemu(
        "prealloc_completes_beside_a_host_enclave_load",
        Setup::default()
            .env("VEPC_EPC", "80M,32M")
            .env("VEPC_INJECT", "host-enclave=32M")
            .script("reclaimer\n"),
        |build, r| {
            let inject = injected(r);
            assert_eq!(inject[0]["result"], "ok", "{build:?}");
            every_page_preallocated(build, r);
            let reclaimer = r
                .log
                .iter()
                .find(|l| l["call"] == "script")
                .and_then(|l| l["result"].as_str())
                .unwrap_or_default();
            let written_back: u64 = reclaimer
                .strip_prefix("written-back=")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(written_back >= 4096, "{build:?}: {reclaimer}");
            assert!(r.alive, "{build:?}");
        },
    );
}

/// The exact device's windows (`vepc::device::emulated`) against one round trip per
/// first touch, on QEMU: under host enclave pressure, with a SECS split between the
/// sections, the log shows the same resets, the same pages, and the same ksgxd work
/// either way; and with too little EPC, prealloc stops QEMU the same way.
#[test]
fn windows_and_one_touch_at_a_time_agree_on_qemu() {
    let pressure = || {
        Setup::default()
            .env("VEPC_EPC", "72M,32M")
            .env("VEPC_INJECT", "host-enclave=24M")
            .script(&format!("{SPLIT}reclaimer\n"))
    };
    let summary = |r: &Run| {
        let reclaimer: Vec<String> = r
            .log
            .iter()
            .filter(|l| l["call"] == "script")
            .map(|l| l["result"].to_string())
            .collect();
        let resets: Vec<String> = (0..r.resets.len())
            .map(|n| format!("{} {}", rounds(r, n), valid(r, n)))
            .collect();
        let present: Vec<u64> = r.calls().map(|c| c.present_pages).collect();
        let released: Vec<String> = r
            .log
            .iter()
            .filter(|l| l["call"] == "release")
            .map(|l| l["stats"].to_string())
            .collect();
        (reclaimer, resets, present, released)
    };
    // The shim logs the count with each ioctl.
    let windows = |r: &Run| -> u64 {
        r.log
            .iter()
            .filter(|l| l["call"] == "ioctl")
            .filter_map(|l| l["windows"].as_u64())
            .max()
            .unwrap_or(0)
    };
    for (build, qemu) in qemus("windows_and_one_touch_at_a_time_agree_on_qemu") {
        let fast = run(&qemu, &shim_path(), &pressure().env("VEPC_FAULTS", "auto"))
            .unwrap_or_else(|e| panic!("{build:?}: {e}"));
        let one = run(
            &qemu,
            &shim_path(),
            &pressure().env("VEPC_FAULTS", "userfaultfd"),
        )
        .unwrap_or_else(|e| panic!("{build:?}: {e}"));
        every_page_preallocated(build, &fast);
        assert!(windows(&fast) > 0, "{build:?}: the fast path was not taken");
        assert_eq!(windows(&one), 0, "{build:?}");
        assert_eq!(summary(&fast), summary(&one), "{build:?}");
        // Too little EPC even after writing the host enclave back: the same stop.
        let short = || {
            Setup::default()
                .env("VEPC_EPC", "64M,24M")
                .env("VEPC_INJECT", "host-enclave=8M")
        };
        let a = run(&qemu, &shim_path(), &short().env("VEPC_FAULTS", "auto"));
        let b = run(
            &qemu,
            &shim_path(),
            &short().env("VEPC_FAULTS", "userfaultfd"),
        );
        match (a, b) {
            (Err(a), Err(b)) => assert_eq!(ended(&a), ended(&b), "{build:?}"),
            (a, b) => panic!("{build:?}: both must stop at prealloc: {a:?} / {b:?}"),
        }
    }
}
