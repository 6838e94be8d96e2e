//! The driver through its library API: what the scripts cannot show.

use std::sync::Arc;

use vepc::abi::{Errno, KernelVersion, Signal};
use vepc::driver::{Device, Sharing};
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
    assert_eq!(b.touch(2), Err(Signal::Sigsegv));
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
