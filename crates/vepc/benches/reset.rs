//! Serial vs parallel reset of a 4-section guest (one vEPC instance per NUMA node),
//! with every EREMOVE made to cost 1.8 µs of CPU as on hardware (docs/SEMANTICS.md §6:
//! about a minute for 128 GiB). `cargo bench -p vepc --bench reset`.
//!
//! Each section holds 4096 pages in enclaves of 64 pages. In the `local` layout every
//! enclave stays in its section; in `spanning` a quarter of them keep their SECS in
//! the next section, so the parallel first round meets real conflicts and retries. The parallel strategy can at best
//! divide the time by the number of cores (2 on this project's machines).

use std::sync::Arc;
use std::time::Duration;

use divan::Bencher;
use divan::counter::ItemsCount;
use vepc::abi::KernelVersion;
use vepc::device::ModelSection;
use vepc::driver::Device;
use vepc::model::{AddType, Epc};
use vepc::reset::{ResetOptions, Strategy, reset};

const SECTIONS: usize = 4;
const PAGES: u64 = 4096;
const ENCLAVE: u64 = 64;
const EREMOVE_COST: Duration = Duration::from_nanos(1800);

/// The guest; with `spanning`, every fourth enclave keeps its SECS in the next section.
fn guest(spanning: bool) -> (Arc<Device>, Vec<ModelSection>) {
    let epc = Epc::new(&[SECTIONS as u64 * PAGES * 4096]).expect("EPC");
    let dev = Device::new(epc, KernelVersion::DEFAULT);
    let g: Vec<_> = (0..SECTIONS)
        .map(|_| ModelSection::open(&dev, PAGES * 4096).expect("open"))
        .collect();
    let epc = dev.epc();
    for (s, inst) in g.iter().enumerate() {
        for (e, base) in (0..PAGES).step_by(ENCLAVE as usize).enumerate() {
            let secs_inst = if spanning && e % 4 == 0 {
                &g[(s + 1) % SECTIONS]
            } else {
                inst
            };
            let secs = secs_inst.maps[0].touch(base + ENCLAVE - 1).expect("touch");
            if epc.ecreate(secs).is_err() {
                continue; // that slot already holds a cross-section SECS
            }
            for i in base..base + ENCLAVE - 1 {
                let ty = if i == base {
                    AddType::Tcs
                } else {
                    AddType::Reg
                };
                let _ = epc.eadd(inst.maps[0].touch(i).expect("touch"), secs, ty);
            }
        }
    }
    dev.epc().set_eremove_cost(EREMOVE_COST);
    (dev, g)
}

fn run(bencher: Bencher, strategy: Strategy, spanning: bool) {
    let opts = ResetOptions {
        strategy,
        ..ResetOptions::default()
    };
    bencher
        .counter(ItemsCount::new(SECTIONS as u64 * PAGES))
        .with_inputs(|| guest(spanning))
        .bench_local_refs(|(_, g)| {
            let r = reset(g, &opts, None).expect("reset");
            divan::black_box(r);
        });
}

/// Every enclave within one section, as on a NUMA-aware guest.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn local_serial(bencher: Bencher) {
    run(bencher, Strategy::Serial, false);
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn local_parallel(bencher: Bencher) {
    run(bencher, Strategy::Parallel, false);
}

/// A quarter of the enclaves span two sections: the parallel round conflicts.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn spanning_serial(bencher: Bencher) {
    run(bencher, Strategy::Serial, true);
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn spanning_parallel(bencher: Bencher) {
    run(bencher, Strategy::Parallel, true);
}

fn main() {
    // How often the parallel first round conflicts on this layout.
    let opts = ResetOptions {
        strategy: Strategy::Parallel,
        ..ResetOptions::default()
    };
    let (mut busy, mut calls) = (0, 0);
    for _ in 0..10 {
        let (_, mut g) = guest(true);
        let r = reset(&mut g, &opts, None).expect("reset");
        calls += r.calls.len();
        busy += r.calls.iter().filter(|c| c.answer.is_err()).count();
    }
    eprintln!(
        "spanning layout, parallel: {busy} EBUSY answers (conflicts) in {calls} calls over 10 runs"
    );
    divan::main();
}
