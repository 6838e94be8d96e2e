//! The driver through its library API: what the scripts cannot show.

use std::sync::Arc;

use vepc::abi::{EnclsError, Errno, KernelFix, KernelVersion, Signal};
use vepc::driver::{Device, Sharing, WarnSite};
use vepc::model::{AddType, Epc};

fn device(pages: u64) -> Arc<Device> {
    Device::new(
        Epc::new(&[pages * 4096]).expect("valid EPC"),
        KernelVersion::DEFAULT,
    )
}

#[test]
fn release_waits_for_the_mapping_too() {
    let dev = device(8);
    let file = dev.open().expect("open");
    let map = file.mmap(8 * 4096, Sharing::Shared, 0).expect("mmap");
    map.touch(0).expect("touch");
    drop(file); // close(): the mapping still holds the instance
    assert_eq!(dev.stats().used, 1);
    assert_eq!(map.touch(1).map(|_| ()), Ok(()));
    drop(map); // munmap(): last reference, release runs
    assert_eq!((dev.stats().free, dev.stats().used), (8, 0));
    dev.check().expect("consistent");
}

#[test]
fn fault_index_is_pgoff_plus_offset() {
    let dev = device(8);
    let file = dev.open().expect("open");
    let a = file.mmap(4096 * 4, Sharing::Shared, 0).expect("mmap");
    let b = file
        .mmap(4096 * 2, Sharing::Shared, 2)
        .expect("mmap at pgoff 2");
    let p = b.touch(1).expect("touch");
    assert_eq!(
        a.backing(3),
        Some(p),
        "the same index through both mappings"
    );
    assert_eq!(b.touch(2), Err(Signal::Sigsegv.into()));
    assert_eq!(
        file.mmap(u64::MAX, Sharing::Shared, 0).err(),
        Some(Errno::ENOMEM)
    );
    assert_eq!(
        file.mmap(4096, Sharing::Shared, u64::MAX).err(),
        Some(Errno::EOVERFLOW)
    );
}

#[test]
fn closing_with_a_thread_inside_is_a_kernel_warning_and_leaves_zombies() {
    let dev = device(8);
    let file = dev.open().expect("open");
    let map = file.mmap(4 * 4096, Sharing::Shared, 0).expect("mmap");
    let epc = dev.epc();
    let (secs, tcs) = (map.touch(0).expect("t"), map.touch(1).expect("t"));
    epc.ecreate(secs).expect("ecreate");
    epc.eadd(tcs, secs, AddType::Tcs).expect("eadd");
    epc.einit(secs).expect("einit");
    epc.eenter(tcs).expect("eenter");
    drop((file, map));
    assert_eq!(dev.warnings().len(), 1, "{:?}", dev.warnings());
    assert_eq!(dev.stats().zombie, 2, "the TCS and its SECS");
    dev.check().expect("still consistent");
    epc.eexit(tcs).expect("the thread leaves");
    // Any release retries the zombies once, in list order: the SECS comes before its
    // TCS there, so it still has a child when tried and waits for the next release.
    drop(dev.open().expect("open"));
    assert_eq!(dev.stats().zombie, 1);
    drop(dev.open().expect("open"));
    assert_eq!((dev.stats().zombie, dev.stats().free), (0, 8));
}

/// A TCS entered and its SECS, in one instance released with the thread inside.
fn release_with_a_thread_inside(dev: &Arc<Device>) -> vepc::model::EpcPage {
    let file = dev.open().expect("open");
    let map = file.mmap(4 * 4096, Sharing::Shared, 0).expect("mmap");
    let epc = dev.epc();
    let (secs, tcs) = (map.touch(0).expect("t"), map.touch(1).expect("t"));
    epc.ecreate(secs).expect("ecreate");
    epc.eadd(tcs, secs, AddType::Tcs).expect("eadd");
    epc.einit(secs).expect("einit");
    epc.eenter(tcs).expect("eenter");
    drop((file, map));
    tcs
}

/// `sgx_vepc_free_page`'s `WARN_ONCE` prints once per boot, from whichever pass or
/// walk hits it first; the model still counts every hit.
#[test]
fn release_warnings_print_once_per_boot() {
    let dev = device(16);
    release_with_a_thread_inside(&dev);
    release_with_a_thread_inside(&dev);
    assert_eq!(dev.warnings().len(), 1, "{:?}", dev.warnings());
    // Each release: the TCS in pass 1 and pass 2; the second's zombie walk again.
    assert!(dev.warning_hits(WarnSite::VepcFreePage) >= 4);
    assert_eq!(dev.stats().zombie, 4);
}

/// With the zombie-retry fix, a release walks the list until a walk frees nothing:
/// a SECS listed before its own zombie child goes in the same release.
#[test]
fn zombie_retry_frees_a_secs_listed_before_its_child_in_one_release() {
    let dev = Device::new(
        Epc::new(&[8 * 4096]).expect("EPC"),
        KernelVersion::DEFAULT.with(KernelFix::ZombieRetry),
    );
    let tcs = release_with_a_thread_inside(&dev);
    assert_eq!(dev.stats().zombie, 2);
    dev.epc().eexit(tcs).expect("the thread leaves");
    drop(dev.open().expect("open"));
    assert_eq!((dev.stats().zombie, dev.stats().free), (0, 8));
}

#[test]
fn remove_all_runs_beside_faults_and_other_instances() {
    // Two instances share enclaves (SECS in one, children in the other) and are reset
    // from two threads at once, while a third thread faults pages in. Every answer must
    // be one the kernel could give, and serial retries must then reach all-zero.
    for _ in 0..50 {
        let dev = device(4096);
        let epc = dev.epc();
        let (f0, f1) = (dev.open().expect("open"), dev.open().expect("open"));
        let (m0, m1) = (
            f0.mmap(2048 * 4096, Sharing::Shared, 0).expect("mmap"),
            f1.mmap(2048 * 4096, Sharing::Shared, 0).expect("mmap"),
        );
        for e in 0..16u64 {
            let secs = m0.touch(e * 64).expect("touch");
            epc.ecreate(secs).expect("ecreate");
            for c in 1..64 {
                let m = if c % 2 == 0 { &m0 } else { &m1 };
                epc.eadd(m.touch(e * 64 + c).expect("touch"), secs, AddType::Reg)
                    .expect("eadd");
            }
        }
        let answers = std::thread::scope(|s| {
            let a = s.spawn(|| f0.remove_all());
            let b = s.spawn(|| f1.remove_all());
            s.spawn(|| {
                for i in 1500..1600 {
                    let _ = m1.touch(i);
                }
            });
            [a.join().expect("no panic"), b.join().expect("no panic")]
        });
        for a in answers {
            assert!(matches!(a, Ok(0..=16) | Err(Errno::EBUSY)), "{a:?}");
        }
        let mut rounds = 0;
        while [f0.remove_all(), f1.remove_all()] != [Ok(0), Ok(0)] {
            rounds += 1;
            assert!(rounds < 3, "serial retries must converge");
        }
        assert!(
            f0.vepc()
                .pages()
                .iter()
                .all(|&(_, p)| !epc.entry(p).valid())
        );
        assert!(
            f1.vepc()
                .pages()
                .iter()
                .all(|&(_, p)| !epc.entry(p).valid())
        );
        dev.check().expect("consistent");
        assert!(dev.warnings().is_empty(), "{:?}", dev.warnings());
    }
}

#[test]
fn ebusy_is_the_only_answer_to_enclave_act_and_gp() {
    let dev = device(16);
    let file = dev.open().expect("open");
    let map = file.mmap(16 * 4096, Sharing::Shared, 0).expect("mmap");
    let epc = dev.epc();
    let secs = map.touch(5).expect("touch");
    epc.ecreate(secs).expect("ecreate");
    let tcs = map.touch(0).expect("touch");
    epc.eadd(tcs, secs, AddType::Tcs).expect("eadd");
    epc.einit(secs).expect("einit");
    epc.eenter(tcs).expect("eenter");
    assert_eq!(file.remove_all(), Err(Errno::EBUSY));
    epc.eexit(tcs).expect("eexit");
    assert_eq!(file.remove_all(), Ok(0));
}

#[test]
fn populate_is_the_same_as_touching_every_page_in_order() {
    for (epc_pages, map_pages) in [(64, 40), (64, 64), (64, 100), (1300, 1200)] {
        let one = device(epc_pages);
        let bulk = device(epc_pages);
        let (f1, f2) = (one.open().expect("open"), bulk.open().expect("open"));
        let m1 = f1.mmap(map_pages * 4096, Sharing::Shared, 0).expect("mmap");
        let m2 = f2.mmap(map_pages * 4096, Sharing::Shared, 0).expect("mmap");
        m1.touch(3).expect("touch");
        m2.touch(3).expect("touch");
        let first_sigbus = (0..map_pages).find(|&i| m1.touch(i).is_err());
        let bulk_result = m2.populate();
        assert_eq!(bulk_result.is_err(), first_sigbus.is_some());
        assert_eq!(
            one.stats(),
            bulk.stats(),
            "{epc_pages} EPC pages, {map_pages} mapped"
        );
        assert_eq!(f1.vepc().present_pages(), f2.vepc().present_pages());
        let indices = |f: &vepc::driver::VepcFile| -> Vec<u64> {
            f.vepc().pages().into_iter().map(|(i, _)| i).collect()
        };
        assert_eq!(indices(&f1), indices(&f2), "the same indices got pages");
        bulk.check().expect("consistent");
    }
}

#[test]
fn eadd_batch_answers_as_one_eadd_per_page() {
    let dev = device(32);
    let epc = dev.epc();
    let file = dev.open().expect("open");
    let map = file.mmap(32 * 4096, Sharing::Shared, 0).expect("mmap");
    map.populate().expect("populate");
    let p = |i| map.backing(i).expect("backed");
    epc.ecreate(p(0)).expect("ecreate");
    let run: Vec<_> = (1..10).map(p).collect();
    assert_eq!(epc.eadd_batch(&run, p(0), AddType::Reg), Ok(()));
    assert_eq!(epc.entry(p(0)).children(), 9);
    // A valid page in the middle stops the run there, with EADD's own answer.
    epc.epa(p(12)).expect("epa");
    let run: Vec<_> = (10..16).map(p).collect();
    assert_eq!(
        epc.eadd_batch(&run, p(0), AddType::Reg),
        Err((2, EnclsError::PF))
    );
    assert_eq!(
        epc.entry(p(0)).children(),
        11,
        "the two before it were added"
    );
    // The SECS as a target of its own run, and an initialized enclave.
    assert_eq!(
        epc.eadd_batch(&[p(20), p(0)], p(0), AddType::Reg),
        Err((1, EnclsError::PF))
    );
    epc.einit(p(0)).expect("einit");
    assert_eq!(
        epc.eadd_batch(&[p(21)], p(0), AddType::Tcs),
        Err((0, EnclsError::GP))
    );
    dev.check().expect("consistent");
}

#[test]
fn a_huge_sparse_mapping_costs_memory_by_the_pages_touched() {
    let dev = device(256);
    let file = dev.open().expect("open");
    let map = file
        .mmap(1 << 40, Sharing::Shared, 0)
        .expect("1 TiB mapping");
    let empty = file.vepc().heap_bytes();
    for i in 0..100u64 {
        map.touch(i * 2_684_354).expect("touch"); // spread over the whole terabyte
    }
    let per_touched = (file.vepc().heap_bytes() - empty) / 100;
    // One 2 KiB chunk (512 entries of 4 bytes) and its bookkeeping per isolated page.
    assert!(
        per_touched <= 2048 + 64,
        "{per_touched} bytes per touched page"
    );
}

#[test]
fn faults_take_their_nodes_section_first_then_any_other() {
    let dev = Device::new(
        Epc::new(&[4 * 4096, 4 * 4096]).expect("EPC"),
        KernelVersion::DEFAULT,
    );
    let second = dev.epc().sections()[1].first().0;
    let file = dev.open_on_node(1).expect("open");
    let map = file.mmap(8 * 4096, Sharing::Shared, 0).expect("mmap");
    let pages: Vec<u32> = (0..6).map(|i| map.touch(i).expect("touch").0).collect();
    assert!(
        pages[..4].iter().all(|&p| p >= second),
        "node 1's section first: {pages:?}"
    );
    assert!(
        pages[4..].iter().all(|&p| p < second),
        "then the other: {pages:?}"
    );
    // populate takes the same pages, in the same order.
    let other = Device::new(
        Epc::new(&[4 * 4096, 4 * 4096]).expect("EPC"),
        KernelVersion::DEFAULT,
    );
    let f2 = other.open_on_node(1).expect("open");
    f2.mmap(8 * 4096, Sharing::Shared, 0).expect("mmap");
    f2.vepc().populate(0, 6).expect("populate");
    let bulk: Vec<u32> = f2.vepc().pages().iter().map(|&(_, p)| p.0).collect();
    assert_eq!(bulk, pages);
    // A node with no section of its own falls back to the first section.
    assert_eq!(
        dev.open_on_node(7)
            .expect("open")
            .mmap(4096, Sharing::Shared, 0)
            .expect("mmap")
            .touch(0)
            .map(|p| p.0 < second),
        Ok(true)
    );
}

/// `populate` takes pages in batches where a run of faults would only take free
/// pages (docs/SEMANTICS.md §7.2): beside a host enclave it must still give every
/// index the page, and leave ksgxd the write-backs and wake-ups, that fault after
/// fault gives, up to the last page that fits and the SIGBUS after it.
#[test]
fn populate_beside_a_host_enclave_is_fault_after_fault() {
    let run = |populate: bool| {
        let dev = device(1024);
        dev.host_enclave_create(700).expect("the host enclave fits");
        let file = dev.open().expect("open");
        let map = file.mmap(1100 * 4096, Sharing::Shared, 0).expect("mmap");
        let end = if populate {
            match map.populate() {
                Ok(()) => 1100,
                Err(_) => file.vepc().present_pages(),
            }
        } else {
            (0..1100)
                .find(|&i| map.fault_in(i).is_err())
                .unwrap_or(1100)
        };
        dev.check().expect("consistent");
        (end, file.vepc().pages(), dev.reclaim_stats(), dev.stats())
    };
    let (faulted, populated) = (run(false), run(true));
    assert!(faulted.0 < 1024, "some pages do not fit: {}", faulted.0);
    assert!(faulted.2.written_back > 600, "{:?}", faulted.2);
    assert_eq!(
        populated.0, faulted.0,
        "the first index left without a page"
    );
    assert_eq!(populated.1, faulted.1, "the same EPC page for each index");
    assert_eq!(populated.2, faulted.2, "the same write-backs and wake-ups");
    assert_eq!(populated.3, faulted.3);
}

/// Two vCPUs populate beside a host enclave at once. Each allocation of one is
/// decided under the reclaimer's lock with the other's, so the run is some serial
/// order of the two threads' faults: the same write-backs, wake-ups and fitted
/// pages as one thread faulting both guests in turn, and with ksgxd eager no
/// fault ever finds the EPC empty (`fault_retries` 0). Taking a batch of quiet
/// pages without the lock lets the other thread cross the watermark unseen: more
/// pages per wake-up, and faults that retry.
#[test]
fn two_vcpus_populating_beside_a_host_enclave_give_a_serial_answer() {
    const SECTION: u64 = 40_000;
    let run = |threads: bool| {
        let dev = Device::new(
            Epc::new(&[SECTION * 4096, SECTION * 4096]).expect("valid EPC"),
            KernelVersion::DEFAULT,
        );
        dev.host_enclave_create(30_000)
            .expect("the host enclave fits");
        let files: Vec<_> = (0..2)
            .map(|node| dev.open_on_node(node).expect("open"))
            .collect();
        let maps: Vec<_> = files
            .iter()
            .map(|f| f.mmap(SECTION * 4096, Sharing::Shared, 0).expect("mmap"))
            .collect();
        if threads {
            std::thread::scope(|s| {
                for m in &maps {
                    s.spawn(move || {
                        // A vCPU's touches in order, a few thousand pages at a time.
                        for at in (0..SECTION).step_by(5000) {
                            let _ = m.vepc().populate(at, 5000.min(SECTION - at));
                        }
                    });
                }
            });
        } else {
            for m in &maps {
                let _ = m.populate();
            }
        }
        dev.check().expect("consistent");
        let fitted: u64 = files.iter().map(|f| f.vepc().present_pages()).sum();
        (fitted, dev.reclaim_stats())
    };
    let serial = run(false);
    assert!(serial.1.written_back > 29_000, "{:?}", serial.1);
    assert_eq!(serial.1.fault_retries, 0);
    for round in 0..8 {
        assert_eq!(run(true), serial, "round {round}");
    }
}

/// A host enclave whose own build reclaims its earlier pages can get one of them
/// again: released, each resident page is freed once.
#[test]
fn a_host_enclave_that_gets_its_own_written_back_page_again_is_freed_once() {
    let dev = device(64);
    let id = dev.host_enclave_create(200).expect("reclaims as it goes");
    assert!(dev.reclaim_stats().written_back > 100);
    let owners = dev.host_page_owners();
    let mut pages: Vec<u32> = owners.iter().map(|&(p, _)| p.0).collect();
    pages.sort_unstable();
    pages.dedup();
    assert_eq!(pages.len(), owners.len(), "each page once");
    assert_eq!(dev.host_pages(), owners.len() as u64);
    dev.host_enclave_release(id);
    assert_eq!(dev.stats().free, 64);
    dev.check().expect("consistent");
}
