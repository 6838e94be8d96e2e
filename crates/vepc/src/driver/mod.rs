//! Linux's `/dev/sgx_vepc` driver (`arch/x86/kernel/cpu/sgx/virt.c`), on the model EPC,
//! with the parts of the SGX core (`main.c`) it shares the EPC through.
//!
//! - [`Device`]: the device node with the EPC behind it, the global zombie list and
//!   the kernel version it behaves like;
//! - [`Vepc`], [`VepcFile`], [`Mapping`]: an instance, its open file and its
//!   mappings; the instance is released when the last of them is dropped;
//! - [`Device::check`]: the consistency check any test can call;
//! - [`vfs`]: the ioctls the VFS answers before the driver sees them;
//! - `reclaim`: `sgx_alloc_epc_page`, host enclaves ([`Device::host_enclave_create`])
//!   and ksgxd, which writes their pages back when vEPC needs room;
//! - `active`: `sgx_active_page_list`, the host pages ksgxd can write back, oldest first;
//! - `memory_failure`: [`Device::memory_failure`], poisoned pages;
//! - `svn`: SGX users and EUPDATESVN at the first open ([`Device::svn`]).

mod active;
mod check;
mod memory_failure;
mod page_map;
mod reclaim;
pub mod surface;
mod svn;
mod vepc;
pub mod vfs;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

pub use check::Inconsistency;
pub use memory_failure::MemoryFailure;
pub use reclaim::{
    HostEnclaveId, Ksgxd, MAX_HOST_ENCLAVE_BYTES, ReclaimStats, SGX_NR_HIGH_PAGES,
    SGX_NR_LOW_PAGES, SGX_NR_TO_SCAN, SGX_VA_SLOT_COUNT,
};
pub use svn::{RDRAND_RETRY_LOOPS, Svn};
pub use vepc::{Mapping, Sharing, Vepc, VepcFile};

use crate::abi::{Errno, KernelFix, KernelVersion};
use crate::model::{Epc, EpcPage};
use crate::sync::{AtomicU64, Mutex, Ordering, PointMutex, lock, lock_point};

/// EPC usage, in pages. `free + used + zombie + poisoned + host` is always the EPC's
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Pages in the free pools.
    pub free: u64,
    /// Pages held by live vEPC instances.
    pub used: u64,
    /// Pages on the zombie list: SECS pages released while children lived elsewhere.
    pub zombie: u64,
    /// Pages on the poison lists: out of service for good (Linux 5.17+).
    pub poisoned: u64,
    /// Pages held by host enclaves (`/dev/sgx_enclave`).
    pub host: u64,
}

impl std::fmt::Display for Stats {
    /// `free=N used=N zombie=N`, then ` poisoned=N` and ` host=N` when not zero, so
    /// that a host without memory errors or host enclaves reads as it always has.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "free={} used={} zombie={}",
            self.free, self.used, self.zombie
        )?;
        if self.poisoned != 0 {
            write!(f, " poisoned={}", self.poisoned)?;
        }
        if self.host != 0 {
            write!(f, " host={}", self.host)?;
        }
        Ok(())
    }
}

/// The `/dev/sgx_vepc` device: the EPC, every live instance, and the zombie list.
///
/// Lock order, outermost first; a thread that holds one takes only locks below it:
/// 1. an instance's `fault_lock` (`vepc->lock`), one instance's at a time;
/// 2. `svn` (`sgx_svn_lock`), then `zombies` (`zombie_secs_pages_lock`), or else
///    `reclaim` (`sgx_reclaimer_lock`): never held together with the first two;
/// 3. leaf locks, held for their own work only: a section's free pool, `Epc::bad`,
///    an instance's page-map lock, `live`, `warnings`.
///
/// EPCM page locks are only ever tried (docs/model.md), so they take no place here.
/// The emulated device's own locks are all taken before any of these.
#[derive(Debug)]
pub struct Device {
    epc: Epc,
    kernel: KernelVersion,
    /// `zombie_secs_pages`, under `zombie_secs_pages_lock`.
    zombies: PointMutex<Vec<EpcPage>>,
    live: Mutex<BTreeMap<u64, Weak<Vepc>>>,
    next_id: AtomicU64,
    warnings: Mutex<Warnings>,
    /// Pages a memory error reached before ksgxd's boot sanitize pass: on the poison
    /// list, never counted in `sgx_nr_free_pages`.
    boot_poisoned: AtomicU64,
    /// The reclaimer and the host enclaves.
    reclaim: Mutex<reclaim::Reclaimer>,
    /// How many pages are on the active list, read without its lock.
    reclaimable: AtomicU64,
    /// SGX users and the security version.
    svn: PointMutex<svn::SvnState>,
    /// Whether an emulated device ([`crate::device::Emulated`]) serves this model.
    emulated: std::sync::atomic::AtomicBool,
}

impl Device {
    /// A device over `epc` that behaves like Linux `kernel`.
    pub fn new(epc: Epc, kernel: KernelVersion) -> Arc<Self> {
        Arc::new(Self {
            epc,
            kernel,
            zombies: PointMutex::new(Vec::new()),
            live: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            warnings: Mutex::new(Warnings::default()),
            boot_poisoned: AtomicU64::new(0),
            reclaim: Mutex::new(reclaim::Reclaimer::default()),
            reclaimable: AtomicU64::new(0),
            svn: PointMutex::new(svn::SvnState::default()),
            emulated: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Marks the model as served by an emulated device; `false` if one already is.
    pub(crate) fn claim_emulation(&self) -> bool {
        !self
            .emulated
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// The emulated device serving the model is gone.
    pub(crate) fn release_emulation(&self) {
        self.emulated
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The EPC behind the device.
    pub fn epc(&self) -> &Epc {
        &self.epc
    }

    /// The kernel version the device behaves like.
    pub fn kernel(&self) -> KernelVersion {
        self.kernel
    }

    /// `open("/dev/sgx_vepc", O_RDWR)`: a new, empty instance. No EPC is taken.
    /// `ENOENT` on kernels before 5.13, which have no such device.
    ///
    /// # Examples
    ///
    /// ```
    /// use vepc::abi::{Errno, KernelVersion};
    /// use vepc::driver::{Device, Sharing};
    /// use vepc::model::Epc;
    ///
    /// let device = Device::new(Epc::new(&[4 * 4096])?, KernelVersion::DEFAULT);
    /// let file = device.open()?;
    /// assert_eq!(device.stats().used, 0, "open takes no EPC");
    /// let map = file.mmap(8 * 4096, Sharing::Shared, 0)?;
    /// map.touch(0)?; // the first touch takes a page
    /// assert_eq!(device.stats().used, 1);
    /// assert_eq!(file.mmap(4096, Sharing::Private, 0).err(), Some(Errno::EINVAL));
    ///
    /// let old = Device::new(Epc::new(&[4096])?, KernelVersion::new(5, 12));
    /// assert_eq!(old.open().err(), Some(Errno::ENOENT));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(self: &Arc<Self>) -> Result<VepcFile, Errno> {
        self.open_on_node(0)
    }

    /// [`open`](Self::open) for an instance whose pages are faulted in by CPUs of NUMA
    /// node `node` (a VMM pinning the vCPUs of a guest section there, as QEMU's
    /// `sgx-epc.N.node` asks): its faults take EPC from section `node` first, then
    /// from the others, as `sgx_alloc_epc_page` does for the faulting CPU's node.
    ///
    /// Since 6.19 an open counts an SGX user; the first user runs EUPDATESVN, which
    /// can fail the open with `EAGAIN` (no entropy: retry) or `EIO` (the EPC was not
    /// empty).
    pub fn open_on_node(self: &Arc<Self>, node: usize) -> Result<VepcFile, Errno> {
        if !self.kernel.has_vepc() {
            return Err(Errno::ENOENT);
        }
        self.inc_usage()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let vepc = Arc::new(Vepc::new(id, Arc::clone(self), node));
        lock(&self.live).insert(id, Arc::downgrade(&vepc));
        Ok(VepcFile::new(vepc))
    }

    /// EPC usage now.
    pub fn stats(&self) -> Stats {
        let free = self.epc.free_pages();
        let zombie = lock_point(&self.zombies).len() as u64;
        let poisoned = self.epc.poison_list_pages();
        let host = self.host_pages();
        Stats {
            free,
            used: u64::from(self.epc.pages()).saturating_sub(free + zombie + poisoned + host),
            zombie,
            poisoned,
            host,
        }
    }

    /// The zombie list, oldest first.
    pub fn zombies(&self) -> Vec<EpcPage> {
        lock_point(&self.zombies).clone()
    }

    /// Kernel warnings the model has printed, as dmesg would show them: each is a
    /// kernel bug, or a situation the kernel considers one (a thread inside an
    /// enclave at release). The kernel's `WARN_ONCE` sites print once per boot
    /// ([`WarnSite`]); a later hit of the same site prints nothing.
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).printed.clone()
    }

    /// How many times each `WARN_ONCE` site's condition held, printed or not.
    pub fn warning_hits(&self, site: WarnSite) -> u64 {
        lock(&self.warnings).hits[site as usize]
    }

    /// The kernel's `sgx_nr_free_pages`, which the reclaimer's watermarks read.
    /// `sgx_free_epc_page` adds one for every page it frees, a poisoned one put on
    /// the poison list included, and `arch_memory_failure` takes none off for a
    /// free page it moves there; only a page ksgxd's boot sanitize pass found
    /// poisoned goes to the poison list uncounted (`__sgx_sanitize_pages`, a
    /// `list_move`). So on 6.18 it is the free pages plus the poison lists minus
    /// those. With [`KernelFix::PoisonCount`] it is the free pages alone.
    pub fn nr_free_pages(&self) -> u64 {
        let free = self.epc.free_pages();
        if self.kernel.has(KernelFix::PoisonCount) {
            return free;
        }
        let uncounted = self.boot_poisoned.load(Ordering::Relaxed);
        free + self.epc.poison_list_pages().saturating_sub(uncounted)
    }

    /// Instances not yet released.
    pub fn live_instances(&self) -> Vec<Arc<Vepc>> {
        lock(&self.live)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Model memory, in bytes: EPC, EPCM, free bitmaps, zombie list and every live
    /// instance's page map.
    pub fn heap_bytes(&self) -> usize {
        self.epc.heap_bytes()
            + lock_point(&self.zombies).capacity() * size_of::<EpcPage>()
            + self
                .live_instances()
                .iter()
                .map(|v| v.heap_bytes())
                .sum::<usize>()
    }

    /// Whether the instance numbered `id` is not yet released.
    pub fn is_live(&self, id: u64) -> bool {
        lock(&self.live).contains_key(&id)
    }

    /// A warning the model prints every time: a model bug, or a kernel `WARN` that
    /// is not `_ONCE`.
    pub(crate) fn warn(&self, msg: String) {
        lock(&self.warnings).printed.push(msg);
    }

    /// A `WARN_ONCE` at `site`: printed the first time this boot, counted always.
    pub(crate) fn warn_once(&self, site: WarnSite, msg: impl FnOnce() -> String) {
        let mut w = lock(&self.warnings);
        w.hits[site as usize] += 1;
        if w.hits[site as usize] == 1 {
            w.printed.push(msg());
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.live).remove(&id);
    }

    /// The end of release: under the zombie lock, try every zombie once more (a child
    /// just removed may have been the last one pinning it), then put what still fails,
    /// the new SECS pages first, onto the list.
    ///
    /// With [`KernelFix::ZombieRetry`], the release's own SECS pages go onto the list
    /// first and the list is walked until a walk frees nothing: a release running at
    /// the same time either ran its walk before (and this walk sees its children
    /// gone) or runs it after (and sees these SECS pages listed).
    fn retry_zombies(&self, mut secs_pages: Vec<EpcPage>) {
        let mut zombies = lock_point(&self.zombies);
        if self.kernel.has(KernelFix::ZombieRetry) {
            zombies.append(&mut secs_pages);
            while self.walk_zombies(&mut zombies) {}
            return;
        }
        for page in zombies.drain(..) {
            if self.free_zombie(page) {
                continue;
            }
            secs_pages.push(page);
        }
        zombies.append(&mut secs_pages);
    }

    /// One walk of the zombie list, in order; whether it freed any page.
    fn walk_zombies(&self, zombies: &mut Vec<EpcPage>) -> bool {
        let before = zombies.len();
        let list = std::mem::take(zombies);
        for page in list {
            if !self.free_zombie(page) {
                zombies.push(page);
            }
        }
        zombies.len() != before
    }

    /// `sgx_vepc_free_page` on a zombie: whether EREMOVE took it.
    fn free_zombie(&self, page: EpcPage) -> bool {
        match self.epc.eremove(page) {
            Ok(()) => {
                self.epc.free_page(page);
                true
            }
            Err(e) => {
                self.warn_free_page(page, e);
                false
            }
        }
    }

    /// `sgx_vepc_free_page`'s `WARN_ONCE(ret != SGX_CHILD_PRESENT)`: one site for the
    /// release's two passes and its zombie walk.
    pub(super) fn warn_free_page(&self, page: EpcPage, e: crate::abi::EnclsError) {
        if e != crate::abi::EnclsError::CHILD_PRESENT {
            self.warn_once(WarnSite::VepcFreePage, || {
                format!("EREMOVE of EPC page {} in release: {e}", page.0)
            });
        }
    }

    /// With [`KernelFix::ZombieDrain`], at the first SGX user (no vEPC open, no host
    /// enclave): the zombie list walked until a walk frees nothing, so that no
    /// zombie left by an earlier release makes EUPDATESVN fail.
    pub(super) fn drain_zombies(&self) {
        if self.kernel.has(KernelFix::ZombieDrain) {
            let mut zombies = lock_point(&self.zombies);
            while self.walk_zombies(&mut zombies) {}
        }
    }

    /// Counts a page that a memory error reached before the boot sanitize pass.
    pub(super) fn count_boot_poisoned(&self) {
        self.boot_poisoned.fetch_add(1, Ordering::Relaxed);
    }
}

/// A kernel `WARN_ONCE` site: it prints at its first hit in a boot only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WarnSite {
    /// `sgx_vepc_free_page`: EREMOVE failed with anything but `SGX_CHILD_PRESENT`
    /// (release's pass 1, pass 2 and zombie walk).
    VepcFreePage,
    /// `sgx_vepc_remove_all`'s `WARN_ON_ONCE`: EREMOVE took a fault other than #GP.
    RemoveAllFault,
    /// `sgx_update_svn`'s `ENCLS_WARN(ret, "EUPDATESVN")`.
    Eupdatesvn,
}

/// What the kernel has printed, and each `WARN_ONCE` site's hits.
#[derive(Debug, Default)]
struct Warnings {
    printed: Vec<String>,
    hits: [u64; 3],
}
