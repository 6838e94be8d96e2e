//! The emulated `/dev/sgx_vepc`: real memory whose first touches are the model's
//! faults, in each way the device can serve them, and the same VMM code (sections, the
//! reset protocol) that runs on the host's device.

#![allow(unsafe_code)]

use std::sync::Arc;

use vepc::abi::{Errno, KernelVersion, PAGE_SIZE};
use vepc::device::{Emulated, FaultMode, Faults, MapOptions, VepcDevice, VepcSection};
use vepc::driver::{Device, Stats};
use vepc::model::{AddType, Epc};
use vepc::reset::{ResetOptions, reset};

const PAGE: usize = PAGE_SIZE as usize;

fn emulated(pages: u64, mode: FaultMode) -> Arc<Emulated> {
    emulated_on(pages, mode, KernelVersion::DEFAULT)
}

fn emulated_on(pages: u64, mode: FaultMode, kernel: KernelVersion) -> Arc<Emulated> {
    let epc = Epc::new(&[pages * PAGE_SIZE]).expect("valid EPC");
    Emulated::new(Device::new(epc, kernel), mode).expect("a fresh model")
}

fn section(dev: &Arc<Emulated>, pages: usize) -> VepcSection {
    VepcSection::open(
        &VepcDevice::emulated_on(dev),
        pages * PAGE,
        MapOptions::default(),
    )
    .expect("open and map")
}

/// Touches each page of `pages` as a guest would: `Ok` where it got memory,
/// `EFAULT` where it would have got SIGBUS.
fn touch(
    dev: &Emulated,
    s: &VepcSection,
    pages: impl IntoIterator<Item = usize>,
) -> Vec<Result<(), Errno>> {
    pages
        .into_iter()
        .map(|p| dev.touch(s.region().addr() + p * PAGE))
        .collect()
}

fn used(dev: &Emulated) -> u64 {
    dev.stats().used
}

#[test]
fn fast_first_touches_are_counted_before_anything_reads_the_model() {
    let dev = emulated(64, FaultMode::Auto);
    let s = section(&dev, 32);
    assert_eq!(dev.faults(), Faults::Fast, "32 mapped pages, 64 free");
    assert!(touch(&dev, &s, [0, 7, 31]).iter().all(Result::is_ok));
    // Every reading counts the touches first.
    assert_eq!(used(&dev), 3);
    assert_eq!(
        dev.faults(),
        Faults::Fast,
        "reading the counts changes nothing"
    );
    assert_eq!(s.fd().pages(), Some((3, 0)));
    let indices: Vec<u64> = s
        .fd()
        .model()
        .expect("emulated")
        .vepc()
        .pages()
        .iter()
        .map(|&(i, _)| i)
        .collect();
    assert_eq!(
        indices,
        [0, 7, 31],
        "EPC taken for exactly the pages touched"
    );
    // A second touch of a page takes nothing more.
    assert!(touch(&dev, &s, [7]).iter().all(Result::is_ok));
    assert_eq!(used(&dev), 3);
}

#[test]
fn a_mapping_that_could_run_out_turns_the_device_exact_and_sigbus_lands_where_it_must() {
    let dev = emulated(16, FaultMode::Auto);
    let a = section(&dev, 8);
    assert!(touch(&dev, &a, 0..8).iter().all(Result::is_ok));
    assert_eq!(dev.faults(), Faults::Fast);
    // 16 more pages mapped, 8 EPC pages left: a touch could now fail.
    let b = section(&dev, 16);
    assert_eq!(dev.faults(), Faults::Exact);
    assert_eq!(used(&dev), 8, "the fast touches were counted on the way");
    let got = touch(&dev, &b, 0..16);
    assert_eq!(&got[..8], &[Ok(()); 8]);
    assert_eq!(
        &got[8..],
        &[Err(Errno::EFAULT); 8],
        "SIGBUS from the 9th page on"
    );
    // A page that got SIGBUS keeps answering it.
    assert_eq!(touch(&dev, &b, [8]), [Err(Errno::EFAULT)]);
    assert_eq!(
        dev.stats(),
        Stats {
            free: 0,
            used: 16,
            zombie: 0,
            poisoned: 0,
            host: 0,
        }
    );
    assert!(dev.model().check().is_ok());
}

#[test]
fn with_every_mapping_gone_first_touches_are_fast_again() {
    let dev = emulated(16, FaultMode::Auto);
    let a = section(&dev, 32);
    assert_eq!(
        dev.faults(),
        Faults::Exact,
        "more mapped than the EPC holds"
    );
    drop(a);
    assert_eq!(used(&dev), 0, "released");
    let b = section(&dev, 16);
    assert_eq!(dev.faults(), Faults::Fast);
    assert!(touch(&dev, &b, 0..16).iter().all(Result::is_ok));
    assert_eq!(used(&dev), 16);
}

/// docs/SEMANTICS.md §7.1 on the emulated device. Before 5.17 a page poisoned while
/// free is handed out, and no access through the device consumes its poison: the
/// VMM's accesses to EPC, and a guest's outside an enclave, get abort-page
/// semantics, not the page's data. From 5.17 the page is never handed out.
#[test]
fn a_poisoned_page_is_handed_out_before_5_17_and_no_access_signals_it() {
    for mode in [FaultMode::Auto, FaultMode::Userfaultfd, FaultMode::Eager] {
        let dev = emulated_on(8, mode, KernelVersion::new(5, 15));
        let bad = vepc::model::EpcPage(2);
        let paddr = dev.model().epc().page_addr(bad);
        let handled = dev.model().memory_failure(paddr, false).handled;
        assert_eq!(handled, Err(Errno::ENXIO), "5.15 cannot isolate it");
        let s = section(&dev, 8);
        assert!(touch(&dev, &s, 0..8).iter().all(Result::is_ok), "{mode:?}");
        // Reading the counts settles fast mode's touches first.
        assert_eq!(dev.stats().used, 8, "{mode:?}");
        let vepc = s.fd().model().expect("emulated").vepc().clone();
        assert!(
            vepc.pages().iter().any(|&(_, p)| p == bad),
            "{mode:?}: the bad page is in service"
        );
    }
    let dev = emulated_on(8, FaultMode::Auto, KernelVersion::DEFAULT);
    let paddr = dev.model().epc().page_addr(vepc::model::EpcPage(2));
    assert!(dev.model().memory_failure(paddr, false).handled.is_ok());
    let s = section(&dev, 8);
    let got = touch(&dev, &s, 0..8);
    assert_eq!(got, [vec![Ok(()); 7], vec![Err(Errno::EFAULT)]].concat());
    assert_eq!(dev.stats().poisoned, 1);
}

#[test]
fn userfaultfd_mode_asks_the_model_at_every_first_touch() {
    let dev = emulated(4, FaultMode::Userfaultfd);
    dev.prepare()
        .expect("userfaultfd on this machine (root in CI)");
    let s = section(&dev, 8);
    assert_eq!(dev.faults(), Faults::Exact);
    let got = touch(&dev, &s, 0..8);
    assert_eq!(got, [vec![Ok(()); 4], vec![Err(Errno::EFAULT); 4]].concat());
    // Exact: counted as it happened, with nothing to settle.
    assert_eq!(dev.model().stats().used, 4);
}

#[test]
fn eager_mode_takes_every_page_at_mmap() {
    let dev = emulated(4, FaultMode::Eager);
    let s = section(&dev, 6);
    assert_eq!(dev.model().stats().used, 4, "taken when mapped, untouched");
    assert_eq!(
        touch(&dev, &s, 0..6),
        [vec![Ok(()); 4], vec![Err(Errno::EFAULT); 2]].concat()
    );
}

/// docs/SEMANTICS.md §2 mmap, and `driver::surface`'s table: `__mm_populate` skips
/// `VM_IO | VM_PFNMAP` mappings, so `MAP_POPULATE` faults nothing in on vEPC.
#[test]
fn populate_faults_nothing_in() {
    for mode in [FaultMode::Auto, FaultMode::Userfaultfd] {
        let dev = emulated(8, mode);
        let d = VepcDevice::emulated_on(&dev);
        let opts = MapOptions {
            populate: true,
            noreserve: false,
        };
        let s = VepcSection::open(&d, 12 * PAGE, opts).expect("MAP_POPULATE does not fail mmap");
        assert_eq!(s.fd().pages(), Some((0, 0)), "{mode:?}");
        assert_eq!(used(&dev), 0, "{mode:?}");
        assert!(touch(&dev, &s, 0..8).iter().all(Result::is_ok));
        assert_eq!(used(&dev), 8, "{mode:?}: the touches take the pages");
    }
}

#[test]
fn release_frees_the_pages_when_the_fd_and_the_mapping_are_gone() {
    let dev = emulated(16, FaultMode::Auto);
    let released = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&released);
    dev.on_release(move |r| seen.lock().expect("lock").push((r.id, r.stats.used)));
    let s = section(&dev, 8);
    assert!(touch(&dev, &s, 0..5).iter().all(Result::is_ok));
    let id = s.fd().model().expect("emulated").vepc().id();
    drop(s);
    assert_eq!(*released.lock().expect("lock"), [(id, 0)]);
    assert_eq!(dev.stats().free, 16);
}

/// The VMM code is the host's: sections, the guest's enclaves (built on the model, as
/// the guest's ENCLS would), the reset protocol, the ENOTTY fallback.
#[test]
fn the_reset_protocol_runs_on_emulated_sections() {
    let dev = emulated(64, FaultMode::Auto);
    let mut guest = vec![section(&dev, 16), section(&dev, 16)];
    assert!(touch(&dev, &guest[0], 0..16).iter().all(Result::is_ok));
    assert!(touch(&dev, &guest[1], 0..16).iter().all(Result::is_ok));
    dev.settle();
    // SECS at page 0 of section 0, children in section 1: two rounds.
    let epc = dev.model().epc();
    let page = |s: &VepcSection, i| {
        s.fd()
            .model()
            .expect("emulated")
            .vepc()
            .page(i)
            .expect("touched")
    };
    let secs = page(&guest[0], 0);
    epc.ecreate(secs).expect("ecreate");
    epc.eadd(page(&guest[1], 0), secs, AddType::Tcs)
        .expect("eadd");
    epc.eadd(page(&guest[1], 1), secs, AddType::Reg)
        .expect("eadd");
    let report = reset(&mut guest, &ResetOptions::default(), None).expect("reset");
    assert_eq!(report.round(1, 2), [Some(Ok(1)), Some(Ok(0))]);
    assert_eq!(report.round(2, 2), [Some(Ok(0)), None]);
    assert_eq!(guest[0].fd().pages(), Some((16, 0)));
    assert_eq!(guest[1].fd().pages(), Some((16, 0)));
}

#[test]
fn before_5_16_the_reset_recreates_each_section_in_place() {
    let dev = emulated_on(64, FaultMode::Auto, KernelVersion::new(5, 15));
    let mut guest = vec![section(&dev, 8)];
    let addr = guest[0].region().addr();
    assert!(touch(&dev, &guest[0], 0..8).iter().all(Result::is_ok));
    assert_eq!(used(&dev), 8);
    let report = reset(&mut guest, &ResetOptions::default(), None).expect("reset");
    assert_eq!(report.recreated, Some(1));
    assert_eq!(
        guest[0].region().addr(),
        addr,
        "the guest's memory slot stays valid"
    );
    // The old instance is released, the new one holds nothing until touched, and its
    // pages are where the old ones were.
    assert_eq!(used(&dev), 0);
    assert!(touch(&dev, &guest[0], [3]).iter().all(Result::is_ok));
    assert_eq!(guest[0].fd().pages(), Some((1, 0)));
}

#[test]
fn concurrent_fast_touches_each_count_once() {
    let dev = emulated(512, FaultMode::Auto);
    let s = section(&dev, 256);
    std::thread::scope(|t| {
        for k in 0..4 {
            let (dev, s) = (&dev, &s);
            t.spawn(move || {
                for p in (k..256).step_by(4) {
                    let _ = dev.touch(s.region().addr() + p * PAGE);
                }
            });
        }
    });
    assert_eq!(s.fd().pages(), Some((256, 0)));
    assert_eq!(used(&dev), 256);
}

// ---- misuse, as a VMM developer might (issue 23) --------------------------------------

#[test]
fn a_model_backs_one_emulated_device() {
    let model = Device::new(
        Epc::new(&[16 * PAGE_SIZE]).expect("EPC"),
        KernelVersion::DEFAULT,
    );
    let first = Emulated::new(Arc::clone(&model), FaultMode::Auto).expect("the first");
    let second = Emulated::new(Arc::clone(&model), FaultMode::Auto);
    assert_eq!(second.err(), Some(vepc::device::VepcError::ModelTaken));
    drop(first);
    assert!(Emulated::new(model, FaultMode::Auto).is_ok(), "free again");
}

#[test]
fn remap_and_sections_check_whose_fd_and_region_they_are() {
    use vepc::device::VepcError;
    let (a, b) = (emulated(64, FaultMode::Auto), emulated(64, FaultMode::Auto));
    let (da, db) = (VepcDevice::emulated_on(&a), VepcDevice::emulated_on(&b));
    let s = section(&a, 4);
    let other = db.open().expect("open");
    let before = s.region().addr();
    let e = VepcSection::open(&da, 4 * PAGE, MapOptions::default())
        .expect("a section")
        .region()
        .maps(&other);
    assert!(!e);
    // recreate goes through remap with the section's own device: fine. Another
    // device's fd is refused, and nothing changes.
    let fd_b = db.open().expect("open");
    let mut region = fd_b.map(4 * PAGE, MapOptions::default()).expect("map");
    let fd_a = da.open().expect("open");
    let r = region.remap(&fd_a, MapOptions::default());
    assert!(
        matches!(r, Err(VepcError::InvalidArgument { op: "remap", .. })),
        "{r:?}"
    );
    assert!(region.maps(&fd_b));
    assert_eq!(s.region().addr(), before);
    // A section of another device's fd, or of a region of another fd.
    let fd = db.open().expect("open");
    let region = fd.map(PAGE, MapOptions::default()).expect("map");
    let r = VepcSection::new(da.clone(), fd, region, MapOptions::default());
    assert!(matches!(r, Err(VepcError::InvalidArgument { .. })), "{r:?}");
    let fd = da.open().expect("open");
    let foreign = da
        .open()
        .expect("open")
        .map(PAGE, MapOptions::default())
        .expect("map");
    let r = VepcSection::new(da.clone(), fd, foreign, MapOptions::default());
    assert!(matches!(r, Err(VepcError::InvalidArgument { .. })), "{r:?}");
    assert!(touch(&a, &s, [0]).iter().all(Result::is_ok));
    s.fd().remove_all().expect("still its own instance");
}

#[test]
fn an_fd_keeps_its_device_alive() {
    let fd = VepcDevice::emulated(&[1 << 20])
        .expect("device")
        .open()
        .expect("open");
    let region = fd.map(4 * PAGE, MapOptions::default()).expect("maps");
    assert_eq!(fd.remove_all(), Ok(0));
    drop(region);
}

/// The fd of an emulated instance cannot be mapped (or ioctl'd) behind the library's
/// back: it is an O_PATH descriptor, and every such call is EBADF at once.
#[test]
fn an_emulated_fd_cannot_be_used_behind_the_librarys_back() {
    use std::os::fd::AsFd;
    let dev = emulated(16, FaultMode::Auto);
    let fd = VepcDevice::emulated_on(&dev).open().expect("open");
    // SAFETY: a mapping request that the kernel refuses; nothing is mapped.
    let p = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            PAGE,
            rustix::mm::ProtFlags::READ,
            rustix::mm::MapFlags::SHARED,
            fd.as_fd(),
            0,
        )
    };
    assert_eq!(p.err(), Some(rustix::io::Errno::BADF));
    assert_eq!(
        rustix::io::read(fd.as_fd(), &mut [0u8; 8]).err(),
        Some(rustix::io::Errno::BADF)
    );
}

#[test]
fn offsets_up_to_ulong_max_as_a_character_device_has() {
    use vepc::driver::surface::mmap::MmapRequest;
    let dev = emulated(16, FaultMode::Auto);
    let file = dev.open(0).expect("open");
    // SAFETY: no fixed address: nothing is replaced.
    let high = unsafe { file.mmap(&MmapRequest::shared(PAGE as u64, 0x7fff_ffff_ffff_f000, 0)) }
        .expect("a character device's offsets reach ULONG_MAX");
    dev.touch(high).expect("a first touch there");
    assert_eq!(file.present_pages(), 1);
    // SAFETY: as above.
    let r = unsafe { file.mmap(&MmapRequest::shared(PAGE as u64, (-4096i64) as u64, 0)) };
    assert_eq!(r, Err(Errno::EOVERFLOW), "past ULONG_MAX");
    // SAFETY: the mapping made above.
    unsafe { dev.munmap(high, PAGE) }.expect("munmap");
}

#[test]
fn map_errors_say_what_is_wrong() {
    use vepc::device::VepcError;
    let dev = VepcDevice::emulated(&[1 << 20]).expect("device");
    let fd = dev.open().expect("open");
    let huge = fd
        .map(usize::MAX - 4095, MapOptions::default())
        .expect_err("no room");
    assert!(matches!(huge, VepcError::NoRoom { .. }), "{huge:?}");
    assert_eq!(huge.errno(), Errno::ENOMEM);
    // SAFETY: an unaligned fixed address: the kernel refuses before replacing anything.
    let unaligned =
        unsafe { fd.map_fixed(0x1000_0001, PAGE, MapOptions::default()) }.expect_err("unaligned");
    assert!(
        unaligned.to_string().contains("multiple of the page size"),
        "{unaligned}"
    );
    let zero = fd.map(0, MapOptions::default()).expect_err("zero");
    assert!(zero.to_string().contains("must not be 0"), "{zero}");
}

#[test]
fn a_report_of_no_instances_does_not_panic() {
    let report = vepc::reset::ResetReport {
        calls: vec![vepc::reset::Call {
            instance: 3,
            round: 1,
            answer: Ok(0),
            elapsed: std::time::Duration::ZERO,
        }],
        ..Default::default()
    };
    assert_eq!(report.round(1, 0), Vec::<Option<Result<u64, Errno>>>::new());
    assert_eq!(report.round(1, 2), [None, None]);
}

/// An enclave in `s` (SECS at page 0, a TCS at page 1) with a thread inside: every
/// REMOVE_ALL of `s` answers EBUSY until it leaves. The TCS, for its EEXIT.
fn thread_inside(dev: &Emulated, s: &VepcSection) -> vepc::model::EpcPage {
    assert!(touch(dev, s, 0..2).iter().all(Result::is_ok));
    let page = |i| {
        s.fd()
            .model()
            .expect("emulated")
            .vepc()
            .page(i)
            .expect("touched")
    };
    let (secs, tcs) = (page(0), page(1));
    let epc = dev.model().epc();
    epc.ecreate(secs).expect("ecreate");
    epc.eadd(tcs, secs, AddType::Tcs).expect("eadd");
    epc.einit(secs).expect("einit");
    epc.eenter(tcs).expect("eenter");
    tcs
}

/// A quiesce hook that resets the same device again: refused, not a deadlock.
#[test]
fn a_reset_nested_in_a_quiesce_hook_is_refused() {
    use vepc::reset::{QuiesceError, ResetError};
    let dev = emulated(64, FaultMode::Auto);
    let mut guest = vec![section(&dev, 4)];
    let mut other = vec![section(&dev, 4)];
    let tcs = thread_inside(&dev, &guest[0]);
    let model = dev.model();
    let mut nested = None;
    let mut hook = |_| -> Result<(), QuiesceError> {
        let r = reset(&mut other, &ResetOptions::default(), None);
        nested = r.err().map(|f| f.error);
        model
            .epc()
            .eexit(tcs)
            .map_err(|e| QuiesceError::new(e.to_string()))
    };
    reset(&mut guest, &ResetOptions::default(), Some(&mut hook)).expect("the outer reset");
    assert_eq!(nested, Some(ResetError::Nested));
}

/// Two VMs on two devices reset side by side: one's quiesce hook waits until the
/// other's reset is done, which a process-wide lock would never let happen.
#[test]
fn unrelated_devices_reset_side_by_side() {
    use std::sync::mpsc;
    use vepc::reset::QuiesceError;
    let (a, b) = (emulated(64, FaultMode::Auto), emulated(64, FaultMode::Auto));
    let mut ga = vec![section(&a, 4)];
    let mut gb = vec![section(&b, 4)];
    let tcs = thread_inside(&a, &ga[0]);
    let ma = a.model();
    let (done_tx, done_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel::<()>();
    std::thread::scope(|t| {
        t.spawn(move || {
            let _ = start_rx.recv();
            reset(&mut gb, &ResetOptions::default(), None).expect("reset b");
            let _ = done_tx.send(());
        });
        let mut hook = |_| -> Result<(), QuiesceError> {
            let _ = start_tx.send(());
            done_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .map_err(|_| QuiesceError::from("device b's reset waited for device a's"))?;
            ma.epc()
                .eexit(tcs)
                .map_err(|e| QuiesceError::new(e.to_string()))
        };
        reset(&mut ga, &ResetOptions::default(), Some(&mut hook)).expect("reset a");
    });
}
