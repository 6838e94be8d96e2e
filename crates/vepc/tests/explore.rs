//! Every interleaving of the races behind docs/findings/zombie-secs.md at small scope,
//! on 6.18 as Linux has it and under the proposed fix: shuttle's DFS scheduler over
//! the `explore` build, whose schedule points are the kernel's own (`vepc::sync`): a
//! point before each EREMOVE, one while it holds its EPCM lock, and the mutexes held
//! across one. The DFS ends when no schedule is left, so each count is over all of
//! them.
//!
//! `cargo test --profile explore -p vepc --features explore --test explore -- --nocapture`
//!
//! The counts are asserted exactly: a change in the driver or in the points shows up
//! as a changed number to explain.
#![cfg(feature = "explore")]

mod race;

use race::{Counts, FIXED, count_schedules, release_against_remove_all, report, two_releases};
use vepc::abi::KernelVersion;
use vepc::driver::{Mapping, VepcFile};

/// Runs `body` under every schedule and counts what each left.
fn every_interleaving(
    kernel: KernelVersion,
    children: u64,
    body: fn((VepcFile, Mapping), (VepcFile, Mapping)),
) -> Counts {
    let dfs = shuttle::scheduler::DfsScheduler::new(None, false);
    count_schedules(dfs, kernel, children, body)
}

/// `Counts` in the order schedules, stranded, silent.
const fn counts(schedules: usize, stranded: usize, silent: usize) -> Counts {
    Counts {
        schedules,
        stranded,
        silent,
    }
}

#[test]
fn every_interleaving_of_two_releases() {
    // children, 6.18, 6.18+zombie-retry
    let want = [
        (1, counts(4_400, 807, 63), counts(12_686, 0, 0)),
        (2, counts(14_207, 3_630, 63), counts(53_856, 0, 0)),
        (3, counts(33_460, 9_444, 63), counts(151_410, 0, 0)),
    ];
    for (children, linux, fixed) in want {
        let got = every_interleaving(KernelVersion::DEFAULT, children, two_releases);
        report("release vs release", KernelVersion::DEFAULT, children, got);
        assert_eq!(got, linux);
        let got = every_interleaving(FIXED, children, two_releases);
        report("release vs release", FIXED, children, got);
        assert_eq!(got, fixed, "the fix strands nothing");
    }
}

#[test]
fn every_interleaving_of_release_against_remove_all() {
    // children, 6.18, 6.18+zombie-retry
    let want = [
        (1, counts(380, 0, 0), counts(673, 0, 0)),
        (2, counts(792, 0, 0), counts(1_482, 0, 0)),
        (3, counts(1_511, 0, 0), counts(3_019, 0, 0)),
    ];
    for (children, linux, fixed) in want {
        for (kernel, want) in [(KernelVersion::DEFAULT, linux), (FIXED, fixed)] {
            let got = every_interleaving(kernel, children, release_against_remove_all);
            report("release vs REMOVE_ALL", kernel, children, got);
            assert_eq!(got, want, "H's own release retries the zombie");
        }
    }
}
