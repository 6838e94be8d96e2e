//! What the race tests share (`zombie_race.rs` under `shuttle`, `explore.rs` under
//! `explore`): the smallest layout that makes a zombie SECS, the two races, and what
//! a schedule left.
//!
//! The layout: one enclave whose SECS is in instance G and whose children are in
//! instance H, with one child, then two.

use std::sync::{Arc, Mutex};

use vepc::abi::{KernelFix, KernelVersion};
use vepc::driver::{Device, Mapping, Sharing, VepcFile};
use vepc::model::{AddType, Epc};

/// What the schedules gave.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Schedules explored.
    pub schedules: usize,
    /// Schedules that left a zombie SECS with no instance open to retry it.
    pub stranded: usize,
    /// Of those, schedules in which the kernel printed no warning at all.
    pub silent: usize,
}

/// G holds the SECS of enclave E, H its `children` REG pages. Returns the device
/// and both instances, mapped.
pub fn guest(
    kernel: KernelVersion,
    children: u64,
) -> (Arc<Device>, (VepcFile, Mapping), (VepcFile, Mapping)) {
    let dev = Device::new(Epc::new(&[8 * 4096]).expect("EPC"), kernel);
    let open = |pages: u64| {
        let f = dev.open().expect("open");
        let m = f.mmap(pages * 4096, Sharing::Shared, 0).expect("mmap");
        (f, m)
    };
    let (g, h) = (open(1), open(children));
    let epc = dev.epc();
    let secs = g.1.touch(0).expect("touch");
    epc.ecreate(secs).expect("ecreate");
    for i in 0..children {
        let p = h.1.touch(i).expect("touch");
        epc.eadd(p, secs, AddType::Reg).expect("eadd");
    }
    epc.einit(secs).expect("einit");
    (dev, g, h)
}

impl Counts {
    /// Adds what one finished schedule left on `dev`.
    pub fn add(&mut self, dev: &Device) {
        dev.check().expect("consistent");
        assert!(dev.live_instances().is_empty(), "every instance released");
        self.schedules += 1;
        if dev.stats().zombie > 0 {
            self.stranded += 1;
            if dev.warnings().is_empty() {
                self.silent += 1;
            }
        }
    }
}

/// Both VMs' last references dropped at once, by two tasks.
pub fn two_releases(g: (VepcFile, Mapping), h: (VepcFile, Mapping)) {
    let t1 = shuttle::thread::spawn(move || drop(g));
    let t2 = shuttle::thread::spawn(move || drop(h));
    t1.join().expect("no panic");
    t2.join().expect("no panic");
}

/// G released while H's VMM runs REMOVE_ALL on H; then H closed.
pub fn release_against_remove_all(g: (VepcFile, Mapping), h: (VepcFile, Mapping)) {
    let h = Arc::new(h);
    let h2 = Arc::clone(&h);
    let t1 = shuttle::thread::spawn(move || drop(g));
    let t2 = shuttle::thread::spawn(move || {
        let _ = h2.0.remove_all();
    });
    t1.join().expect("no panic");
    t2.join().expect("no panic");
    drop(h);
}

pub fn report(what: &str, kernel: KernelVersion, children: u64, c: Counts) {
    eprintln!(
        "{what}, {children} child(ren), {kernel}: {} schedules, {} stranded a zombie, {} of \
         them silently",
        c.schedules, c.stranded, c.silent
    );
}

pub const FIXED: KernelVersion = KernelVersion::DEFAULT.with(KernelFix::ZombieRetry);

/// Runs `body` on a fresh [`guest`] under every schedule `scheduler` gives, and counts
/// what each left.
pub fn count_schedules(
    scheduler: impl shuttle::scheduler::Scheduler + 'static,
    kernel: KernelVersion,
    children: u64,
    body: fn((VepcFile, Mapping), (VepcFile, Mapping)),
) -> Counts {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let c = Arc::clone(&counts);
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    shuttle::Runner::new(scheduler, config).run(move || {
        let (dev, g, h) = guest(kernel, children);
        body(g, h);
        vepc::sync::unpoisoned(&c).add(&dev);
    });
    *vepc::sync::unpoisoned(&counts)
}
