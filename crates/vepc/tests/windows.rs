//! The exact device's fast path (windows, `device::emulated`) against its
//! one-touch-at-a-time path: the same workloads, under pressure from host enclaves,
//! with and without reclaimable pages, with poisoned pages, run to exhaustion, must
//! give the same answer at every touch, the same counts whenever they are read, and
//! the same ksgxd wake-ups and write-backs.

use std::sync::Arc;

use vepc::abi::{Errno, KernelFix, KernelVersion, PAGE_SIZE};
use vepc::device::{Emulated, FaultMode, Faults, MapOptions, VepcDevice, VepcSection};
use vepc::driver::{Device, ReclaimStats, Stats};
use vepc::model::Epc;

const PAGE: usize = PAGE_SIZE as usize;

/// A host and what its VMM's threads do, one after another.
#[derive(Debug, Clone)]
struct Workload {
    what: &'static str,
    kernel: KernelVersion,
    epc_pages: u64,
    /// Host enclaves built before the VMM starts.
    host_enclaves: Vec<u64>,
    /// EPC pages poisoned while free, before the VMM starts.
    poison: Vec<u64>,
    /// Pages of each section the VMM maps.
    sections: Vec<usize>,
    /// `(section, page)` touched in this order; `None` reads the counts.
    touches: Vec<Option<(usize, usize)>>,
}

/// Everything the program and the log could see.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    answers: Vec<Result<(), Errno>>,
    readings: Vec<Stats>,
    end: Stats,
    reclaim: ReclaimStats,
    present: Vec<u64>,
    warnings: usize,
}

fn run(w: &Workload, mode: FaultMode) -> (Seen, u64) {
    let epc = Epc::new(&[w.epc_pages * PAGE_SIZE]).expect("EPC");
    let model = Device::new(epc, w.kernel);
    for &p in &w.poison {
        let _ = model.memory_failure(model.epc().page_number_addr(p), false);
    }
    for &pages in &w.host_enclaves {
        model.host_enclave_create(pages).expect("host enclave fits");
    }
    let dev: Arc<Emulated> = Emulated::new(model, mode).expect("emulated");
    let sections: Vec<VepcSection> = w
        .sections
        .iter()
        .map(|&pages| {
            VepcSection::open(
                &VepcDevice::emulated_on(&dev),
                pages * PAGE,
                MapOptions::default(),
            )
            .expect("open and map")
        })
        .collect();
    assert_eq!(
        dev.faults(),
        Faults::Exact,
        "{}: the VMM could run out",
        w.what
    );
    let mut answers = Vec::new();
    let mut readings = Vec::new();
    for t in &w.touches {
        match *t {
            Some((s, p)) => answers.push(dev.touch(sections[s].region().addr() + p * PAGE)),
            None => readings.push(dev.stats()),
        }
    }
    let end = dev.stats();
    let present = dev
        .model()
        .live_instances()
        .iter()
        .map(|v| v.present_pages())
        .collect();
    let seen = Seen {
        answers,
        readings,
        end,
        reclaim: dev.reclaim_stats(),
        present,
        warnings: dev.model().warnings().len(),
    };
    (seen, dev.windows_opened())
}

/// Pages in order, with a count reading every `every` touches.
fn sequential(section: usize, pages: usize, every: usize) -> Vec<Option<(usize, usize)>> {
    let mut v = Vec::new();
    for p in 0..pages {
        if p > 0 && p % every == 0 {
            v.push(None);
        }
        v.push(Some((section, p)));
    }
    v
}

/// Two threads' worth of touches, each sequential through its own section, in runs
/// of `run` pages taking turns.
fn interleaved(a: usize, b: usize, run: usize) -> Vec<Option<(usize, usize)>> {
    let (mut i, mut j) = (0, 0);
    let mut v = Vec::new();
    while i < a || j < b {
        for _ in 0..run {
            if i < a {
                v.push(Some((0, i)));
                i += 1;
            }
        }
        for _ in 0..run {
            if j < b {
                v.push(Some((1, j)));
                j += 1;
            }
        }
    }
    v
}

/// Pseudo-random pages of both sections, repeats included.
fn scattered(a: usize, b: usize, n: usize) -> Vec<Option<(usize, usize)>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if k % 97 == 96 {
                return None;
            }
            let s = (x % 2) as usize;
            let pages = if s == 0 { a } else { b };
            Some((s, (x >> 8) as usize % pages))
        })
        .collect()
}

fn workloads() -> Vec<Workload> {
    let base = Workload {
        what: "",
        kernel: KernelVersion::DEFAULT,
        epc_pages: 2048,
        host_enclaves: vec![],
        poison: vec![],
        sections: vec![],
        touches: vec![],
    };
    let poisoned = Workload {
        what: "40 poisoned pages on 6.18: the watermark counts them",
        host_enclaves: vec![300],
        poison: (100..140).collect(),
        sections: vec![2100],
        touches: sequential(0, 2100, 256),
        ..base.clone()
    };
    vec![
        Workload {
            what: "one section bigger than the EPC, nothing to reclaim",
            sections: vec![2304],
            touches: sequential(0, 2304, 500),
            ..base.clone()
        },
        Workload {
            what: "a host enclave competes, and ksgxd writes it back",
            host_enclaves: vec![256],
            sections: vec![2048],
            touches: sequential(0, 2048, 300),
            ..base.clone()
        },
        Workload {
            what: "two sections touched by two threads in turns, a host enclave",
            host_enclaves: vec![128, 64],
            sections: vec![1200, 1000],
            touches: interleaved(1200, 1000, 37),
            ..base.clone()
        },
        Workload {
            what: "scattered touches with repeats",
            host_enclaves: vec![512],
            sections: vec![1500, 900],
            touches: scattered(1500, 900, 6000),
            ..base.clone()
        },
        poisoned.clone(),
        Workload {
            what: "the same with the poison-count fix",
            kernel: KernelVersion::DEFAULT.with(KernelFix::PoisonCount),
            ..poisoned
        },
        Workload {
            what: "5.15: no reclaim by faults of vEPC, a host enclave",
            kernel: KernelVersion::parse("5.15").expect("5.15"),
            host_enclaves: vec![200],
            sections: vec![2000],
            touches: sequential(0, 2000, 400),
            ..base
        },
    ]
}

#[test]
fn windows_answer_as_one_touch_at_a_time_does() {
    for w in workloads() {
        let (windows, opened) = run(&w, FaultMode::Auto);
        let (one_by_one, none) = run(&w, FaultMode::Userfaultfd);
        assert_eq!(none, 0, "{}: userfaultfd mode opens no window", w.what);
        assert!(
            opened > 0,
            "{}: the fast path was not taken, so this compares nothing",
            w.what
        );
        assert!(
            windows.answers.iter().any(Result::is_ok),
            "{}: {:?}",
            w.what,
            windows.end
        );
        assert_eq!(windows, one_by_one, "{}", w.what);
    }
}

#[test]
fn exhaustion_lands_on_the_same_touch() {
    // 2048 pages, a host enclave of 256 that ksgxd can write back: the guest gets
    // them all back but the watermark's, and the SIGBUS lands on one exact page.
    let w = &workloads()[0];
    let (seen, _) = run(w, FaultMode::Auto);
    let first = seen.answers.iter().position(Result::is_err);
    assert_eq!(first, Some(2048), "{:?}", seen.end);
    assert!(
        seen.answers[2048..]
            .iter()
            .all(|a| *a == Err(Errno::EFAULT)),
        "every touch past the EPC gets SIGBUS"
    );
}

#[test]
fn threads_touching_at_once_get_every_page_once() {
    // Four threads, each through its own section, to exhaustion: as many touches
    // succeed as one at a time, each page is counted once, and the model agrees.
    let run = |mode: FaultMode| {
        let model = Device::new(
            Epc::new(&[4096 * PAGE_SIZE]).expect("EPC"),
            KernelVersion::DEFAULT,
        );
        model.host_enclave_create(512).expect("host enclave");
        let dev = Emulated::new(model, mode).expect("emulated");
        let sections: Vec<Arc<VepcSection>> = (0..4)
            .map(|_| {
                Arc::new(
                    VepcSection::open(
                        &VepcDevice::emulated_on(&dev),
                        1200 * PAGE,
                        MapOptions::default(),
                    )
                    .expect("open and map"),
                )
            })
            .collect();
        let threads: Vec<_> = sections
            .iter()
            .map(|s| {
                let (dev, s) = (Arc::clone(&dev), Arc::clone(s));
                std::thread::spawn(move || {
                    (0..1200)
                        .filter(|p| dev.touch(s.region().addr() + p * PAGE).is_ok())
                        .count()
                })
            })
            .collect();
        let ok: usize = threads
            .into_iter()
            .map(|t| t.join().expect("no panic"))
            .sum();
        dev.model().check().expect("consistent");
        (ok, dev.stats(), dev.windows_opened())
    };
    let (ok, stats, opened) = run(FaultMode::Auto);
    let (ok1, stats1, _) = run(FaultMode::Userfaultfd);
    assert!(opened > 0);
    assert_eq!((ok, stats), (ok1, stats1));
    assert_eq!(
        ok as u64, stats.used,
        "each success is one page, counted once"
    );
    assert!(ok < 4800, "the EPC ran out: {stats:?}");
}
