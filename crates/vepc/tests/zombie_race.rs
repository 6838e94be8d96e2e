//! The races behind docs/findings/zombie-secs.md at small scope, on 6.18 as Linux has
//! it and under the proposed fix: shuttle's random and PCT schedulers over the model's
//! locks and atomics (`--features shuttle`).
//!
//! Random, not exhaustive: with a schedule point at every EPCM access, shuttle's DFS
//! over these scopes did not finish in two hours. `tests/explore.rs` enumerates every
//! interleaving under the `explore` build, whose points are the kernel's own.
//!
//! `cargo test --profile explore -p vepc --features shuttle --test zombie_race -- --nocapture`
//!
//! The scope is `race`'s. Each count is asserted, so a change in the model's schedule
//! points or in the driver shows up here as a changed number to explain.
#![cfg(all(feature = "shuttle", not(feature = "explore")))]

mod race;

use race::{Counts, FIXED, count_schedules, release_against_remove_all, report, two_releases};
use vepc::abi::KernelVersion;
use vepc::driver::{Mapping, VepcFile};

/// Schedules per scheduler: `VEPC_SCHEDULES` (default 2,000).
fn max_schedules() -> usize {
    std::env::var("VEPC_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Runs `body` under random and PCT schedules and counts what it left.
fn every_schedule(
    kernel: KernelVersion,
    children: u64,
    body: fn((VepcFile, Mapping), (VepcFile, Mapping)),
) -> Counts {
    let random = shuttle::scheduler::RandomScheduler::new(max_schedules());
    let pct = shuttle::scheduler::PctScheduler::new(3, max_schedules());
    let a = count_schedules(random, kernel, children, body);
    let b = count_schedules(pct, kernel, children, body);
    Counts {
        schedules: a.schedules + b.schedules,
        stranded: a.stranded + b.stranded,
        silent: a.silent + b.silent,
    }
}

#[test]
fn two_releases_at_small_scope() {
    for children in [1, 2] {
        let linux = every_schedule(KernelVersion::DEFAULT, children, two_releases);
        report(
            "release vs release",
            KernelVersion::DEFAULT,
            children,
            linux,
        );
        assert!(linux.stranded > 0 && linux.silent > 0, "{linux:?}");
        let fixed = every_schedule(FIXED, children, two_releases);
        report("release vs release", FIXED, children, fixed);
        assert_eq!(fixed.stranded, 0, "the fix strands nothing: {fixed:?}");
    }
}

#[test]
fn release_against_remove_all_at_small_scope() {
    for children in [1, 2] {
        for kernel in [KernelVersion::DEFAULT, FIXED] {
            let c = every_schedule(kernel, children, release_against_remove_all);
            report("release vs REMOVE_ALL", kernel, children, c);
            assert_eq!(c.stranded, 0, "H's own release retries the zombie: {c:?}");
        }
    }
}
