//! The EPC that vEPC shares with the host's own enclaves (`/dev/sgx_enclave`):
//! `sgx_alloc_epc_page`, through which every EPC user allocates, and the reclaimer,
//! which writes host enclaves' pages back to regular memory to make room
//! (arch/x86/kernel/cpu/sgx/main.c and encl.c, Linux 5.11 onward).
//!
//! Host enclave pages go on the active list when they are added; vEPC pages never
//! do: "vEPC pages are never swapped or reclaimed". So a vEPC fault that finds no
//! free page gets `EBUSY` while the active list is not empty and `ENOMEM` (SIGBUS)
//! once it is; an `EBUSY` fault is retried after ksgxd, woken below
//! `SGX_NR_LOW_PAGES`, has written pages back until `SGX_NR_HIGH_PAGES` are free.
//!
//! Two choices the source leaves to the model, both explicit:
//! - ksgxd runs beside the thread that woke it; the model serializes them, at one of
//!   the two ends of what the interleaving can give ([`Ksgxd`]): ksgxd done before the
//!   woken thread goes on (no fault ever waits), or ksgxd running only while a fault
//!   waits for it (every shortage costs a retry);
//! - host enclaves are idle once loaded, so `sgx_reclaimer_age` finds every page old
//!   at the first scan.

use std::collections::BTreeMap;

use super::Device;
use super::active::ActiveList;
use crate::abi::{EnclsError, Errno};
use crate::model::{AddType, Epc, EpcPage, Sweep};
use crate::sync::{MutexGuard, Ordering, lock};

/// `SGX_NR_TO_SCAN`: pages `sgx_reclaim_pages` takes off the active list at once.
pub const SGX_NR_TO_SCAN: usize = 16;
/// `SGX_NR_LOW_PAGES`: below this many free pages an allocation wakes ksgxd.
pub const SGX_NR_LOW_PAGES: u64 = 32;
/// `SGX_NR_HIGH_PAGES`: ksgxd writes pages back until this many are free.
pub const SGX_NR_HIGH_PAGES: u64 = 64;
/// The largest host enclave the model builds, in bytes (64 GiB): it adds and writes
/// back page by page (about 11 ms per GiB beyond the EPC on this project's machines)
/// and keeps 4 bytes for every page added, so a bound keeps every script,
/// `VEPC_INJECT` rule and `vepc bench` run within a second and 64 MiB. (Linux's own
/// bound is the CPU's `MaxEnclaveSize`, CPUID leaf 0x12.)
pub const MAX_HOST_ENCLAVE_BYTES: u64 = 64 << 30;

/// `SGX_VA_SLOT_COUNT`: pages one version-array page can hold the versions of.
pub const SGX_VA_SLOT_COUNT: u64 = 512;

/// When woken ksgxd gets the CPU, in the model's serialized world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ksgxd {
    /// At once: it has written pages back before the thread that woke it goes on.
    #[default]
    Eager,
    /// Only when a fault has found nothing free and spins on `VM_FAULT_RETRY`.
    Lazy,
}

/// A host enclave, named by the device that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostEnclaveId(pub u64);

/// What the reclaimer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReclaimStats {
    /// Pages written back to regular memory (EWB): host enclave children, and a
    /// SECS once its last child is out.
    pub written_back: u64,
    /// Times ksgxd was woken.
    pub ksgxd_wakeups: u64,
    /// vEPC faults that found no free page, answered `EBUSY`, and were retried.
    pub fault_retries: u64,
}

/// `sgx_reclaimer_lock` and what it guards, with the host enclaves' bookkeeping.
#[derive(Debug, Default)]
pub(super) struct Reclaimer {
    /// `sgx_active_page_list`: reclaimable pages by the order they were added.
    active: ActiveList,
    enclaves: BTreeMap<HostEnclaveId, HostEnclave>,
    /// Each resident host SECS and its enclave: the reclaimer finds a page's enclave
    /// from its EPCM entry, as the kernel does from `epc_page->owner`.
    by_secs: BTreeMap<EpcPage, HostEnclaveId>,
    next_id: u64,
    stats: ReclaimStats,
    ksgxd: Ksgxd,
    /// Woken, and not yet run ([`Ksgxd::Lazy`]).
    woken: bool,
    /// A scan's pages, what it freed, and the SECS pages of its children: kept
    /// between scans so that a ksgxd cycle allocates nothing.
    chunk: Vec<EpcPage>,
    freed: Vec<EpcPage>,
    owners: Vec<EpcPage>,
}

/// The EPC side of one `struct sgx_encl`.
#[derive(Debug, Default)]
struct HostEnclave {
    /// `encl->secs.epc_page`, while it is resident.
    secs: Option<EpcPage>,
    /// Child pages added (`SGX_IOC_ENCLAVE_ADD_PAGES`), in order. Which of them are
    /// still resident the EPCM says: those that are valid children of `secs`. (A
    /// written-back page is not loaded again: host enclaves in the model are idle.)
    added: Vec<EpcPage>,
    /// `encl->va_pages`: never reclaimed.
    va: Vec<EpcPage>,
    /// `encl->page_cnt`: pages added, the SECS included.
    page_cnt: u64,
    /// `SGX_ENCL_INITIALIZED`.
    initialized: bool,
}

impl HostEnclave {
    /// Children resident in the EPC: the SECS's own count (`EPCM` of a SECS counts
    /// its valid children), and none once the SECS itself is written back.
    fn resident_children(&self, epc: &Epc) -> u64 {
        self.secs.map_or(0, |s| u64::from(epc.entry(s).children()))
    }

    fn resident(&self, epc: &Epc) -> u64 {
        self.resident_children(epc) + self.va.len() as u64 + u64::from(self.secs.is_some())
    }

    /// The resident children, in page order. A page written back and given to the
    /// same enclave again is in `added` twice: once.
    fn children(&self, epc: &Epc) -> Vec<EpcPage> {
        let Some(secs) = self.secs else {
            return Vec::new();
        };
        let mut v: Vec<EpcPage> = self
            .added
            .iter()
            .copied()
            .filter(|&p| {
                let e = epc.entry(p);
                e.is_child() && e.owner() == secs
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Why `sgx_alloc_epc_page` gave no page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AllocError {
    /// `-ENOMEM`: nothing free and nothing reclaimable.
    NoMemory,
    /// `-EBUSY`: nothing free, but pages ksgxd could reclaim (and `reclaim` was false).
    Busy,
}

/// `sgx_reclaimer_lock`, taken at the first allocation that needs it and held until
/// dropped: a run of allocations under one hold is a run no other EPC user's
/// allocation or reclaim comes between, which is one of the orders the kernel's
/// concurrent CPUs can give. Batching faults this way keeps every answer and count
/// exact and saves a lock hand-off per ksgxd cycle.
pub(super) struct Allocator<'a> {
    device: &'a Device,
    r: Option<MutexGuard<'a, Reclaimer>>,
}

impl Allocator<'_> {
    fn reclaimer(&mut self) -> &mut Reclaimer {
        let device = self.device;
        self.r.get_or_insert_with(|| lock(&device.reclaim))
    }

    /// `sgx_alloc_epc_page(owner, reclaim)` for a caller on NUMA node `node`: a free
    /// page, else (with `reclaim`) pages reclaimed directly until one is free. Then
    /// ksgxd is woken if fewer than `SGX_NR_LOW_PAGES` are free.
    pub(super) fn alloc(&mut self, node: usize, reclaim: bool) -> Result<EpcPage, AllocError> {
        let d = self.device;
        // With nothing on the active list there is nothing to reclaim and nothing to
        // wake ksgxd for: the plain allocator, without the reclaimer's lock.
        if self.r.is_none() && !d.has_reclaimable() {
            return d.epc.alloc_page_near(node).ok_or(AllocError::NoMemory);
        }
        let r = self.reclaimer();
        let result = loop {
            if let Some(p) = d.epc.alloc_page_near(node) {
                break Ok(p);
            }
            if r.active.is_empty() {
                return Err(AllocError::NoMemory);
            }
            if !reclaim {
                break Err(AllocError::Busy);
            }
            d.reclaim_pages(r);
        };
        if d.should_reclaim(r, SGX_NR_LOW_PAGES) {
            d.wake_ksgxd(r);
        }
        result
    }

    /// A fault found nothing free (`EBUSY`) and spins: a woken ksgxd runs now. Whether
    /// a page is free for the retry.
    pub(super) fn wait_for_ksgxd(&mut self) -> bool {
        let d = self.device;
        let r = self.reclaimer();
        r.stats.fault_retries += 1;
        if r.woken {
            r.woken = false;
            d.run_ksgxd(r);
        }
        d.epc.free_pages() > 0
    }

    /// [`Device::quiet_pages`] with the lock held: no other allocation can come
    /// before these pages are taken.
    pub(super) fn quiet_pages(&mut self) -> u64 {
        self.reclaimer();
        self.device.quiet_pages()
    }

    /// Whether host enclave pages are on the active list.
    pub(super) fn has_reclaimable(&mut self) -> bool {
        !self.reclaimer().active.is_empty()
    }
}

impl Device {
    /// The allocator, with `sgx_reclaimer_lock` not yet taken.
    pub(super) fn allocator(&self) -> Allocator<'_> {
        Allocator {
            device: self,
            r: None,
        }
    }

    /// One allocation ([`Allocator::alloc`]).
    pub(super) fn alloc_epc_page(&self, node: usize, reclaim: bool) -> Result<EpcPage, AllocError> {
        self.allocator().alloc(node, reclaim)
    }

    /// `wake_up(&ksgxd_waitq)`.
    fn wake_ksgxd(&self, r: &mut Reclaimer) {
        match r.ksgxd {
            Ksgxd::Eager => self.ksgxd(r),
            Ksgxd::Lazy if !r.woken => {
                r.woken = true;
                r.stats.ksgxd_wakeups += 1;
            }
            Ksgxd::Lazy => {}
        }
    }

    /// When woken ksgxd gets the CPU (before any `open`: it is how the host runs).
    pub fn set_ksgxd(&self, when: Ksgxd) {
        lock(&self.reclaim).ksgxd = when;
    }

    /// `sgx_should_reclaim(watermark)`: it reads `sgx_nr_free_pages`, which counts
    /// most of the poison lists too ([`Device::nr_free_pages`]).
    fn should_reclaim(&self, r: &Reclaimer, watermark: u64) -> bool {
        self.nr_free_pages() < watermark && !r.active.is_empty()
    }

    /// ksgxd, woken: writes pages back while `sgx_should_reclaim(SGX_NR_HIGH_PAGES)`.
    fn ksgxd(&self, r: &mut Reclaimer) {
        r.stats.ksgxd_wakeups += 1;
        self.run_ksgxd(r);
    }

    fn run_ksgxd(&self, r: &mut Reclaimer) {
        while self.should_reclaim(r, SGX_NR_HIGH_PAGES) {
            self.reclaim_pages(r);
        }
    }

    /// `sgx_reclaim_pages`: the oldest `SGX_NR_TO_SCAN` active pages are written back
    /// and freed; an initialized enclave's SECS follows its last child out.
    fn reclaim_pages(&self, r: &mut Reclaimer) {
        let mut chunk = std::mem::take(&mut r.chunk);
        let mut freed = std::mem::take(&mut r.freed);
        let mut owners = std::mem::take(&mut r.owners);
        chunk.clear();
        freed.clear();
        owners.clear();
        r.active.take_oldest(SGX_NR_TO_SCAN, &mut chunk);
        // sgx_reclaimer_write, page after page: siblings under one hold of their SECS.
        let mut sweep = Sweep::new(&self.epc);
        for &page in &chunk {
            let entry = self.epc.entry(page);
            self.ewb(r, &mut sweep, page, &mut freed);
            if entry.is_child() && owners.last() != Some(&entry.owner()) {
                owners.push(entry.owner());
            }
        }
        sweep.finish();
        // An initialized enclave's SECS follows its last child out.
        for &secs in &owners {
            if self.epc.entry(secs).children() != 0 {
                continue;
            }
            let Some(&id) = r.by_secs.get(&secs) else {
                continue;
            };
            let go = r
                .enclaves
                .get_mut(&id)
                .is_some_and(|e| e.initialized && e.secs.take().is_some());
            if go {
                r.by_secs.remove(&secs);
                self.ewb(r, &mut sweep, secs, &mut freed);
            }
        }
        // Freed together, one pool lock for the chunk: nothing looks at the free
        // count until the chunk is done (ksgxd checks its watermark between chunks).
        self.epc.free_pages_batch(&freed);
        self.publish_reclaimable(r);
        (r.chunk, r.freed, r.owners) = (chunk, freed, owners);
    }

    /// EWB of `page`, which goes to `freed` when it worked.
    fn ewb(
        &self,
        r: &mut Reclaimer,
        sweep: &mut Sweep<'_>,
        page: EpcPage,
        freed: &mut Vec<EpcPage>,
    ) {
        // Before 6.16 a poisoned page in use stayed on the active list: EWB reads its
        // data, a machine check in ksgxd, in kernel mode.
        if self.epc.is_bad(page) {
            self.warn(format!(
                "EWB read poisoned EPC page {}: a machine check in kernel mode \
                 (6.16's sgx_unmark_page_reclaimable in arch_memory_failure prevents it)",
                page.0
            ));
        }
        match sweep.ewb(page) {
            Ok(()) => {
                r.stats.written_back += 1;
                freed.push(page);
            }
            Err(e) => self.warn(format!("EWB of EPC page {} failed: {e}", page.0)),
        }
    }

    /// Publishes the active list's length for [`has_reclaimable`](Self::has_reclaimable),
    /// which reads it without the lock; called under it after every change.
    fn publish_reclaimable(&self, r: &Reclaimer) {
        self.reclaimable
            .store(r.active.len() as u64, Ordering::Release);
    }

    /// Whether host enclave pages are on the active list: a vEPC fault may then have
    /// to wait for ksgxd.
    pub(super) fn has_reclaimable(&self) -> bool {
        self.reclaimable.load(Ordering::Acquire) != 0
    }

    /// How many pages vEPC faults can take now with nothing observable but the pages
    /// themselves: the free pages, and with host enclave pages on the active list only
    /// down to `SGX_NR_LOW_PAGES` (an allocation below it wakes ksgxd, whose work
    /// shows in [`reclaim_stats`](Self::reclaim_stats)). So many faults give the same
    /// answers and counts in any order, one by one or as one batch.
    pub fn quiet_pages(&self) -> u64 {
        let free = self.epc().free_pages();
        if !self.has_reclaimable() {
            return free;
        }
        free.min(self.nr_free_pages().saturating_sub(SGX_NR_LOW_PAGES))
    }

    /// What the reclaimer has done so far.
    pub fn reclaim_stats(&self) -> ReclaimStats {
        lock(&self.reclaim).stats
    }

    /// Pages host enclaves hold in the EPC now (SECS, children, VA pages).
    pub fn host_pages(&self) -> u64 {
        lock(&self.reclaim)
            .enclaves
            .values()
            .map(|e| e.resident(&self.epc))
            .sum()
    }

    /// Every EPC page host enclaves hold, and which enclave holds it.
    pub fn host_page_owners(&self) -> Vec<(EpcPage, HostEnclaveId)> {
        let r = lock(&self.reclaim);
        let mut v = Vec::new();
        for (&id, e) in &r.enclaves {
            let pages = e.secs.iter().copied().chain(e.children(&self.epc));
            v.extend(pages.chain(e.va.iter().copied()).map(|p| (p, id)));
        }
        v
    }

    /// Pages on the active list (reclaimable), oldest first.
    pub fn active_pages(&self) -> Vec<EpcPage> {
        lock(&self.reclaim).active.pages()
    }

    /// A host process builds an enclave of `pages` pages through `/dev/sgx_enclave`:
    /// `open` (an SGX user, Linux 6.19+), `SGX_IOC_ENCLAVE_CREATE` (a VA page, then the
    /// SECS), `SGX_IOC_ENCLAVE_ADD_PAGES` for every page (a VA page every
    /// `SGX_VA_SLOT_COUNT` pages; each added page goes on the active list), then
    /// `SGX_IOC_ENCLAVE_INIT`. Its allocations reclaim directly when nothing is free.
    ///
    /// `ENOMEM` when nothing is left to reclaim: the process gives the enclave up
    /// (its pages are freed). `EAGAIN`/`EIO` from the open's EUPDATESVN.
    pub fn host_enclave_create(&self, pages: u64) -> Result<HostEnclaveId, Errno> {
        self.inc_usage()?;
        let id = {
            let mut r = lock(&self.reclaim);
            let id = HostEnclaveId(r.next_id);
            r.next_id += 1;
            r.enclaves.insert(id, HostEnclave::default());
            id
        };
        match self.host_build(id, pages) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.host_enclave_release(id);
                Err(e)
            }
        }
    }

    fn host_build(&self, id: HostEnclaveId, pages: u64) -> Result<(), Errno> {
        // sgx_validate_secs: an enclave of no pages has no valid SECS size.
        if pages == 0 {
            return Err(Errno::EINVAL);
        }
        let no_memory = |_| Errno::ENOMEM;
        self.host_grow(id)?;
        let secs = self.alloc_epc_page(0, true).map_err(no_memory)?;
        self.host_leaf(self.epc.ecreate(secs), "ECREATE")?;
        {
            let mut r = lock(&self.reclaim);
            if let Some(e) = r.enclaves.get_mut(&id) {
                e.secs = Some(secs);
                r.by_secs.insert(secs, id);
            }
        }
        for _ in 0..pages {
            self.host_grow(id)?;
            let page = self.alloc_epc_page(0, true).map_err(no_memory)?;
            self.host_leaf(self.epc.eadd(page, secs, AddType::Reg), "EADD")?;
            // sgx_encl_add_page: the new page is reclaimable from now on.
            let mut r = lock(&self.reclaim);
            if let Some(e) = r.enclaves.get_mut(&id) {
                e.added.push(page);
            }
            r.active.push(page, self.epc.pages());
            self.publish_reclaimable(&r);
        }
        self.host_leaf(self.epc.einit(secs), "EINIT")?;
        self.with_enclave(id, |e| e.initialized = true);
        Ok(())
    }

    /// `sgx_encl_grow`: a new VA page every `SGX_VA_SLOT_COUNT` pages, the first
    /// before the SECS.
    fn host_grow(&self, id: HostEnclaveId) -> Result<(), Errno> {
        let needs_va = self
            .with_enclave(id, |e| {
                let needs = e.page_cnt.is_multiple_of(SGX_VA_SLOT_COUNT);
                e.page_cnt += 1;
                needs
            })
            .unwrap_or(false);
        if needs_va {
            let va = self.alloc_epc_page(0, true).map_err(|_| Errno::ENOMEM)?;
            self.host_leaf(self.epc.epa(va), "EPA")?;
            self.with_enclave(id, |e| e.va.push(va));
        }
        Ok(())
    }

    /// A host driver leaf that cannot fail on pages it just allocated: a failure is
    /// a model bug, reported as a kernel warning and `EIO`.
    fn host_leaf(&self, r: Result<(), EnclsError>, leaf: &str) -> Result<(), Errno> {
        r.map_err(|e| {
            self.warn(format!("{leaf} on a host enclave page failed: {e}"));
            Errno::EIO
        })
    }

    fn with_enclave<T>(
        &self,
        id: HostEnclaveId,
        f: impl FnOnce(&mut HostEnclave) -> T,
    ) -> Option<T> {
        lock(&self.reclaim).enclaves.get_mut(&id).map(f)
    }

    /// The host process closes the enclave (`sgx_encl_release`): every resident page
    /// leaves the active list, is EREMOVE'd and freed, then the VA pages and the SECS.
    /// Pages written back are dropped with the backing file. Unknown ids are ignored.
    pub fn host_enclave_release(&self, id: HostEnclaveId) {
        let mut r = lock(&self.reclaim);
        let Some(encl) = r.enclaves.remove(&id) else {
            return;
        };
        // In page order, as the tree the children once were gave them: which pages go
        // back to the pools first decides which the next allocations get.
        let children = encl.children(&self.epc);
        if let Some(secs) = encl.secs {
            r.by_secs.remove(&secs);
        }
        for page in children.iter().chain(&encl.va).chain(&encl.secs) {
            r.active.remove(*page);
            match self.epc.eremove(*page) {
                Ok(()) => self.epc.free_page(*page),
                Err(e) => self.warn(format!("EREMOVE of host EPC page {} failed: {e}", page.0)),
            }
        }
        self.publish_reclaimable(&r);
        drop(r);
        self.dec_usage();
    }

    /// `sgx_unmark_page_reclaimable`, for a page in use that `arch_memory_failure`
    /// poisoned: it is not written back any more. Whether it was on the list.
    pub(super) fn unmark_reclaimable(&self, page: EpcPage) -> bool {
        let mut r = lock(&self.reclaim);
        if !r.active.remove(page) {
            return false;
        }
        self.publish_reclaimable(&r);
        true
    }
}
