//! One vEPC instance (`struct sgx_vepc`) and the two things that hold it: the open
//! file and its mappings. The instance is released when the last of them goes, as the
//! kernel's `release` runs when the file's last reference is dropped.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::page_map::PageMap;
use super::reclaim::{AllocError, Allocator};
use super::vfs::{Caller, Vfs, do_vfs_ioctl};
use super::{Device, WarnSite};
use crate::abi::{EnclsError, Errno, FaultError, PAGE_SIZE, SGX_IOC_VEPC_REMOVE_ALL, Signal};
use crate::model::{EpcPage, Sweep};
use crate::sync::Mutex;

/// How many freed pages release hands back to the pools at once.
const FREE_BATCH: usize = 4096;

/// Most indices `populate` takes under one hold of the reclaimer's lock, so that
/// another vCPU's faults come in between: about 340 ksgxd cycles.
const POPULATE_RUN: u64 = 1 << 14;

/// One instance of `/dev/sgx_vepc`: which EPC page backs which page index.
#[derive(Debug)]
pub struct Vepc {
    pub(super) id: u64,
    pub(super) device: Arc<Device>,
    pub(super) pages: PageMap,
    /// `vepc->lock`: serializes faults. REMOVE_ALL does not take it.
    fault_lock: Mutex<()>,
    /// The NUMA node (EPC section) whose CPUs fault this instance's pages in.
    node: usize,
}

impl Vepc {
    pub(super) fn new(id: u64, device: Arc<Device>, node: usize) -> Self {
        Self {
            id,
            device,
            pages: PageMap::default(),
            fault_lock: Mutex::new(()),
            node,
        }
    }

    /// The device the instance belongs to.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The NUMA node (EPC section) that serves its faults first.
    pub fn node(&self) -> usize {
        self.node
    }

    /// The instance's number, unique for its device.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The EPC page at `index`, if it has been faulted in.
    pub fn page(&self, index: u64) -> Option<EpcPage> {
        self.pages.get(index)
    }

    /// How many EPC pages the instance holds.
    pub fn present_pages(&self) -> u64 {
        self.pages.len()
    }

    /// How many of the instance's pages are valid in the EPCM (not uninitialized):
    /// zero after a complete guest-reboot reset.
    pub fn valid_pages(&self) -> u64 {
        let epc = self.device.epc();
        let mut n = 0;
        self.each_page(0..u64::MAX, |_, p| n += u64::from(epc.entry(p).valid()));
        n
    }

    /// Every `(index, page)` the instance holds, in index order.
    pub fn pages(&self) -> Vec<(u64, EpcPage)> {
        let mut v = Vec::with_capacity(self.pages.len() as usize);
        self.each_page(0..u64::MAX, |i, p| v.push((i, p)));
        v
    }

    /// Calls `f(index, page)` for every page the instance holds in `range`, in index
    /// order, a chunk of the map at a time.
    pub fn each_page(&self, range: std::ops::Range<u64>, mut f: impl FnMut(u64, EpcPage)) {
        self.pages.walk_from(range.start, |i, p| {
            if i >= range.end {
                return ControlFlow::Break(());
            }
            if i >= range.start {
                f(i, p);
            }
            ControlFlow::Continue(())
        });
    }

    /// Model memory the instance holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        size_of::<Self>() + self.pages.heap_bytes()
    }

    /// `sgx_vepc_fault`: back `index` with an EPC page unless it has one, from
    /// `sgx_alloc_epc_page(vepc, false)`: vEPC never reclaims for itself. No free page
    /// and nothing reclaimable: `ENOMEM`, the access gets `SIGBUS`. No free page but
    /// host enclave pages ksgxd can write back: `EBUSY`, and the fault is retried
    /// (`VM_FAULT_RETRY`) once ksgxd, woken by the allocation, has freed pages; if
    /// ksgxd was not woken (the poison lists count as free, see
    /// [`Device::nr_free_pages`]), the fault waits in the kernel until another EPC
    /// user frees or reclaims pages: [`FaultError::Hang`].
    pub fn fault(&self, index: u64) -> Result<EpcPage, FaultError> {
        if let Some(p) = self.pages.get(index) {
            return Ok(p);
        }
        let _guard = crate::sync::lock(&self.fault_lock);
        self.fault_locked(index, &mut self.device.allocator())
    }

    /// [`fault`](Self::fault) with `vepc->lock` held, allocating through `a`.
    fn fault_locked(&self, index: u64, a: &mut Allocator<'_>) -> Result<EpcPage, FaultError> {
        if let Some(p) = self.pages.get(index) {
            return Ok(p);
        }
        let p = self.alloc_for_fault(a)?;
        self.pages.insert(index, p);
        Ok(p)
    }

    /// The page a fault gets: `sgx_alloc_epc_page(vepc, false)` until it gives one.
    fn alloc_for_fault(&self, a: &mut Allocator<'_>) -> Result<EpcPage, FaultError> {
        loop {
            match a.alloc(self.node, false) {
                Ok(p) => return Ok(p),
                Err(AllocError::NoMemory) => return Err(Signal::Sigbus.into()),
                // VM_FAULT_RETRY: the access comes back once ksgxd, if the allocation
                // woke it, has written pages back; if it did not, nothing changes.
                Err(AllocError::Busy) => {
                    if !a.wait_for_ksgxd() {
                        return Err(FaultError::Hang);
                    }
                }
            }
        }
    }

    /// Faults in every index of `start..start + count` in order, as `MAP_POPULATE` or
    /// a guest touching each page would: the same pages as that many
    /// [`fault`](Self::fault) calls, taken from the pools in batches. Stops with
    /// `SIGBUS` at the first index no free EPC page is left for.
    ///
    /// With host enclave pages to reclaim, the faults are taken in runs: a run's
    /// pages are allocated under one hold of the reclaimer's lock, as many as leave
    /// at least `SGX_NR_LOW_PAGES` free in a batch that wakes nobody and the next one
    /// through [`fault`](Self::fault)'s path, ksgxd and all. So two threads that
    /// populate at once get the answers of some serial order of their faults.
    pub fn populate(&self, start: u64, count: u64) -> Result<(), FaultError> {
        let end = start.saturating_add(count);
        let mut at = start;
        while at < end {
            if !self.device.has_reclaimable() {
                let _guard = crate::sync::lock(&self.fault_lock);
                return self
                    .take_free(at, end - at)
                    .map_err(|_| FaultError::Signal(Signal::Sigbus));
            }
            at = self.populate_run(at, end)?;
        }
        Ok(())
    }

    /// Up to [`POPULATE_RUN`] indices of `at..end`: their pages are allocated under
    /// one hold of the reclaimer's lock, in the order faults one by one would take
    /// them, and given to the indices after it is let go, so that the other vCPUs'
    /// faults wait for the allocations only. Where it stopped.
    ///
    /// A REMOVE_ALL walking this instance meanwhile (it takes no `vepc->lock`) sees
    /// the indices given so far, as in the kernel it misses a fault that has its
    /// page from `sgx_alloc_epc_page` and has not yet stored it with `xa_store`; the
    /// window is a run long instead of one page.
    fn populate_run(&self, at: u64, end: u64) -> Result<u64, FaultError> {
        let _guard = crate::sync::lock(&self.fault_lock);
        let stop = end.min(at.saturating_add(POPULATE_RUN));
        let want = self.pages.empty_in(at, stop - at) as usize;
        let mut pages = Vec::with_capacity(want);
        let mut failed = None;
        let mut a = self.device.allocator();
        while pages.len() < want && a.has_reclaimable() {
            // So many faults wake nobody: their pages in one batch.
            let quiet = a.quiet_pages().min((want - pages.len()) as u64);
            let before = pages.len();
            if quiet > 0 {
                self.device
                    .epc()
                    .alloc_pages_near(self.node, quiet as usize, &mut pages);
            }
            // The next fault, ksgxd and all.
            if pages.len() == before {
                match self.alloc_for_fault(&mut a) {
                    Ok(p) => pages.push(p),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        drop(a);
        let mut given = pages.iter().copied();
        let stopped = match self.pages.fill(at, stop - at, || given.next()) {
            Ok(()) => stop,
            Err(empty) => empty,
        };
        failed.map_or(Ok(stopped), Err)
    }

    /// Gives the empty indices of `start..start + count` free pages, in order, in
    /// batches; `Err` with the first index left empty when the free pages run out.
    /// The caller holds `vepc->lock`.
    fn take_free(&self, start: u64, count: u64) -> Result<(), u64> {
        let epc = self.device.epc();
        let mut batch: Vec<EpcPage> = Vec::with_capacity(4096);
        let mut at = 0;
        let mut wanted = count;
        let filled = self.pages.fill(start, count, || {
            if at == batch.len() {
                batch.clear();
                at = 0;
                // No more than the range can use: pages taken and given back would
                // be missing for a moment to another thread's fault.
                let take = wanted.min(4096) as usize;
                epc.alloc_pages_near(self.node, take, &mut batch);
                wanted -= batch.len() as u64;
            }
            let p = batch.get(at).copied();
            at += 1;
            p
        });
        // Pages taken for the batch but not needed go back.
        epc.free_pages_batch(batch.get(at..).unwrap_or_default());
        filled
    }

    /// `sgx_vepc_remove_all`: EREMOVE every page in ascending index order. Counts the
    /// SECS pages that still have children; any other failure ends the walk with
    /// `EBUSY`, keeping what was done. Frees nothing and changes no mapping.
    pub fn remove_all(&self) -> Result<u64, Errno> {
        let mut sweep = Sweep::new(self.device.epc());
        let mut failures = 0u64;
        let stopped = self.pages.walk(|_, page| match sweep.eremove(page) {
            Ok(()) => ControlFlow::Continue(()),
            // The page is a SECS; user space will retry after the other instances.
            Err(EnclsError::CHILD_PRESENT) => {
                failures += 1;
                ControlFlow::Continue(())
            }
            // #GP from a concurrent EREMOVE, or SGX_ENCLAVE_ACT: user space can cause
            // both, so no warning. Only a #PF means a kernel or hardware bug.
            Err(e) => {
                if e.faulted() && e != EnclsError::GP {
                    self.device.warn_once(WarnSite::RemoveAllFault, || {
                        format!("EREMOVE of EPC page {} faulted: {e}", page.0)
                    });
                }
                ControlFlow::Break(())
            }
        });
        match stopped {
            Some(()) => Err(Errno::EBUSY),
            None => Ok(failures),
        }
    }

    /// `sgx_vepc_ioctl`: the driver's answer to a request the VFS handed on
    /// ([`super::vfs`]).
    pub fn ioctl(&self, request: u32, arg: u64) -> Result<u64, Errno> {
        match request {
            // Before 5.16 the driver has no ioctl at all: vfs_ioctl() says ENOTTY.
            _ if !self.device.kernel().has_remove_all() => Err(Errno::ENOTTY),
            SGX_IOC_VEPC_REMOVE_ALL if arg != 0 => Err(Errno::EINVAL),
            SGX_IOC_VEPC_REMOVE_ALL => self.remove_all(),
            _ => Err(Errno::ENOTTY),
        }
    }
}

impl Drop for Vepc {
    /// `sgx_vepc_release`. It never fails; an EREMOVE failure other than
    /// `SGX_CHILD_PRESENT` is a kernel warning (`WARN_ONCE` in `sgx_vepc_free_page`,
    /// in either pass and in the zombie walk), and the page is kept as a zombie.
    fn drop(&mut self) {
        let device = Arc::clone(&self.device);
        device.forget(self.id);
        let epc = device.epc();

        // Pass 1: every page EREMOVE accepts goes back to the free pool. SECS pages
        // fail here while their children are still to come in index order.
        // Freed pages are gathered as runs of pages in a row, which is how a guest's
        // pages mostly lie, and go back to the pools a bitmap word at a time, no
        // more than FREE_BATCH pages later than the kernel frees each.
        let mut freed: Vec<(EpcPage, u32)> = Vec::with_capacity(FREE_BATCH);
        let mut pending = 0;
        let mut sweep = Sweep::new(epc);
        self.pages.retain(|_, page| {
            let result = sweep.eremove(page);
            if let Err(e) = result {
                device.warn_free_page(page, e);
            }
            let removed = result.is_ok();
            if removed {
                match freed.last_mut() {
                    Some((first, len)) if first.0.checked_add(*len) == Some(page.0) => {
                        *len += 1;
                    }
                    _ => freed.push((page, 1)),
                }
                pending += 1;
                if pending == FREE_BATCH {
                    epc.free_page_runs(&freed);
                    freed.clear();
                    pending = 0;
                }
            }
            !removed
        });
        drop(sweep);
        epc.free_page_runs(&freed);

        // Pass 2: try the rest again (SECS pages whose children were all in this
        // instance go now); whatever still fails has children in another instance.
        let mut secs_pages = Vec::new();
        let mut sweep = Sweep::new(epc);
        self.pages.retain(|_, page| {
            match sweep.eremove(page) {
                Ok(()) => epc.free_page(page),
                Err(e) => {
                    device.warn_free_page(page, e);
                    secs_pages.push(page);
                }
            }
            false
        });
        drop(sweep);

        device.retry_zombies(secs_pages);
        device.dec_usage();
    }
}

/// How a mapping is shared (`MAP_SHARED` or `MAP_PRIVATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// `MAP_SHARED`: the only kind vEPC accepts.
    Shared,
    /// `MAP_PRIVATE`: refused with `EINVAL`.
    Private,
}

/// An open `/dev/sgx_vepc` file. Dropping it is `close()`.
#[derive(Debug, Clone)]
pub struct VepcFile {
    vepc: Arc<Vepc>,
}

impl VepcFile {
    pub(super) fn new(vepc: Arc<Vepc>) -> Self {
        Self { vepc }
    }

    /// The instance behind the file.
    pub fn vepc(&self) -> &Arc<Vepc> {
        &self.vepc
    }

    /// `mmap(NULL, len, …, flags, fd, pgoff * 4096)`. The syscall's own checks come
    /// first (`len` 0 → `EINVAL`, a length that overflows when page-aligned →
    /// `ENOMEM`, an offset range that wraps → `EOVERFLOW`); then `sgx_vepc_mmap`
    /// refuses anything but `MAP_SHARED` with `EINVAL`. Size and protection are not
    /// checked.
    pub fn mmap(&self, len: u64, sharing: Sharing, pgoff: u64) -> Result<Mapping, Errno> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let pages = len.checked_add(PAGE_SIZE - 1).ok_or(Errno::ENOMEM)? / PAGE_SIZE;
        if pgoff.checked_add(pages).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        if sharing != Sharing::Shared {
            return Err(Errno::EINVAL);
        }
        Ok(Mapping {
            vepc: Arc::clone(&self.vepc),
            pgoff,
            pages,
        })
    }

    /// `mmap(req)` of this file opened with `access`, in the address space `space`,
    /// every check Linux makes in its order ([`super::surface::mmap::mmap`]): the
    /// mapping, and where it went.
    pub fn mmap_in(
        &self,
        access: super::surface::Access,
        req: &super::surface::mmap::MmapRequest,
        space: &mut dyn super::surface::mmap::AddressSpace,
    ) -> Result<(Mapping, super::surface::mmap::Mmap), Errno> {
        let m = super::surface::mmap::mmap(access, req, space)?;
        Ok((self.mapping(m.pgoff, m.len / PAGE_SIZE), m))
    }

    /// A mapping of the instance's pages `pgoff..pgoff + pages`, whose checks were made.
    pub(crate) fn mapping(&self, pgoff: u64, pages: u64) -> Mapping {
        Mapping {
            vepc: Arc::clone(&self.vepc),
            pgoff,
            pages,
        }
    }

    /// `ioctl(fd, request, arg)` from `caller`: the VFS's answer
    /// ([`super::vfs::do_vfs_ioctl`]), or the driver's.
    pub fn ioctl_from(
        &self,
        caller: &mut dyn Caller,
        request: u32,
        arg: u64,
    ) -> Result<u64, Errno> {
        match do_vfs_ioctl(request, arg, caller) {
            Vfs::Answered(r) => r,
            Vfs::Driver => self.vepc.ioctl(request, arg),
        }
    }

    /// The driver's `sgx_vepc_ioctl(request, arg)`, for a request the VFS does not
    /// handle (REMOVE_ALL).
    pub fn ioctl(&self, request: u32, arg: u64) -> Result<u64, Errno> {
        self.vepc.ioctl(request, arg)
    }

    /// `ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL, 0)`: the count of SECS pages left.
    pub fn remove_all(&self) -> Result<u64, Errno> {
        self.ioctl(SGX_IOC_VEPC_REMOVE_ALL, 0)
    }
}

/// A `MAP_SHARED` mapping of an instance. Dropping it is `munmap()`.
#[derive(Debug, Clone)]
pub struct Mapping {
    vepc: Arc<Vepc>,
    pgoff: u64,
    pages: u64,
}

impl Mapping {
    /// The mapped instance.
    pub fn vepc(&self) -> &Arc<Vepc> {
        &self.vepc
    }

    /// Length in pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The page offset into the instance the mapping starts at.
    pub fn pgoff(&self) -> u64 {
        self.pgoff
    }

    /// An access to the mapping's `page`-th page that reads it: `SIGSEGV` outside
    /// the mapping, otherwise the fault of index `pgoff + page`, then the read, which
    /// gets `SIGBUS` (`SI_KERNEL`) if the page's memory is poisoned.
    pub fn touch(&self, page: u64) -> Result<EpcPage, FaultError> {
        let p = self.fault_in(page)?;
        self.vepc.device.consume(p)?;
        Ok(p)
    }

    /// The fault of the mapping's `page`-th page, without reading it (what an ENCLS
    /// leaf on the page needs: the model's leaves work on the EPCM and read no data).
    pub fn fault_in(&self, page: u64) -> Result<EpcPage, FaultError> {
        if page >= self.pages {
            return Err(Signal::Sigsegv.into());
        }
        self.vepc.fault(self.pgoff + page)
    }

    /// Faults in every page of the mapping, as `MAP_POPULATE` does.
    pub fn populate(&self) -> Result<(), FaultError> {
        self.vepc.populate(self.pgoff, self.pages)
    }

    /// The EPC page behind the mapping's `page`-th page, without faulting it in.
    pub fn backing(&self, page: u64) -> Option<EpcPage> {
        (page < self.pages)
            .then(|| self.vepc.page(self.pgoff + page))
            .flatten()
    }
}
