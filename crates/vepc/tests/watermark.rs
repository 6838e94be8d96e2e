//! docs/findings/poison-count.md, checked over every count of poisoned pages from 0 to
//! 70, every active-list size from 0 to 33 pages (a host enclave of that many pages,
//! or none), two EPC sizes (so every free-page count the two leave), and the three
//! ways a page can be poisoned: the vEPC faults that wait (`HANG`) are exactly those
//! the write-up names. With P pages poisoned after boot on 6.18 and any host page
//! on the active list, a guest filling the EPC waits iff P >= 32 (`SGX_NR_LOW_PAGES`);
//! never with an empty active list (`-ENOMEM`, SIGBUS); never with pages poisoned
//! before the boot sanitize pass; never under the fix. Otherwise it fills every page it
//! can, the host enclave written back, and ends with SIGBUS when nothing is left.

use vepc::abi::{FaultError, KernelFix, KernelVersion, Signal};
use vepc::driver::{Device, SGX_NR_LOW_PAGES, Sharing};
use vepc::model::Epc;

/// The EPC sizes, in pages.
const EPC_SIZES: [u64; 2] = [72, 128];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poisoned {
    AfterBoot,
    BeforeSanitize,
    AfterBootWithFix,
}

/// The first touch that does not complete, and how many did.
fn fill(pages: u64, poisoned: Poisoned, p: u64, host_pages: u64) -> (u64, FaultError) {
    let kernel = match poisoned {
        Poisoned::AfterBootWithFix => KernelVersion::DEFAULT.with(KernelFix::PoisonCount),
        _ => KernelVersion::DEFAULT,
    };
    let dev = Device::new(Epc::new(&[pages * 4096]).expect("EPC"), kernel);
    for n in 0..p {
        let paddr = dev.epc().page_number_addr(n);
        let done = if poisoned == Poisoned::BeforeSanitize {
            dev.memory_failure_at_boot(paddr)
        } else {
            dev.memory_failure(paddr, false)
        };
        assert!(done.handled.is_ok());
    }
    if host_pages > 0 {
        dev.host_enclave_create(host_pages).expect("host enclave");
    }
    let file = dev.open().expect("open");
    // One page more than the EPC has, so the last touch always fails.
    let map = file
        .mmap((pages + 1) * 4096, Sharing::Shared, 0)
        .expect("mmap");
    for i in 0..=pages {
        if let Err(e) = map.touch(i) {
            dev.check().expect("consistent");
            return (i, e);
        }
    }
    panic!("{} touches completed on an EPC of {pages} pages", pages + 1);
}

#[test]
fn the_faults_that_wait_are_exactly_the_ones_the_write_up_names() {
    let (mut states, mut waits, mut want_waits) = (0, 0, 0);
    for pages in EPC_SIZES {
        for poisoned in [
            Poisoned::AfterBoot,
            Poisoned::BeforeSanitize,
            Poisoned::AfterBootWithFix,
        ] {
            for host in 0..=33u64 {
                // The host enclave's SECS and one VA page come with it.
                let host_resident = if host > 0 { host + 2 } else { 0 };
                for p in (0..=70).take_while(|p| p + host_resident <= pages) {
                    states += 1;
                    let (touched, end) = fill(pages, poisoned, p, host);
                    let expect_wait =
                        poisoned == Poisoned::AfterBoot && p >= SGX_NR_LOW_PAGES && host > 0;
                    let what = format!(
                        "EPC of {pages}, {poisoned:?}, P={p}, host enclave of {host} pages"
                    );
                    if expect_wait {
                        want_waits += 1;
                        assert_eq!(end, FaultError::Hang, "{what}");
                        // Only the free pages: the host enclave's stay where they are.
                        assert_eq!(touched, pages - p - host_resident, "{what}");
                    } else {
                        assert_eq!(end, FaultError::Signal(Signal::Sigbus), "{what}");
                        // Everything but the poisoned pages and the host enclave's VA
                        // page, which the reclaimer never writes back.
                        let va = u64::from(host > 0);
                        assert_eq!(touched, pages - p - va, "{what}");
                    }
                    if end == FaultError::Hang {
                        waits += 1;
                    }
                }
            }
        }
    }
    assert_eq!(waits, want_waits);
    eprintln!("{states} hosts, {waits} of them wait");
    assert!(want_waits > 0 && states > 2 * 3 * 34 * 30);
}
