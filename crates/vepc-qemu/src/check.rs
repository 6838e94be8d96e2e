//! The cases a VMM's SGX reset must handle, run on a QEMU binary and judged from the
//! shim's log and QEMU's stderr: what `vepc qemu-check` prints.
//!
//! Each case is a guest state or a kernel answer (Documentation/arch/x86/sgx.rst,
//! "Virtual EPC"), and a judgement that passes it or names the bug it shows. The
//! judgements look only at what the reset achieved and what QEMU said, never at how
//! many calls it made, so a different correct fix passes too.

use std::path::Path;

use crate::disasm::{self, ThirdArg};
use crate::run::{Run, Setup, run};

/// A bug a case can show, with a stable name for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// A SECS whose children were in another section outlived a reset with no error.
    SecsLeft,
    /// An `EBUSY` did not make the reset go round again: a SECS outlived it.
    EbusyIgnored,
    /// After a transient `EBUSY`, two rounds were not enough and the reset gave up.
    TwoRoundsAfterEbusy,
    /// A section that kept answering `EBUSY` was not reported.
    EbusySilent,
    /// `ENOTTY` (a kernel before 5.16) was never recognised: no warning.
    EnottyUnseen,
    /// The `ENOTTY` warning was printed more than once.
    EnottyRepeated,
    /// A section answering `EINVAL` was not reported.
    EinvalSilent,
    /// REMOVE_ALL's third argument is whatever the caller left in `%rdx`.
    ThirdArgumentImplicit,
    /// REMOVE_ALL's third argument reached the kernel non-zero.
    ThirdArgumentNonZero,
    /// QEMU stopped answering after a reset.
    Died,
}

impl serde::Serialize for Bug {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl Bug {
    /// Its stable name (`ebusy-ignored`).
    pub fn name(self) -> &'static str {
        match self {
            Self::SecsLeft => "secs-left",
            Self::EbusyIgnored => "ebusy-ignored",
            Self::TwoRoundsAfterEbusy => "two-rounds-after-ebusy",
            Self::EbusySilent => "ebusy-silent",
            Self::EnottyUnseen => "enotty-unseen",
            Self::EnottyRepeated => "enotty-repeated",
            Self::EinvalSilent => "einval-silent",
            Self::ThirdArgumentImplicit => "third-argument-implicit",
            Self::ThirdArgumentNonZero => "third-argument-nonzero",
            Self::Died => "died",
        }
    }

    /// What is wrong, in one line.
    pub fn describe(self) -> &'static str {
        match self {
            Self::SecsLeft => "a SECS whose children were in another section outlived the reset",
            Self::EbusyIgnored => {
                "EBUSY is not counted as a failure: no further round runs and a SECS \
                 outlives the reset, silently"
            }
            Self::TwoRoundsAfterEbusy => {
                "after a transient EBUSY two rounds are not enough: the section's second \
                 round was its first complete pass, and the reset gave up on a SECS that \
                 one more round removes"
            }
            Self::EbusySilent => "a section that keeps failing with EBUSY is not reported",
            Self::EnottyUnseen => {
                "ENOTTY is never recognised (the return value, -1, is compared with \
                 -ENOTTY instead of errno): no warning that the kernel cannot reset vEPC"
            }
            Self::EnottyRepeated => "the old-kernel warning is printed at every reset",
            Self::EinvalSilent => "a section failing with EINVAL is not reported",
            Self::ThirdArgumentImplicit => {
                "REMOVE_ALL is called without a third argument: the kernel gets whatever \
                 the caller left in %rdx, 0 only by register allocation, else EINVAL"
            }
            Self::ThirdArgumentNonZero => "REMOVE_ALL's third argument reached the kernel non-zero",
            Self::Died => "QEMU stopped answering after a reset",
        }
    }
}

/// How one case came out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The reset handled the case.
    Pass {
        /// What shows it.
        evidence: Vec<String>,
    },
    /// It did not.
    Bug {
        /// Which bug.
        bug: Bug,
        /// What it means.
        description: &'static str,
        /// What shows it.
        evidence: Vec<String>,
    },
    /// The case could not be run.
    Error {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    fn bug(bug: Bug, evidence: Vec<String>) -> Self {
        Self::Bug {
            bug,
            description: bug.describe(),
            evidence,
        }
    }

    /// The bug, if the case showed one.
    pub fn bug_shown(&self) -> Option<Bug> {
        match self {
            Self::Bug { bug, .. } => Some(*bug),
            _ => None,
        }
    }
}

/// Whether a case can happen on a real SGX host through QEMU's reset path, which runs
/// with every vCPU paused (so no logical processor is inside a guest enclave: the VM
/// exit was an AEX) and resets the sections one after another from one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// It happens on a real host at a guest reboot; the text says to whom.
    Reachable(&'static str),
    /// It cannot happen with vCPUs paused today; the case checks that QEMU would still
    /// be right if it did (another caller of the reset, a kernel change). The text says
    /// why it is out of reach.
    Defensive(&'static str),
}

impl Reach {
    /// `reachable` or `defensive`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reachable(_) => "reachable",
            Self::Defensive(_) => "defensive",
        }
    }

    /// Who meets it, or why nobody does.
    pub fn why(self) -> &'static str {
        match self {
            Self::Reachable(w) | Self::Defensive(w) => w,
        }
    }
}

/// One case: a setup, and how to judge what QEMU did with it.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Its name (`transient-ebusy`).
    pub name: &'static str,
    /// What it puts QEMU through.
    pub title: &'static str,
    /// Whether a real host with QEMU's reset path meets it.
    pub reach: Reach,
    /// The QEMU run.
    setup: fn() -> Setup,
    /// The judgement of the run, and of the binary.
    judge: fn(&Path, &Run) -> Verdict,
}

impl Case {
    /// Runs the case on `qemu` with `shim` preloaded.
    pub fn check(&self, qemu: &Path, shim: &Path) -> Outcome {
        let (verdict, run) = match run(qemu, shim, &(self.setup)()) {
            Err(e) => (
                Verdict::Error {
                    reason: e.to_string(),
                },
                None,
            ),
            Ok(r) if !r.alive => (
                Verdict::bug(Bug::Died, vec![stderr_evidence(&r, "")]),
                Some(r),
            ),
            Ok(r) => ((self.judge)(qemu, &r), Some(r)),
        };
        Outcome {
            case: *self,
            verdict,
            run,
        }
    }
}

/// A case, its verdict, and the run behind it (for a reader who wants the log).
#[derive(Debug)]
pub struct Outcome {
    /// The case.
    pub case: Case,
    /// How it came out.
    pub verdict: Verdict,
    /// The QEMU run, if the case has one and it completed.
    pub run: Option<Run>,
}

/// An enclave whose SECS is in S0 and whose children are in S1: round 1 removes the
/// children (S1) and keeps the SECS (S0 answers 1), round 2 removes the SECS.
pub const SPLIT: &str = "\
# SECS in the first section, its children in the second
ecreate S0 0 Split
eadd S1 0 Split tcs
eadd S1 1 Split reg
einit Split
";

/// An enclave in S0 with its SECS below its children, as a guest that allocates EPC
/// from the bottom lays it out: a complete pass keeps the SECS (the children come
/// after it), the next one removes it.
pub const SECS_FIRST: &str = "\
# SECS at page 0, its children after it, all in the first section
ecreate S0 0 Low
eadd S0 1 Low tcs
eadd S0 2 Low reg
einit Low
";

/// A thread inside an enclave of S0 (a vCPU that was never stopped): every
/// REMOVE_ALL of S0 answers `EBUSY`.
pub const INSIDE: &str = "\
# a vCPU inside the enclave, never leaving
ecreate S0 0 Busy
eadd S0 1 Busy tcs
einit Busy
eenter Busy S0 1
";

/// The first `EBUSY` on S0 only: a conflict that goes away.
pub const TRANSIENT_EBUSY: &str = "S0:remove-all=EBUSY@1";

/// Every case, in the order `vepc qemu-check` runs them.
pub const CASES: [Case; 7] = [
    Case {
        name: "split-secs",
        title: "a SECS in section 0, its children in section 1: two rounds",
        reach: Reach::Reachable(
            "a guest with two EPC sections (one per NUMA node) whose enclave has its SECS \
             in one and children in the other; the kernel answers 1 for the first section",
        ),
        setup: || Setup::default().script(SPLIT),
        judge: judge_split,
    },
    Case {
        name: "transient-ebusy",
        title: "the same, and section 0's first REMOVE_ALL fails with EBUSY",
        reach: Reach::Defensive(
            "EREMOVE fails only for a thread inside the enclave or a concurrent EREMOVE on \
             the same enclave; with vCPUs paused and one resetting thread there is neither",
        ),
        setup: || {
            Setup::default()
                .script(SPLIT)
                .env("VEPC_INJECT", TRANSIENT_EBUSY)
        },
        judge: judge_transient,
    },
    Case {
        name: "transient-ebusy-secs-first",
        title: "a SECS below its children in section 0, whose first REMOVE_ALL fails with EBUSY",
        reach: Reach::Defensive("as transient-ebusy: no EREMOVE conflict exists with vCPUs paused"),
        setup: || {
            Setup::default()
                .script(SECS_FIRST)
                .env("VEPC_INJECT", TRANSIENT_EBUSY)
        },
        judge: judge_transient,
    },
    Case {
        name: "persistent-ebusy",
        title: "a thread left inside an enclave of section 0: EBUSY at every call",
        reach: Reach::Defensive(
            "a vCPU left running inside an enclave; QEMU's reset pauses every vCPU first",
        ),
        setup: || Setup::default().script(INSIDE),
        judge: judge_persistent,
    },
    Case {
        name: "enotty",
        title: "a kernel without REMOVE_ALL (5.15): ENOTTY, over four resets",
        reach: Reach::Reachable(
            "every host kernel from 5.13 to 5.15 without a backport of REMOVE_ALL \
             (Ubuntu 22.04's 5.15, for one): the reset does nothing and QEMU says nothing",
        ),
        setup: || {
            Setup::default()
                .script(SPLIT)
                .env("VEPC_KERNEL", "5.15")
                .resets(3)
        },
        judge: judge_enotty,
    },
    Case {
        name: "einval",
        title: "every REMOVE_ALL fails with EINVAL",
        reach: Reach::Reachable(
            "the kernel answers EINVAL to a non-zero third argument, which a QEMU that \
             passes none sends whenever %rdx happens to be non-zero at the call",
        ),
        setup: || {
            Setup::default()
                .script(SPLIT)
                .env("VEPC_INJECT", "remove-all=EINVAL")
        },
        judge: judge_einval,
    },
    Case {
        name: "third-argument",
        title: "REMOVE_ALL's third argument is 0, and by construction (machine code)",
        reach: Reach::Reachable(
            "the binary itself: what %rdx holds at the call is up to the compiler",
        ),
        setup: Setup::default,
        judge: judge_third_argument,
    },
];

/// Runs every case on `qemu`.
pub fn check_all(qemu: &Path, shim: &Path) -> Vec<Outcome> {
    CASES.iter().map(|c| c.check(qemu, shim)).collect()
}

/// `reset N: [S0=1 S1=0] [S0=0 S1=0]; valid pages after: S0=0 S1=0`.
fn reset_evidence(run: &Run, n: usize) -> String {
    match run.resets.get(n) {
        Some(r) => format!("{}: {}; {}", reset_name(n), r.rounds_text(), r.valid_text()),
        None => format!("{}: never happened", reset_name(n)),
    }
}

fn reset_name(n: usize) -> String {
    if n == 0 {
        "start-up reset".into()
    } else {
        format!("system_reset {n}")
    }
}

/// QEMU's stderr lines that contain `text` (all of them for ""), or that it said none.
fn stderr_evidence(run: &Run, text: &str) -> String {
    let lines = run.stderr_lines(text);
    if lines.is_empty() {
        "stderr: nothing".into()
    } else {
        format!("stderr: {}", lines.join(" | "))
    }
}

const RESET_ERROR: &str = "cannot reset vEPC section";

fn judge_split(_: &Path, run: &Run) -> Verdict {
    let evidence = vec![
        reset_evidence(run, 0),
        stderr_evidence(run, RESET_ERROR),
        prealloc_evidence(run),
    ];
    if run.resets.iter().all(|r| r.complete()) {
        Verdict::Pass { evidence }
    } else {
        Verdict::bug(Bug::SecsLeft, evidence)
    }
}

/// How prealloc went: by QEMU's own touches, as on an SGX host, or not.
fn prealloc_evidence(run: &Run) -> String {
    let probes = run.populate_probes();
    if !probes.is_empty() && probes.iter().all(|r| r == "EINVAL") {
        format!(
            "prealloc: MADV_POPULATE_WRITE answered EINVAL ({} probe(s)), as on an SGX host: \
             QEMU touched every page itself, catching SIGBUS",
            probes.len()
        )
    } else {
        format!("prealloc: MADV_POPULATE_WRITE answered {probes:?}")
    }
}

/// A transient EBUSY on S0's first call: the start-up reset must still end with every
/// page uninitialized, and with nothing to report.
fn judge_transient(_: &Path, run: &Run) -> Verdict {
    let evidence = vec![reset_evidence(run, 0), stderr_evidence(run, RESET_ERROR)];
    if run.resets.first().is_some_and(|r| r.complete()) {
        Verdict::Pass { evidence }
    } else if run.stderr_lines(RESET_ERROR).is_empty() {
        Verdict::bug(Bug::EbusyIgnored, evidence)
    } else {
        Verdict::bug(Bug::TwoRoundsAfterEbusy, evidence)
    }
}

/// A thread that never leaves: S0 cannot be reset, and QEMU must say so (naming the
/// section and EBUSY) at every reset, and keep running.
fn judge_persistent(_: &Path, run: &Run) -> Verdict {
    let evidence = vec![
        reset_evidence(run, 0),
        stderr_evidence(run, RESET_ERROR),
        "QEMU answered QMP after the resets".into(),
    ];
    let busy = run
        .stderr_lines(&format!("{RESET_ERROR} 0"))
        .iter()
        .filter(|l| l.contains("busy") || l.contains("EBUSY"))
        .count();
    if busy >= run.resets.len() {
        Verdict::Pass { evidence }
    } else {
        Verdict::bug(Bug::EbusySilent, evidence)
    }
}

const ENOTTY_WARNING: &str = "does not support SGX_IOC_VEPC_REMOVE_ALL";

fn judge_enotty(_: &Path, run: &Run) -> Verdict {
    let warnings = run.stderr_lines(ENOTTY_WARNING).len();
    let evidence = vec![
        reset_evidence(run, 0),
        format!(
            "{} resets, the warning printed {warnings} time(s)",
            run.resets.len()
        ),
        stderr_evidence(run, ENOTTY_WARNING),
    ];
    match warnings {
        0 => Verdict::bug(Bug::EnottyUnseen, evidence),
        1 => Verdict::Pass { evidence },
        _ => Verdict::bug(Bug::EnottyRepeated, evidence),
    }
}

fn judge_einval(_: &Path, run: &Run) -> Verdict {
    let evidence = vec![reset_evidence(run, 0), stderr_evidence(run, RESET_ERROR)];
    let sections = run.resets.first().map_or(0, |r| r.valid_after().len());
    let reported = (0..sections).all(|s| {
        run.stderr_lines(&format!("{RESET_ERROR} {s}:"))
            .iter()
            .any(|l| l.contains("Invalid argument") || l.contains("EINVAL"))
    });
    if sections > 0 && reported {
        Verdict::Pass { evidence }
    } else {
        Verdict::bug(Bug::EinvalSilent, evidence)
    }
}

fn judge_third_argument(qemu: &Path, run: &Run) -> Verdict {
    let nonzero: Vec<String> = run
        .calls()
        .filter(|c| c.arg != 0)
        .map(|c| format!("{c} with argument {:#x}", c.arg))
        .collect();
    if !nonzero.is_empty() {
        return Verdict::bug(Bug::ThirdArgumentNonZero, nonzero);
    }
    let sites = match disasm::remove_all_calls(qemu) {
        Ok(s) => s,
        Err(e) => {
            return Verdict::Error {
                reason: e.to_string(),
            };
        }
    };
    if sites.is_empty() {
        return Verdict::Error {
            reason: "no call of ioctl with 0xa404 in %esi found in the binary".into(),
        };
    }
    let evidence: Vec<String> = sites
        .iter()
        .map(|s| {
            let how = match &s.third {
                ThirdArg::Zeroed { by } => format!("%rdx zeroed by `{by}`"),
                ThirdArg::Set { by } => format!("%rdx set by `{by}`"),
                ThirdArg::Leftover { from } => format!("%rdx left over from `{from}`"),
            };
            format!(
                "ioctl(fd, 0xa404) at {:#x}: {how}; then `{}`",
                s.addr, s.then
            )
        })
        .collect();
    let mut evidence = evidence;
    evidence.push(format!(
        "at run time every REMOVE_ALL passed 0 ({} calls)",
        run.calls().count()
    ));
    if sites
        .iter()
        .all(|s| matches!(s.third, ThirdArg::Zeroed { .. }))
    {
        Verdict::Pass { evidence }
    } else {
        Verdict::bug(Bug::ThirdArgumentImplicit, evidence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Answer, Call, Reset};

    #[test]
    fn cases_say_what_a_paused_vm_reaches() {
        let reach: Vec<(&str, &str)> = CASES.iter().map(|c| (c.name, c.reach.name())).collect();
        assert_eq!(
            reach,
            [
                ("split-secs", "reachable"),
                ("transient-ebusy", "defensive"),
                ("transient-ebusy-secs-first", "defensive"),
                ("persistent-ebusy", "defensive"),
                ("enotty", "reachable"),
                ("einval", "reachable"),
                ("third-argument", "reachable"),
            ]
        );
    }

    fn call(instance: &str, answer: Answer, valid_pages: u64) -> Call {
        Call {
            instance: instance.into(),
            answer,
            arg: 0,
            injected: false,
            valid_pages,
            present_pages: 4,
        }
    }

    fn run(calls: Vec<Call>, stderr: &str) -> Run {
        Run {
            resets: vec![Reset { calls }],
            log: Vec::new(),
            stderr: stderr.into(),
            alive: true,
        }
    }

    const NOWHERE: &str = "/nonexistent";

    #[test]
    fn a_fix_with_two_rounds_is_told_apart_from_no_fix() {
        let busy = || Answer::Errno("EBUSY".into());
        // Stock: one round, silent, the SECS stays.
        let stock = run(
            vec![call("S0", busy(), 3), call("S1", Answer::Count(0), 0)],
            "",
        );
        assert_eq!(
            judge_transient(Path::new(NOWHERE), &stock).bug_shown(),
            Some(Bug::EbusyIgnored)
        );
        // Two rounds: the second was S0's first complete pass; it gave up, and said so.
        let two = run(
            vec![
                call("S0", busy(), 3),
                call("S1", Answer::Count(0), 0),
                call("S0", Answer::Count(1), 1),
                call("S1", Answer::Count(0), 0),
            ],
            "qemu: cannot reset vEPC section 0: SECS pages remain\n",
        );
        assert_eq!(
            judge_transient(Path::new(NOWHERE), &two).bug_shown(),
            Some(Bug::TwoRoundsAfterEbusy)
        );
        let three = run(
            vec![
                call("S0", busy(), 3),
                call("S0", Answer::Count(1), 1),
                call("S0", Answer::Count(0), 0),
            ],
            "",
        );
        assert_eq!(
            judge_transient(Path::new(NOWHERE), &three),
            Verdict::Pass {
                evidence: vec![
                    "start-up reset: [S0=EBUSY] [S0=1] [S0=0]; valid pages after: S0=0".into(),
                    "stderr: nothing".into()
                ]
            }
        );
    }

    #[test]
    fn the_old_kernel_warning_must_come_exactly_once() {
        let enotty = || vec![call("S0", Answer::Errno("ENOTTY".into()), 1)];
        let w = "qemu: warning: kernel does not support SGX_IOC_VEPC_REMOVE_ALL\n";
        for (stderr, want) in [
            ("", Some(Bug::EnottyUnseen)),
            (w, None),
            (&format!("{w}{w}") as &str, Some(Bug::EnottyRepeated)),
        ] {
            let r = run(enotty(), stderr);
            assert_eq!(judge_enotty(Path::new(NOWHERE), &r).bug_shown(), want);
        }
    }

    #[test]
    fn every_failing_section_must_be_reported_with_its_errno() {
        let inval = || Answer::Errno("EINVAL".into());
        let calls = || vec![call("S0", inval(), 1), call("S1", inval(), 2)];
        let one = "q: cannot reset vEPC section 0: Invalid argument\n";
        let both = format!("{one}q: cannot reset vEPC section 1: Invalid argument\n");
        let r = run(calls(), one);
        assert_eq!(
            judge_einval(Path::new(NOWHERE), &r).bug_shown(),
            Some(Bug::EinvalSilent)
        );
        let r = run(calls(), &both);
        assert_eq!(judge_einval(Path::new(NOWHERE), &r).bug_shown(), None);
        // Reported, but without the reason: not enough.
        let r = run(
            calls(),
            "q: cannot reset vEPC section 0\nq: cannot reset vEPC section 1\n",
        );
        assert_eq!(
            judge_einval(Path::new(NOWHERE), &r).bug_shown(),
            Some(Bug::EinvalSilent)
        );
    }

    #[test]
    fn a_non_zero_argument_at_run_time_is_a_bug_whatever_the_code_says() {
        let mut c = call("S0", Answer::Errno("EINVAL".into()), 1);
        c.arg = 0xffff_ffff;
        let r = run(vec![c], "");
        let v = judge_third_argument(Path::new(NOWHERE), &r);
        assert_eq!(v.bug_shown(), Some(Bug::ThirdArgumentNonZero), "{v:?}");
    }
}
