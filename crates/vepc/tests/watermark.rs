//! docs/findings/poison-count.md, checked over every count of poisoned pages from 0 to
//! 70, three host enclave sizes and the three ways a page can be poisoned: the vEPC
//! faults that wait (`HANG`) are exactly those the write-up names. With P pages
//! poisoned after boot on 6.18, a guest filling the EPC waits iff P >= 32
//! (`SGX_NR_LOW_PAGES`); never with pages poisoned before the boot sanitize pass;
//! never under the fix. Otherwise it fills every page it can, the host enclave written
//! back, and ends with SIGBUS when nothing is left.

use vepc::abi::{FaultError, KernelFix, KernelVersion, Signal};
use vepc::driver::{Device, SGX_NR_LOW_PAGES, Sharing};
use vepc::model::Epc;

const PAGES: u64 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poisoned {
    AfterBoot,
    BeforeSanitize,
    AfterBootWithFix,
}

/// The first touch that does not complete, and how many did.
fn fill(poisoned: Poisoned, p: u64, host_pages: u64) -> (u64, FaultError) {
    let kernel = match poisoned {
        Poisoned::AfterBootWithFix => KernelVersion::DEFAULT.with(KernelFix::PoisonCount),
        _ => KernelVersion::DEFAULT,
    };
    let dev = Device::new(Epc::new(&[PAGES * 4096]).expect("EPC"), kernel);
    for n in 0..p {
        let paddr = dev.epc().page_number_addr(n);
        let done = if poisoned == Poisoned::BeforeSanitize {
            dev.memory_failure_at_boot(paddr)
        } else {
            dev.memory_failure(paddr, false)
        };
        assert!(done.handled.is_ok());
    }
    dev.host_enclave_create(host_pages).expect("host enclave");
    let file = dev.open().expect("open");
    let map = file.mmap(PAGES * 4096, Sharing::Shared, 0).expect("mmap");
    for i in 0..PAGES {
        if let Err(e) = map.touch(i) {
            dev.check().expect("consistent");
            return (i, e);
        }
    }
    panic!("{PAGES} touches completed on an EPC of {PAGES} pages with {p} poisoned");
}

#[test]
fn the_faults_that_wait_are_exactly_the_ones_the_write_up_names() {
    let mut waits = 0;
    for poisoned in [
        Poisoned::AfterBoot,
        Poisoned::BeforeSanitize,
        Poisoned::AfterBootWithFix,
    ] {
        for host in [1, 8, 30] {
            for p in 0..=70 {
                let (touched, end) = fill(poisoned, p, host);
                let expect_wait = poisoned == Poisoned::AfterBoot && p >= SGX_NR_LOW_PAGES;
                let what = format!("{poisoned:?}, P={p}, host enclave of {host} pages");
                if expect_wait {
                    waits += 1;
                    assert_eq!(end, FaultError::Hang, "{what}");
                    // Only the free pages: the host enclave's stay where they are.
                    let host_resident = host + 2; // its SECS and one VA page
                    assert_eq!(touched, PAGES - p - host_resident, "{what}");
                } else {
                    assert_eq!(end, FaultError::Signal(Signal::Sigbus), "{what}");
                    // Everything but the poisoned pages and the host enclave's VA page,
                    // which the reclaimer never writes back.
                    assert_eq!(touched, PAGES - p - 1, "{what}");
                }
            }
        }
    }
    assert_eq!(waits, 3 * 39, "P = 32..=70 after boot, for each host size");
}
