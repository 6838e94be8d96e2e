//! Model speed: fault-in, REMOVE_ALL and release over a fully populated instance, and
//! the model's memory per EPC page. `cargo bench -p vepc --bench model`.
//!
//! The instance holds 2^20 pages (4 GiB of EPC) in enclaves of 1024 pages with their
//! SECS above their children, plus a VA page per enclave: the shape a guest leaves
//! behind, and the one REMOVE_ALL clears in one walk. Each sample builds that state
//! outside the timed part.

use std::sync::Arc;

use divan::Bencher;
use divan::counter::ItemsCount;
use vepc::abi::KernelVersion;
use vepc::driver::{Device, Mapping, Sharing, VepcFile};
use vepc::model::{AddType, Epc};

const PAGES: u64 = 1 << 20;
const ENCLAVE: u64 = 1024;

struct Guest {
    device: Arc<Device>,
    file: VepcFile,
    map: Mapping,
}

fn mapped() -> Guest {
    let epc = Epc::new(&[PAGES * 4096]).expect("valid EPC");
    let device = Device::new(epc, KernelVersion::DEFAULT);
    let file = device.open().expect("open");
    let map = file.mmap(PAGES * 4096, Sharing::Shared, 0).expect("mmap");
    Guest { device, file, map }
}

fn populated() -> Guest {
    let g = mapped();
    let epc = g.device.epc();
    for base in (0..PAGES).step_by(ENCLAVE as usize) {
        let secs = g.map.touch(base + ENCLAVE - 1).expect("touch");
        epc.ecreate(secs).expect("ecreate");
        epc.epa(g.map.touch(base).expect("touch")).expect("epa");
        epc.eadd(g.map.touch(base + 1).expect("touch"), secs, AddType::Tcs)
            .expect("eadd");
        for i in base + 2..base + ENCLAVE - 1 {
            epc.eadd(g.map.touch(i).expect("touch"), secs, AddType::Reg)
                .expect("eadd");
        }
    }
    g
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn fault_in(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(PAGES))
        .with_inputs(mapped)
        .bench_local_refs(|g| {
            for i in 0..PAGES {
                divan::black_box(g.map.touch(i).ok());
            }
        });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn remove_all(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(PAGES))
        .with_inputs(populated)
        .bench_local_refs(|g| assert_eq!(g.file.remove_all(), Ok(0)));
}

/// Baseline for `remove_all`: the same walk with a separate EREMOVE per page, each
/// locking and unlocking its SECS, as a model without [`vepc::model::Sweep`]'s runs would.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn remove_all_baseline_one_lock_per_page(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(PAGES))
        .with_inputs(|| {
            let g = populated();
            let pages = g.file.vepc().pages();
            (g, pages)
        })
        .bench_local_refs(|(g, pages)| {
            let epc = g.device.epc();
            let failures = pages
                .iter()
                .filter(|&&(_, p)| epc.eremove(p).is_err())
                .count();
            assert_eq!(failures, 0);
        });
}

/// REMOVE_ALL again over the same pages once they are all uninitialized: the floor
/// set by walking the page map and reading the EPCM.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn remove_all_uninitialized(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(PAGES))
        .with_inputs(|| {
            let g = populated();
            assert_eq!(g.file.remove_all(), Ok(0));
            g
        })
        .bench_local_refs(|g| assert_eq!(g.file.remove_all(), Ok(0)));
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn release(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(PAGES))
        .with_inputs(populated)
        .bench_local_values(|g| {
            drop(g.file);
            drop(g.map);
            // Dropping the device (the EPC itself) is not release: keep it out.
            g.device
        });
}

fn main() {
    let g = populated();
    let bytes = g.device.heap_bytes();
    eprintln!(
        "model memory, fully populated: {bytes} bytes for {PAGES} EPC pages = {:.2} bytes/page",
        bytes as f64 / PAGES as f64
    );
    drop(g);
    divan::main();
}
