//! The emulated device where a multi-threaded VMM lives (issue 23): threads that open,
//! map, touch, unmap and close at once, while another reads the counts. Each run has
//! a watchdog: a stall fails the test instead of hanging it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use vepc::abi::{KernelVersion, PAGE_SIZE};
use vepc::device::{Emulated, FaultMode, MapOptions, VepcDevice};
use vepc::driver::Device;
use vepc::model::Epc;

const PAGE: usize = PAGE_SIZE as usize;

/// `threads` threads × `cycles` of open, map 16 KiB, touch every page, unmap, close,
/// with one more thread reading `stats()` all along. Every touch must get memory
/// (never the EINVAL of a mapping the table lost), and every instance must be
/// released by the time its last fd and region are dropped, in the dropping thread.
fn cycles(mode: FaultMode, threads: usize, cycles: usize) {
    let model = Device::new(
        Epc::new(&[1024 * PAGE_SIZE]).expect("EPC"),
        KernelVersion::DEFAULT,
    );
    let dev = Emulated::new(model, mode).expect("device");
    if mode == FaultMode::Userfaultfd {
        dev.prepare()
            .expect("userfaultfd on this machine (root in CI)");
    }
    let released = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let seen = Arc::clone(&released);
    dev.on_release(move |r| {
        seen.lock().expect("lock").insert(r.id);
    });
    let (done_tx, done_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let dev = Arc::clone(&dev);
        let released = Arc::clone(&released);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::scope(|t| {
                t.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let s = dev.stats();
                        assert_eq!(s.free + s.used + s.zombie, 1024, "{s:?}");
                    }
                });
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        t.spawn(|| {
                            let d = VepcDevice::emulated_on(&dev);
                            for _ in 0..cycles {
                                let fd = d.open().expect("open");
                                let id = fd.emulated_file().expect("emulated").id();
                                let r = fd.map(4 * PAGE, MapOptions::default()).expect("map");
                                for p in 0..4 {
                                    dev.touch(r.addr() + p * PAGE).expect("a live region");
                                }
                                drop(r);
                                drop(fd);
                                assert!(
                                    released.lock().expect("lock").contains(&id),
                                    "instance {id} outlived its last fd and region"
                                );
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    w.join().expect("a worker panicked");
                }
                stop.store(true, Ordering::Relaxed);
            });
            let _ = done_tx.send(());
        })
    };
    match done_rx.recv_timeout(Duration::from_secs(240)) {
        Ok(()) => run.join().expect("no panic"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The run panicked: report its panic.
            if let Err(p) = run.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{mode:?}: stalled"),
    }
    assert_eq!(dev.stats().used, 0);
    assert!(dev.model().check().is_ok());
}

#[test]
fn two_threads_cycling_in_fast_mode() {
    cycles(FaultMode::Auto, 2, 2000);
}

#[test]
fn two_threads_cycling_through_userfaultfd() {
    cycles(FaultMode::Userfaultfd, 2, 2000);
}

#[test]
fn eight_threads_cycling_eagerly() {
    cycles(FaultMode::Eager, 8, 300);
}
