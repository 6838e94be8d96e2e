//! The reset protocol (docs/SEMANTICS.md §4) on the model, and on test doubles for the
//! answers the model cannot be made to give.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use vepc::abi::{Errno, KernelVersion};
use vepc::device::ModelSection;
use vepc::device::{VepcError, VepcInstance};
use vepc::driver::Device;
use vepc::model::{AddType, Epc, EpcPage};
use vepc::reset::{QuiesceError, ResetError, ResetOptions, Strategy as Rounds, reset};

const PAGE: u64 = vepc::abi::PAGE_SIZE;

fn device(pages: u64, kernel: KernelVersion) -> Arc<Device> {
    Device::new(Epc::new(&[pages * PAGE]).expect("valid EPC"), kernel)
}

fn sections(dev: &Arc<Device>, n: usize, pages: u64) -> Vec<ModelSection> {
    (0..n)
        .map(|_| ModelSection::open(dev, pages * PAGE).expect("open"))
        .collect()
}

fn page(inst: &ModelSection, i: u64) -> EpcPage {
    inst.maps[0].touch(i).expect("touch")
}

fn all_uninitialized(dev: &Device, insts: &[ModelSection]) -> bool {
    insts
        .iter()
        .flat_map(|i| i.file.vepc().pages())
        .all(|(_, p)| !dev.epc().entry(p).valid())
}

/// An enclave with its SECS at `secs` and `children` REG pages (the first a TCS).
fn enclave(dev: &Device, secs: (&ModelSection, u64), children: &[(&ModelSection, u64)]) -> EpcPage {
    let s = page(secs.0, secs.1);
    dev.epc().ecreate(s).expect("ecreate");
    for (n, &(inst, i)) in children.iter().enumerate() {
        let ty = if n == 0 { AddType::Tcs } else { AddType::Reg };
        dev.epc().eadd(page(inst, i), s, ty).expect("eadd");
    }
    s
}

#[test]
fn a_single_instance_needs_round_2_only_for_a_secs_below_its_children() {
    let dev = device(64, KernelVersion::DEFAULT);
    let mut g = sections(&dev, 1, 32);
    enclave(&dev, (&g[0], 10), &[(&g[0], 0), (&g[0], 1)]);
    let r = reset(&mut g, &ResetOptions::default(), None).expect("reset");
    assert_eq!(r.round(1, 1), [Some(Ok(0))]);
    assert_eq!(r.round(2, 1), [None]);

    enclave(&dev, (&g[0], 0), &[(&g[0], 1), (&g[0], 2)]);
    let r = reset(&mut g, &ResetOptions::default(), None).expect("reset");
    assert_eq!(
        (r.round(1, 1), r.round(2, 1)),
        (vec![Some(Ok(1))], vec![Some(Ok(0))])
    );
    assert!(all_uninitialized(&dev, &g));
    dev.check().expect("consistent");
}

#[test]
fn secs_and_children_split_across_instances_in_both_orders() {
    for secs_first in [true, false] {
        let dev = device(64, KernelVersion::DEFAULT);
        let mut g = sections(&dev, 2, 16);
        let (s, c) = if secs_first { (0, 1) } else { (1, 0) };
        enclave(&dev, (&g[s], 5), &[(&g[c], 0), (&g[c], 1), (&g[c], 9)]);
        let r = reset(&mut g, &ResetOptions::default(), None).expect("reset");
        if secs_first {
            // The SECS instance is walked while the children still live.
            assert_eq!(r.round(1, 2), [Some(Ok(1)), Some(Ok(0))]);
            assert_eq!(r.round(2, 2), [Some(Ok(0)), None]);
        } else {
            assert_eq!(r.round(1, 2), [Some(Ok(0)), Some(Ok(0))]);
            assert_eq!(r.round(2, 2), [None, None]);
        }
        assert!(all_uninitialized(&dev, &g));
        assert_eq!(r.recreated, None);
        dev.check().expect("consistent");
    }
}

#[test]
fn a_thread_inside_fails_without_a_quiesce_hook_and_succeeds_with_one() {
    let dev = device(64, KernelVersion::DEFAULT);
    let mut g = sections(&dev, 2, 16);
    let secs = enclave(&dev, (&g[1], 3), &[(&g[0], 0), (&g[0], 1)]);
    let tcs = page(&g[0], 0);
    dev.epc().einit(secs).expect("einit");
    dev.epc().eenter(tcs).expect("eenter");

    let failed = reset(&mut g, &ResetOptions::default(), None).expect_err("busy");
    assert_eq!(
        failed.error,
        ResetError::Busy {
            instance: 0,
            attempts: 4,
            error: VepcError::Busy
        },
        "1 call + 3 retries"
    );
    assert_eq!(failed.report.calls.len(), 4);
    // The advice is the device error's, word for word.
    assert!(failed.error.to_string().contains("stop the vCPUs"));
    assert!(
        failed
            .error
            .to_string()
            .ends_with(&VepcError::Busy.to_string())
    );

    let hooked = Cell::new(0);
    let mut stop = |instance: usize| {
        assert_eq!(instance, 0);
        hooked.set(hooked.get() + 1);
        dev.epc()
            .eexit(tcs)
            .map_err(|e| QuiesceError::new(e.to_string()))
    };
    let r = reset(&mut g, &ResetOptions::default(), Some(&mut stop)).expect("reset");
    assert_eq!((hooked.get(), r.quiesced), (1, 1));
    assert_eq!(r.calls[0].answer, Err(Errno::EBUSY));
    assert!(all_uninitialized(&dev, &g));
    dev.check().expect("consistent");
}

#[test]
fn a_failing_quiesce_hook_stops_the_reset() {
    let dev = device(16, KernelVersion::DEFAULT);
    let mut g = sections(&dev, 1, 4);
    let secs = enclave(&dev, (&g[0], 3), &[(&g[0], 0)]);
    dev.epc().einit(secs).expect("einit");
    dev.epc().eenter(page(&g[0], 0)).expect("eenter");
    let mut hook = |_| Err(QuiesceError::from("vCPU 0 does not answer"));
    let failed = reset(&mut g, &ResetOptions::default(), Some(&mut hook)).expect_err("fails");
    assert_eq!(
        failed.error,
        ResetError::Quiesce("vCPU 0 does not answer".into())
    );
}

/// Answers from a script, for what the model will not say (a round-2 non-zero
/// answer is a kernel or caller bug; EINVAL needs a broken caller).
struct Scripted {
    answers: Vec<Result<u64, Errno>>,
    next: AtomicU32,
    recreated: bool,
    /// What each open of `recreate` answers, in turn (then success).
    reopens: Vec<Errno>,
    opens: usize,
}

impl Scripted {
    fn new(answers: &[Result<u64, Errno>]) -> Self {
        Self {
            answers: answers.to_vec(),
            next: AtomicU32::new(0),
            recreated: false,
            reopens: Vec::new(),
            opens: 0,
        }
    }
}

impl VepcInstance for Scripted {
    fn remove_all(&self) -> Result<u64, VepcError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        self.answers
            .get(i)
            .copied()
            .unwrap_or(Ok(0))
            .map_err(VepcError::remove_all)
    }

    fn recreate(&mut self) -> Result<(), VepcError> {
        self.opens += 1;
        if let Some(&errno) = self.reopens.get(self.opens - 1) {
            return Err(VepcError::open("/dev/sgx_vepc".into(), errno));
        }
        self.recreated = true;
        Ok(())
    }
}

#[test]
fn a_non_zero_answer_in_round_2_is_an_error_naming_the_instance() {
    let mut g = [Scripted::new(&[Ok(0)]), Scripted::new(&[Ok(2), Ok(1)])];
    let failed = reset(&mut g, &ResetOptions::default(), None).expect_err("round 2 non-zero");
    assert_eq!(
        failed.error,
        ResetError::SecsLeft {
            instance: 1,
            count: 1
        }
    );
    assert!(
        failed
            .error
            .to_string()
            .contains("instance 1 still has 1 SECS page")
    );
}

#[test]
fn other_errors_are_reported_with_instance_and_round() {
    let mut g = [Scripted::new(&[Ok(1), Err(Errno::EINVAL)])];
    let failed = reset(&mut g, &ResetOptions::default(), None).expect_err("EINVAL");
    assert_eq!(
        failed.error,
        ResetError::Ioctl {
            instance: 0,
            round: 2,
            error: VepcError::remove_all(Errno::EINVAL)
        }
    );
    assert!(
        failed
            .error
            .to_string()
            .contains("the third argument must be 0")
    );
    // ENOTTY without the fallback is an error too.
    let mut g = [Scripted::new(&[Err(Errno::ENOTTY)])];
    let opts = ResetOptions {
        recreate_on_enotty: false,
        ..ResetOptions::default()
    };
    let failed = reset(&mut g, &opts, None).expect_err("ENOTTY");
    assert!(failed.error.to_string().contains("older than 5.16"));
    assert!(!g[0].recreated);
}

/// The fallback's open: EAGAIN (EUPDATESVN without entropy) is tried again a bounded
/// number of times; EIO (the EPC not empty) is reported at once with its advice.
#[test]
fn the_fallback_retries_an_open_eagain_and_reports_eio() {
    let retries = vepc::reset::RECREATE_EAGAIN_RETRIES as usize;
    let mut g = [Scripted::new(&[Err(Errno::ENOTTY)])];
    g[0].reopens = vec![Errno::EAGAIN; retries];
    let r = reset(&mut g, &ResetOptions::default(), None).expect("the last try opens");
    assert_eq!((r.recreated, g[0].opens), (Some(1), retries + 1));

    let mut g = [Scripted::new(&[Err(Errno::ENOTTY)])];
    g[0].reopens = vec![Errno::EAGAIN; retries + 1];
    let failed = reset(&mut g, &ResetOptions::default(), None).expect_err("EAGAIN each time");
    assert!(
        matches!(&failed.error, ResetError::Recreate { instance: 0, error } if error.errno() == Errno::EAGAIN),
        "{:?}",
        failed.error
    );
    assert_eq!(g[0].opens, retries + 1, "bounded");

    let mut g = [Scripted::new(&[Err(Errno::ENOTTY)])];
    g[0].reopens = vec![Errno::EIO];
    let failed = reset(&mut g, &ResetOptions::default(), None).expect_err("EIO");
    assert_eq!(g[0].opens, 1, "EIO is not retried");
    assert!(
        failed.error.to_string().contains("until the host reboots"),
        "{}",
        failed.error
    );
}

/// Recreating opens the new instance before it drops the old one: on 6.19 the SGX
/// usage count never falls to 0, so no EUPDATESVN runs and an EPC without entropy (or
/// with a zombie) does not stop the fallback.
#[test]
fn recreate_opens_first_so_no_eupdatesvn_runs() {
    let dev = device(64, KernelVersion::EUPDATESVN);
    dev.set_eupdatesvn(true);
    let mut g = sections(&dev, 1, 16);
    assert_eq!(dev.svn().users, 1);
    dev.fail_entropy(100);
    g[0].recreate()
        .expect("no EUPDATESVN: a user is still counted");
    assert_eq!(
        dev.svn().users,
        1,
        "the old instance is gone, the new one counted"
    );
    drop(g);
    assert_eq!(dev.svn().users, 0);
    assert_eq!(
        dev.open().err(),
        Some(Errno::EAGAIN),
        "the next first open does run EUPDATESVN"
    );
}

#[test]
fn before_5_16_every_instance_is_recreated_in_place() {
    let dev = device(64, KernelVersion::new(5, 15));
    let mut g = sections(&dev, 2, 16);
    enclave(&dev, (&g[0], 0), &[(&g[1], 0), (&g[1], 1)]);
    let old: Vec<u64> = g.iter().map(|i| i.file.vepc().id()).collect();
    let r = reset(&mut g, &ResetOptions::default(), None).expect("fallback");
    assert_eq!(r.recreated, Some(2));
    assert_eq!(r.calls.len(), 1, "one ENOTTY is enough to know");
    for (inst, old_id) in g.iter().zip(old) {
        assert_ne!(inst.file.vepc().id(), old_id, "a new instance");
        assert_eq!(
            (inst.maps[0].pages(), inst.maps[0].pgoff()),
            (16, 0),
            "same range"
        );
        assert_eq!(inst.file.vepc().present_pages(), 0);
    }
    let stats = dev.stats();
    assert_eq!(
        (stats.used, stats.zombie),
        (0, 0),
        "old pages freed, zombie drained"
    );
    dev.check().expect("consistent");
}

/// A guest layout: enclaves whose SECS and children are spread over 4 sections.
#[derive(Debug, Clone)]
struct Layout {
    enclaves: Vec<(usize, Vec<usize>)>, // (section of SECS, sections of children)
    va: Vec<usize>,
}

fn layout() -> impl Strategy<Value = Layout> {
    (
        proptest::collection::vec(
            (0..4usize, proptest::collection::vec(0..4usize, 1..12)),
            0..12,
        ),
        proptest::collection::vec(0..4usize, 0..6),
    )
        .prop_map(|(enclaves, va)| Layout { enclaves, va })
}

/// Builds the layout on a fresh device: each section's pages are handed out in a
/// shuffled but deterministic order so SECS land above and below their children.
fn build(l: &Layout, cost_ns: u64) -> (Arc<Device>, Vec<ModelSection>) {
    let dev = device(1024, KernelVersion::DEFAULT);
    dev.epc()
        .set_eremove_cost(std::time::Duration::from_nanos(cost_ns));
    let g = sections(&dev, 4, 200);
    let mut next = [0u64; 4];
    let mut take = |s: usize| {
        next[s] += 1;
        (next[s] * 37) % 200
    };
    for (secs_at, kids) in &l.enclaves {
        let secs = page(&g[*secs_at], take(*secs_at));
        dev.epc().ecreate(secs).expect("ecreate");
        for (n, &k) in kids.iter().enumerate() {
            let ty = if n == 0 { AddType::Tcs } else { AddType::Reg };
            dev.epc()
                .eadd(page(&g[k], take(k)), secs, ty)
                .expect("eadd");
        }
    }
    for &s in &l.va {
        dev.epc().epa(page(&g[s], take(s))).expect("epa");
    }
    (dev, g)
}

fn end_state(dev: &Device, g: &[ModelSection]) -> Vec<Vec<(u64, bool)>> {
    g.iter()
        .map(|i| {
            i.file
                .vepc()
                .pages()
                .into_iter()
                .map(|(idx, p)| (idx, dev.epc().entry(p).valid()))
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The parallel strategy ends exactly where the serial protocol does.
    #[test]
    fn parallel_ends_in_the_serial_state(l in layout()) {
        let (d1, mut serial) = build(&l, 0);
        let (d2, mut parallel) = build(&l, 200);
        let par = ResetOptions { strategy: Rounds::Parallel, ..ResetOptions::default() };
        let a = reset(&mut serial, &ResetOptions::default(), None);
        let b = reset(&mut parallel, &par, None);
        prop_assert!(a.is_ok(), "{a:?}");
        prop_assert!(b.is_ok(), "{b:?}");
        prop_assert_eq!(end_state(&d1, &serial), end_state(&d2, &parallel));
        prop_assert!(end_state(&d2, &parallel).iter().flatten().all(|&(_, valid)| !valid));
        prop_assert_eq!(d1.stats(), d2.stats());
        d2.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(d2.warnings().is_empty());
    }
}

/// Concurrent round-1 calls on sections that share enclaves do conflict: the parallel
/// strategy has to retry some, and still ends uninitialized.
#[test]
fn the_parallel_first_round_meets_real_conflicts() {
    let spanning = Layout {
        enclaves: (0..8)
            .map(|e| (e % 4, (0..12).map(|c| (c + e) % 4).collect()))
            .collect(),
        va: vec![],
    };
    let par = ResetOptions {
        strategy: Rounds::Parallel,
        ..ResetOptions::default()
    };
    let mut conflicts = 0;
    for _ in 0..200 {
        let (dev, mut g) = build(&spanning, 2_000);
        let r = reset(&mut g, &par, None).expect("reset");
        conflicts += r
            .calls
            .iter()
            .filter(|c| c.answer == Err(Errno::EBUSY))
            .count();
        assert!(all_uninitialized(&dev, &g));
        if conflicts > 0 {
            return;
        }
    }
    panic!("200 parallel resets of shared enclaves never conflicted: the test shows nothing");
}
