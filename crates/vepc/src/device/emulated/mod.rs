//! The model as `/dev/sgx_vepc`, in-process, with real memory: what a Rust VMM maps
//! into its guest when there is no SGX, and what the `LD_PRELOAD` shim gives programs.
//!
//! Each open is an instance of the model's driver ([`crate::driver`]) and memfds
//! holding its pages; a mapping is a `MAP_SHARED` mapping of them, handed out as an
//! address and a length like the host device's, and made, checked and flagged as
//! `sgx_vepc_mmap` makes it ([`crate::driver::surface`]). A page's first touch (by the
//! VMM, or by a guest through KVM) is the driver's fault: the index gets an EPC page,
//! or, when the EPC is exhausted, the toucher gets `SIGBUS` (`BUS_ADRERR`) at that
//! address, which KVM turns into `EFAULT` from `KVM_RUN`, as with `VM_FAULT_SIGBUS`.
//!
//! # What real memory cannot give
//!
//! On SGX hardware an access to EPC from outside an enclave (the VMM's own, a guest's
//! outside its enclaves) has abort-page semantics: reads return all ones and writes
//! are dropped (Intel SDM Vol. 3D §38.5.1). The memory here is ordinary: it reads what
//! was written. Nothing the reset protocol or the driver decides depends on it.
//!
//! # First touches without a round trip
//!
//! While every mapped page that has no EPC page yet could still get one, no first
//! touch can fail, so none needs to be asked about: the device is *fast*, and a touch
//! is an ordinary page fault of the memfd. The model learns of those touches later,
//! from the memfd itself (`SEEK_DATA`: a page that was touched has data), before
//! anything observes it: REMOVE_ALL, the counts, a new mapping, an unmap, a release.
//! That is exact, because EPC taken at first touch and EPC taken at the next
//! observation are indistinguishable while nothing could run out.
//!
//! The moment a new mapping (or another user of the model, such as a guest script)
//! could take a page that a mapped page would need, the device turns *exact*: every
//! mapping is registered with userfaultfd, the touches so far are settled, and from
//! then on each first touch is decided by the model as it happens (a zero page, or a
//! `SIGBUS`). Where userfaultfd is refused the device turns *eager* instead: every
//! mapped page is faulted in on the model at once, and the pages past the EPC's end
//! answer `SIGBUS` from then on.
//!
//! # Windows: exact, and fast where it can be
//!
//! Exact is not one round trip per page, though. When a first touch reaches the
//! fault thread and the model could give K more pages with nothing observable but
//! the pages themselves (K ≤ [`Device::quiet_pages`]: free pages, and none below
//! `SGX_NR_LOW_PAGES` while host enclave pages could be reclaimed), the thread takes
//! a *window* of up to K pages from the touch onwards out of userfaultfd instead of
//! answering the one page. The toucher, woken by the unregistration, and every touch
//! in the window after it are ordinary page faults, counted at the next observation
//! as in fast mode. The window's K pages stay reserved: the next window only gets
//! what is quiet beyond every open window. When what is left is too little for a
//! window, and before anything changes the mappings or hands the model to another
//! user, the windows are registered again and their touches counted; from there on
//! each touch is the model's decision, SIGBUS included. Every answer is then one that
//! Linux gives for some order of the same touches: the windows' touches could not
//! fail, took no page another touch needed, and woke nobody. Windows double in size
//! while a toucher keeps needing new ones, so a range is crossed with a few dozen
//! round trips (`tests/emulated.rs` holds them to the one-page-at-a-time answers).
//!
//! # Locks
//!
//! One lock of its own, `Emulated::state` (the table of mapped ranges and how first
//! touches are served), taken before any of the model's ([`crate::model`]'s pools,
//! then [`crate::driver`]'s instance and device locks), never after. It is held
//! across every system call that makes, moves or removes a tracked mapping, and
//! across the fault thread's answer, so the table and the address space never
//! disagree: a range the table names is the mapping it says. No lock is held while an
//! instance is released: whatever a call removes from the table is dropped after the
//! lock (the release hook reads the counts, which takes it again).

mod backing;
mod faults;
mod file;
mod regions;
mod space;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

pub use file::EmulatedFile;
pub use space::note_mlockall_future;

use crate::abi::{Errno, KernelVersion, PAGE_SIZE};
use crate::device::VepcError;
use crate::driver::surface::Access;
use crate::driver::surface::vma::{Remap, mremap as mremap_rule};
use crate::driver::{Device, Mapping, ReclaimStats, Stats};
use crate::sync::{Mutex, lock};
use crate::sys::mm;
use crate::sys::uffd::Userfaultfd;
use regions::{Region, Regions};

const PAGE: usize = PAGE_SIZE as usize;

/// How first touches reach the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultMode {
    /// Fast while no touch could fail, then exact through userfaultfd, or eager where
    /// userfaultfd is refused (the module's documentation says how).
    #[default]
    Auto,
    /// Every first touch through userfaultfd, from the first mapping on; a mapping
    /// fails with `ENODEV` where userfaultfd is refused.
    Userfaultfd,
    /// Every page of a mapping is faulted in on the model when it is mapped; the pages
    /// the EPC has no room for answer `SIGBUS` from the start.
    Eager,
}

/// How first touches reach the model right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// Ordinary page faults of the memfd, counted at the next observation.
    Fast,
    /// Each one decided by the model through userfaultfd.
    Exact,
    /// Decided for every page when it was mapped.
    Eager,
    /// userfaultfd was required and refused: mappings fail with `ENODEV`.
    Refused,
}

/// A released instance, as [`Emulated::on_release`] reports it.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    /// The model instance's number ([`crate::driver::Vepc::id`]).
    pub id: u64,
    /// EPC usage after the release.
    pub stats: Stats,
}

type ReleaseHook = Box<dyn Fn(Released) + Send + Sync>;
type LostHook = Box<dyn Fn(&str) + Send + Sync>;

/// The emulated `/dev/sgx_vepc`: the model's device, and the memory behind its
/// instances.
///
/// # Examples
///
/// An EPC of 8 pages and a mapping of 12: the ninth first touch has no EPC page.
///
/// ```
/// use vepc::abi::{Errno, KernelVersion};
/// use vepc::device::{Emulated, FaultMode, Faults, MapOptions, VepcDevice};
/// use vepc::driver::Device;
/// use vepc::model::Epc;
///
/// let model = Device::new(Epc::new(&[8 * 4096])?, KernelVersion::DEFAULT);
/// let emulated = Emulated::new(model, FaultMode::Auto)?;
/// let fd = VepcDevice::emulated_on(&emulated).open()?;
/// let region = fd.map(12 * 4096, MapOptions::default())?;
/// assert_eq!(emulated.faults(), Faults::Exact, "a first touch could fail: asked one by one");
/// for page in 0..8 {
///     emulated.touch(region.addr() + page * 4096)?;
/// }
/// // A guest would get SIGBUS here; touch() says EFAULT instead.
/// assert_eq!(emulated.touch(region.addr() + 8 * 4096), Err(Errno::EFAULT));
/// assert_eq!(emulated.stats().free, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Emulated {
    me: Weak<Emulated>,
    model: Arc<Device>,
    mode: FaultMode,
    state: Mutex<State>,
    uffd: OnceLock<Result<Arc<Userfaultfd>, String>>,
    on_release: OnceLock<ReleaseHook>,
    on_lost: OnceLock<LostHook>,
    lost: OnceLock<String>,
    /// Whether any range is tracked; written under `state`'s lock.
    mapped_any: AtomicBool,
    next_token: AtomicU64,
    reset_lock: Arc<crate::reset::ResetLock>,
    /// Windows opened so far ([`Emulated::windows_opened`]).
    windows_opened: AtomicU64,
}

impl std::fmt::Debug for Emulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulated")
            .field("mode", &self.mode)
            .field("faults", &self.faults())
            .field("lost", &self.lost.get())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    regions: Regions<Piece>,
    faults: Faults,
    windows: Windows,
}

/// The smallest window worth its two system calls; with fewer quiet pages the touch
/// is answered on its own.
const WINDOW_MIN: usize = 16;
/// The largest window: 256 MiB.
const WINDOW_MAX: usize = 1 << 16;

/// Ranges of exactly served mappings taken out of userfaultfd (the module's
/// documentation says when and why).
#[derive(Debug)]
struct Windows {
    /// `(start, len)` of each open window, in bytes.
    open: Vec<(usize, usize)>,
    /// Pages reserved for the open windows: their sizes, touched or not.
    reserved: u64,
    /// Pages the next window asks for.
    next: usize,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            open: Vec::new(),
            reserved: 0,
            next: WINDOW_MIN,
        }
    }
}

impl Windows {
    fn contains(&self, addr: usize) -> bool {
        self.open
            .iter()
            .any(|&(start, len)| start <= addr && addr - start < len)
    }
}

/// What one tracked range maps: an instance, and the model's mapping of it (which
/// keeps the instance alive, as a VMA keeps its file).
#[derive(Debug, Clone)]
struct Piece {
    /// Before `file`: fields drop in order, and the file's last reference going must
    /// find the model's mapping gone, to see the release it causes.
    _map: Mapping,
    file: Arc<EmulatedFile>,
}

impl Emulated {
    /// An emulated device over the model `model`, its first touches served as `mode`
    /// says. A model backs one emulated device: a second would count on the same free
    /// EPC ([`VepcError::ModelTaken`]).
    pub fn new(model: Arc<Device>, mode: FaultMode) -> Result<Arc<Self>, VepcError> {
        if !model.claim_emulation() {
            return Err(VepcError::ModelTaken);
        }
        let faults = match mode {
            FaultMode::Auto => Faults::Fast,
            FaultMode::Userfaultfd => Faults::Exact,
            FaultMode::Eager => Faults::Eager,
        };
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            model,
            mode,
            state: Mutex::new(State {
                regions: Regions::default(),
                faults,
                windows: Windows::default(),
            }),
            uffd: OnceLock::new(),
            on_release: OnceLock::new(),
            on_lost: OnceLock::new(),
            lost: OnceLock::new(),
            mapped_any: AtomicBool::new(false),
            next_token: AtomicU64::new(1),
            reset_lock: crate::reset::ResetLock::new(),
            windows_opened: AtomicU64::new(0),
        }))
    }

    /// The model behind the device, to run a guest's ENCLS leaves or anything else
    /// that takes EPC pages: the device turns exact first ([`go_exact`](Self::go_exact)),
    /// so that nothing taken here is a page a mapped page was counting on. To read
    /// the counts, [`stats`](Self::stats) is enough.
    pub fn model(&self) -> &Arc<Device> {
        self.go_exact();
        &self.model
    }

    /// The lock that serializes resets of this device's instances.
    pub fn reset_lock(&self) -> &Arc<crate::reset::ResetLock> {
        &self.reset_lock
    }

    /// The kernel version the device behaves like.
    pub fn kernel(&self) -> KernelVersion {
        self.model.kernel()
    }

    /// What the reclaimer has done so far.
    pub fn reclaim_stats(&self) -> ReclaimStats {
        self.model.reclaim_stats()
    }

    /// How first touches reach the model now.
    pub fn faults(&self) -> Faults {
        lock(&self.state).faults
    }

    /// Calls `hook` after each instance's release (the model's `sgx_vepc_release`),
    /// with no lock of the device held. Only the first hook set is kept.
    pub fn on_release(&self, hook: impl Fn(Released) + Send + Sync + 'static) {
        let _ = self.on_release.set(Box::new(hook));
    }

    /// Calls `hook` once, with the reason, if a descriptor of the device is found
    /// closed or replaced behind its back (a program's raw `close` or `dup2`): from
    /// then on first touches could escape the model, so the device refuses every
    /// mapping and ioctl with `EIO` ([`lost`](Self::lost)). Only the first hook set is
    /// kept.
    pub fn on_lost(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.on_lost.set(Box::new(hook));
    }

    /// Why the device stopped working, if it did ([`on_lost`](Self::on_lost)).
    pub fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    pub(crate) fn lose(&self, why: String) {
        if self.lost.set(why.clone()).is_ok() {
            self.model.warn(format!("emulated device: {why}"));
            if let Some(hook) = self.on_lost.get() {
                hook(&why);
            }
        }
    }

    /// `EIO` once the device has lost track of a descriptor; checks the
    /// userfaultfd's first (the memfds are checked where they are used).
    fn check_lost(&self) -> Result<(), Errno> {
        if let Some(Ok(u)) = self.uffd.get()
            && !u.still_ours()
        {
            self.lose(format!(
                "the device's userfaultfd (descriptor {}) was closed or replaced behind \
                 its back: first touches can no longer reach the model",
                u.raw()
            ));
        }
        match self.lost.get() {
            Some(_) => Err(Errno::EIO),
            None => Ok(()),
        }
    }

    /// `open("/dev/sgx_vepc", O_RDWR)`: a new instance whose faults prefer EPC section
    /// `node` ([`Device::open_on_node`]). `ENOENT` on kernels before 5.13; from 6.19,
    /// EUPDATESVN's `EAGAIN` and `EIO`.
    pub fn open(&self, node: usize) -> Result<Arc<EmulatedFile>, Errno> {
        self.open_as(node, Access::READ_WRITE)
    }

    /// [`open`](Self::open) with another access mode (`O_RDONLY`, `O_WRONLY`, or 3),
    /// which decides what [`EmulatedFile::mmap`] allows, as `f_mode` does.
    pub fn open_as(&self, node: usize, access: Access) -> Result<Arc<EmulatedFile>, Errno> {
        let device = self.me.upgrade().ok_or(Errno::ENODEV)?;
        let model = self.model.open_on_node(node)?;
        Ok(EmulatedFile::new(model, access, device))
    }

    /// EPC usage, with every touch so far counted.
    pub fn stats(&self) -> Stats {
        self.settle();
        self.model.stats()
    }

    /// Counts in the model every page touched while the device was fast.
    pub fn settle(&self) {
        let lost = {
            let state = lock(&self.state);
            settle_mapped(&state).err()
        };
        if let Some(l) = lost {
            self.lose(l.0);
        }
    }

    /// Turns the device exact (or eager) now, if it is fast: for handing the model to
    /// something else that takes EPC pages (a guest script's touches), which must not
    /// take a page a mapped page was counting on.
    pub fn go_exact(&self) {
        let lost = {
            let mut state = lock(&self.state);
            if state.faults == Faults::Fast {
                self.leave_fast(&mut state).err()
            } else {
                self.close_windows(&mut state).err()
            }
        };
        if let Some(l) = lost {
            self.lose(l.0);
        }
    }

    /// Decides how a new range's first touches are served. Called with the range in
    /// the table.
    fn place(&self, state: &mut State, r: &Region<Piece>) -> Result<(), backing::Lost> {
        match state.faults {
            Faults::Fast => {
                // Every mapped page without an EPC page must still be able to get one.
                let owed: u64 = state
                    .regions
                    .iter()
                    .map(|r| r.what.file.missing(r.pgoff, (r.end - r.start) / PAGE))
                    .sum();
                if owed > self.model.epc().free_pages() {
                    self.leave_fast(state)?;
                }
            }
            Faults::Exact => {
                // userfaultfd mode may not have been prepared: open it now, so no
                // first touch escapes the model; where it cannot be had, eager.
                if self
                    .uffd()
                    .is_none_or(|u| u.register(r.start, r.end - r.start).is_err())
                {
                    fault_in_now(r);
                }
            }
            Faults::Eager => fault_in_now(r),
            Faults::Refused => {}
        }
        Ok(())
    }

    /// From fast to exact (or eager): register every range first, so no touch after
    /// this escapes, then count the touches before it. The invariant of fast mode
    /// (every missing page of every range could get an EPC page) makes that count
    /// always fit.
    fn leave_fast(&self, state: &mut State) -> Result<(), backing::Lost> {
        let uffd = self.uffd();
        let registered = uffd.is_some_and(|u| {
            state
                .regions
                .iter()
                .all(|r| u.register(r.start, r.end - r.start).is_ok())
        });
        settle_mapped(state)?;
        if registered {
            state.faults = Faults::Exact;
        } else {
            state.faults = Faults::Eager;
            for r in state.regions.iter() {
                fault_in_now(r);
            }
        }
        Ok(())
    }

    /// userfaultfd, opened (and its thread started) on first use; `None` where refused.
    fn uffd(&self) -> Option<&Arc<Userfaultfd>> {
        self.uffd
            .get_or_init(|| {
                let u = Arc::new(Userfaultfd::open()?);
                let server = Arc::clone(&u);
                let device = self.me.clone();
                std::thread::Builder::new()
                    .name("vepc-faults".into())
                    .spawn(move || faults::serve(&server, &device))
                    .map_err(|e| format!("cannot start the fault thread: {e}"))?;
                Ok(u)
            })
            .as_ref()
            .ok()
    }

    /// How many windows the fault thread has opened so far (the module's
    /// documentation says what they are): how a test or a benchmark sees that the
    /// exact device took its fast path.
    pub fn windows_opened(&self) -> u64 {
        self.windows_opened.load(Ordering::Relaxed)
    }

    /// Why userfaultfd could not be had, once something asked for it.
    pub fn userfaultfd_refused(&self) -> Option<&str> {
        self.uffd
            .get()
            .and_then(|r| r.as_ref().err())
            .map(String::as_str)
    }

    /// Makes sure userfaultfd is there when the mode needs it from the start; `Err`
    /// with the reason when it is refused, after which the device is eager (`Auto`,
    /// `Eager`) or refuses mappings (`Userfaultfd`).
    pub fn prepare(&self) -> Result<(), String> {
        if self.mode != FaultMode::Userfaultfd {
            return Ok(());
        }
        if self.uffd().is_some() {
            return Ok(());
        }
        lock(&self.state).faults = Faults::Refused;
        Err(self.userfaultfd_refused().unwrap_or("refused").to_owned())
    }

    /// Writes to the page at `addr` as a guest's first touch would, but answers
    /// `EFAULT` where the toucher would get `SIGBUS` (no EPC page for it), instead of
    /// dying of it. `EINVAL` if `addr` is not in a mapping of this device.
    pub fn touch(&self, addr: usize) -> Result<(), Errno> {
        let page = addr & !(PAGE - 1);
        let writable = {
            let state = lock(&self.state);
            let (r, _) = state.regions.find(page).ok_or(Errno::EINVAL)?;
            r.prot & crate::driver::surface::flags::PROT_WRITE != 0
        };
        // MADV_POPULATE_WRITE takes the page's fault path and reports a SIGBUS as
        // EFAULT. The range may be unmapped meanwhile: that is the toucher's ENOMEM.
        mm::populate(page, PAGE, writable)
    }

    /// The tracked parts of `[addr, addr + len)`, as `(start, end)` in address order:
    /// where a program's call on memory meets vEPC mappings.
    pub fn tracked_in(&self, addr: usize, len: usize) -> Vec<(usize, usize)> {
        if !self.mapped_any.load(Ordering::Acquire) {
            return Vec::new();
        }
        let end = addr.saturating_add(len);
        let state = lock(&self.state);
        let mut v: Vec<(usize, usize)> = state
            .regions
            .iter()
            .filter(|r| r.start < end && addr < r.end)
            .map(|r| (r.start.max(addr), r.end.min(end)))
            .collect();
        v.sort_unstable();
        v
    }

    /// `munmap(addr, len)` by a program whose address space may hold this device's
    /// mappings: unmaps, and forgets the tracked ranges there; their instances are
    /// released if that was their last reference.
    ///
    /// # Safety
    ///
    /// As munmap(2): nothing in Rust may point into the range.
    pub unsafe fn munmap(&self, addr: usize, len: usize) -> Result<(), Errno> {
        // SAFETY: the caller's contract is munmap(2)'s.
        unsafe { self.map_over(addr, len, || mm::unmap(addr, len)) }
    }

    /// Runs `replace`, a call that maps something else over `[addr, addr + len)` or
    /// unmaps it (`munmap`, an `mmap` with `MAP_FIXED`), with the table locked, and if
    /// it succeeds forgets the tracked ranges it replaced.
    ///
    /// # Safety
    ///
    /// As the call `replace` makes.
    pub unsafe fn map_over<T>(
        &self,
        addr: usize,
        len: usize,
        replace: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        if !self.mapped_any.load(Ordering::Acquire) {
            return replace();
        }
        let (r, gone) = {
            let mut state = lock(&self.state);
            // While the ranges are still the device's: registering a window again
            // after the call could reach whatever the program maps there.
            if let Err(l) = self.close_windows(&mut state) {
                self.lose(l.0);
            }
            let r = replace();
            let gone = if r.is_ok() {
                // The kernel works in whole pages.
                let len = len.checked_next_multiple_of(PAGE).unwrap_or(usize::MAX);
                self.forget(&mut state, addr, len)
            } else {
                Ok(Vec::new())
            };
            (r, gone)
        };
        self.finish(gone);
        r
    }

    /// `mremap(old, old_len, new_len, flags, new)` of a range in one of this device's
    /// mappings: `None` if `old` is not in one (the call is the kernel's alone, and if
    /// it moves something over a tracked range, [`map_over`](Self::map_over) it).
    /// A vEPC mapping never grows and cannot be left behind
    /// ([`crate::driver::surface::vma::mremap`]); it shrinks and moves with its
    /// instance.
    ///
    /// # Safety
    ///
    /// As mremap(2).
    pub unsafe fn mremap(
        &self,
        old: usize,
        old_len: usize,
        new_len: usize,
        flags: i32,
        new: usize,
    ) -> Option<Result<usize, Errno>> {
        if !self.mapped_any.load(Ordering::Acquire) {
            return None;
        }
        let (answer, gone) = {
            let mut state = lock(&self.state);
            let (_, end) = state.regions.find(old).map(|(r, _)| (r.start, r.end))?;
            if let Err(l) = self.close_windows(&mut state) {
                self.lose(l.0);
            }
            let r = remap_checks(old, old_len, new_len, flags, new, end).and_then(|how| {
                let new_len = new_len.next_multiple_of(PAGE);
                let old_len = old_len.next_multiple_of(PAGE);
                match how {
                    Remap::Nothing => Ok(old),
                    Remap::Shrink => {
                        // SAFETY: the tail of a tracked mapping, the caller's to unmap.
                        unsafe { mm::unmap(old + new_len, old_len - new_len) }.map(|()| old)
                    }
                    // SAFETY: the caller's contract is mremap(2)'s.
                    Remap::Move => unsafe { mm::move_to(old, old_len, new_len, new) }.map(|()| new),
                }
            });
            let gone = match r {
                Ok(at) => self.moved(
                    &mut state,
                    (old, old_len.next_multiple_of(PAGE)),
                    (at, new_len.next_multiple_of(PAGE)),
                ),
                Err(_) => Ok(Vec::new()),
            };
            (r, gone)
        };
        self.finish(gone);
        Some(answer)
    }

    /// The table after an mremap that moved `(old, old_len)` to `(new, new_len)`.
    fn moved(
        &self,
        state: &mut State,
        (old, old_len): (usize, usize),
        (new, new_len): (usize, usize),
    ) -> Result<Vec<Piece>, backing::Lost> {
        if (old, old_len) == (new, new_len) {
            return Ok(Vec::new());
        }
        let kept = state
            .regions
            .find(old)
            .map(|(r, index)| (r.token, r.prot, index, r.what.clone()));
        let mut gone = self.forget(state, old, old_len)?;
        if let Some((token, prot, pgoff, what)) = kept
            && new_len > 0
        {
            let region = Region {
                start: new,
                end: new + new_len,
                pgoff,
                prot,
                token,
                what,
            };
            gone.extend(state.regions.insert(region.clone()));
            self.mapped_any.store(true, Ordering::Release);
            // A moved mapping loses its userfaultfd registration.
            self.place(state, &region)?;
        }
        Ok(gone)
    }

    /// Removes `[addr, addr + len)` from the table after the address space lost it:
    /// the touches through it are counted first (the memory keeps them, and so does
    /// the instance). Returns what was removed, for [`finish`](Self::finish).
    fn forget(
        &self,
        state: &mut State,
        addr: usize,
        len: usize,
    ) -> Result<Vec<Piece>, backing::Lost> {
        let gone = state.regions.remove(addr, len);
        let mut lost = Ok(());
        for p in &gone {
            if let Err(l) = p.file.settle() {
                lost = Err(l);
            }
        }
        if state.regions.is_empty() {
            self.mapped_any.store(false, Ordering::Release);
            // Nothing is owed any more: first touches can be fast again.
            if state.faults == Faults::Exact && self.mode == FaultMode::Auto {
                state.faults = Faults::Fast;
            }
        }
        lost.map(|()| gone)
    }

    /// After the lock: drops what a call removed from the table (which may release
    /// instances), and reports a lost descriptor.
    fn finish(&self, gone: Result<Vec<Piece>, backing::Lost>) {
        match gone {
            Ok(pieces) => drop(pieces),
            Err(l) => self.lose(l.0),
        }
    }

    /// Unmaps what is left of the mapping `token` ([`crate::device::EpcRegion`]'s, on
    /// drop): only its own pieces, never a newer mapping at the same addresses.
    pub(crate) fn unmap_token(&self, token: u64) {
        let gone = {
            let mut state = lock(&self.state);
            let mut gone = self.close_windows(&mut state).map(|()| Vec::new());
            for (start, end) in state.regions.of_token(token) {
                // SAFETY: the pieces of the mapping the caller owns and gives up.
                if unsafe { mm::unmap(start, end - start) }.is_ok() {
                    let g = self.forget(&mut state, start, end - start);
                    gone = match (gone, g) {
                        (Ok(mut a), Ok(b)) => {
                            a.extend(b);
                            Ok(a)
                        }
                        (Err(l), _) | (_, Err(l)) => Err(l),
                    };
                }
            }
            gone
        };
        self.finish(gone);
    }

    /// A first touch of the page at `page`, answered as `sgx_vepc_fault` answers it,
    /// with the table locked so that the range is still the mapping it names. A bad
    /// page's poison is never consumed here: every access the device sees is the
    /// VMM's or a guest's outside an enclave, and those get abort-page semantics on
    /// EPC, not its data (docs/SEMANTICS.md §7.1).
    fn serve_fault(&self, uffd: &Userfaultfd, page: usize) {
        let mut state = lock(&self.state);
        // A touch in an open window (read after the window opened): it is an
        // ordinary fault now, as the toucher finds when it touches again.
        if state.windows.contains(page) {
            uffd.wake(page);
            return;
        }
        let Some(end) = state.regions.find(page).map(|(r, _)| r.end) else {
            // Unmapped meanwhile: the toucher retries and meets whatever is there now.
            uffd.wake(page);
            return;
        };
        if self.mode == FaultMode::Auto && self.open_window(&mut state, uffd, page, end) {
            return;
        }
        let Some((r, index)) = state.regions.find(page) else {
            uffd.wake(page);
            return;
        };
        match r.what.file.model_file().vepc().fault(index) {
            Ok(_) => uffd.zero_page(page),
            Err(_) => {
                // SAFETY: the page is in a range the table tracks, with the lock held;
                // nothing in Rust points into vEPC memory.
                let _ = unsafe { faults::sigbus_pages(page, PAGE, r.prot) };
                uffd.wake(page);
            }
        }
    }

    /// Opens a window at `page`, in a range that ends at `end`, if the model has
    /// quiet pages enough for one (closing the open windows first when only their
    /// reserve stands in the way). Whether it did: the toucher was woken by it.
    fn open_window(&self, state: &mut State, uffd: &Userfaultfd, page: usize, end: usize) -> bool {
        let mut quiet = self
            .model
            .quiet_pages()
            .saturating_sub(state.windows.reserved);
        if quiet < WINDOW_MIN as u64 && state.windows.reserved > 0 {
            // The reserve counts every page of every window, touched or not, and the
            // touched ones may have been counted since: count and look again.
            if let Err(l) = self.close_windows(state) {
                self.lose(l.0);
                return false;
            }
            quiet = self.model.quiet_pages();
        }
        let pages = state
            .windows
            .next
            .min((end - page) / PAGE)
            .min(usize::try_from(quiet).unwrap_or(usize::MAX));
        if pages < WINDOW_MIN.min((end - page) / PAGE).max(1) {
            return false;
        }
        if uffd.unregister(page, pages * PAGE).is_err() {
            return false;
        }
        let w = &mut state.windows;
        w.open.push((page, pages * PAGE));
        w.reserved += pages as u64;
        w.next = (w.next * 2).min(WINDOW_MAX);
        self.windows_opened.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Registers every open window again and counts the touches made in them: from
    /// here on each first touch there is the model's decision again.
    fn close_windows(&self, state: &mut State) -> Result<(), backing::Lost> {
        if state.windows.open.is_empty() {
            return Ok(());
        }
        let open = std::mem::take(&mut state.windows.open);
        state.windows = Windows::default();
        let uffd = self.uffd();
        let mut lost = Ok(());
        for (start, len) in open {
            let registered = uffd.is_some_and(|u| u.register(start, len).is_ok());
            for r in state.regions.iter() {
                if r.end <= start || start + len <= r.start {
                    continue;
                }
                if !registered {
                    // The range is still the device's, so this should not fail; if
                    // it does, its pages are decided now, as the eager way does, so
                    // that no first touch goes uncounted.
                    fault_in_now(r);
                }
                // Only the window's pages: settling whole instances at every close
                // would cost a scan of every page they have.
                let from = start.max(r.start);
                let to = (start + len).min(r.end);
                let pgoff = r.pgoff + ((from - r.start) / PAGE) as u64;
                if let Err(l) = r.what.file.settle_range(pgoff, ((to - from) / PAGE) as u64) {
                    lost = Err(l);
                }
            }
        }
        lost
    }

    fn released(&self, id: u64) {
        if let Some(hook) = self.on_release.get() {
            hook(Released {
                id,
                stats: self.stats(),
            });
        }
    }

    fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        if let Some(Ok(u)) = self.uffd.get() {
            u.stop();
        }
        self.model.release_emulation();
    }
}

/// `mremap`'s checks for a range starting in a vEPC mapping that ends at `end`, in
/// `mm/mremap.c`'s order: the flags and lengths, the destination of a fixed move, the
/// range within the mapping, then what `VM_PFNMAP` forbids.
fn remap_checks(
    old: usize,
    old_len: usize,
    new_len: usize,
    flags: i32,
    new: usize,
    end: usize,
) -> Result<Remap, Errno> {
    use crate::driver::surface::mmap::ModelAddressSpace;
    use crate::driver::surface::vma::remap::{DONTUNMAP, FIXED, MAYMOVE};
    if flags & !(FIXED | MAYMOVE | DONTUNMAP) != 0
        || (flags & FIXED != 0 && flags & MAYMOVE == 0)
        || (flags & DONTUNMAP != 0 && (flags & MAYMOVE == 0 || old_len != new_len))
        || !old.is_multiple_of(PAGE)
    {
        return Err(Errno::EINVAL);
    }
    let (Some(old_len), Some(new_len)) = (
        old_len.checked_next_multiple_of(PAGE),
        new_len.checked_next_multiple_of(PAGE),
    ) else {
        return Err(Errno::EINVAL);
    };
    if new_len == 0 {
        return Err(Errno::EINVAL);
    }
    let fixed = flags & FIXED != 0;
    if fixed {
        let task_size = ModelAddressSpace::TASK_SIZE as usize;
        if !new.is_multiple_of(PAGE)
            || new_len > task_size
            || new > task_size - new_len
            || (old + old_len > new && new + new_len > old)
        {
            return Err(Errno::EINVAL);
        }
    }
    // A shrink in place only unmaps the tail, wherever it lies.
    if !fixed && flags & DONTUNMAP == 0 && old_len >= new_len {
        return mremap_rule(old_len as u64, new_len as u64, flags, false);
    }
    if old_len > end - old {
        return Err(Errno::EFAULT);
    }
    mremap_rule(old_len as u64, new_len as u64, flags, fixed)
}

/// Settles every instance that has a mapping: the others have nothing unsettled
/// (touches need a mapping, and an unmap settles what was touched through it).
fn settle_mapped(state: &State) -> Result<(), backing::Lost> {
    let mut done: Vec<*const EmulatedFile> = Vec::new();
    for r in state.regions.iter() {
        let f = Arc::as_ptr(&r.what.file);
        if !done.contains(&f) {
            done.push(f);
            r.what.file.settle()?;
        }
    }
    Ok(())
}

/// The eager way: faults in every page of the range now, as `MAP_POPULATE` would on
/// ordinary memory; the pages the EPC has no room for answer `SIGBUS` from now on.
fn fault_in_now(r: &Region<Piece>) {
    let vepc = r.what.file.model_file().vepc();
    let pages = ((r.end - r.start) / PAGE) as u64;
    if vepc.populate(r.pgoff, pages).is_ok() {
        return;
    }
    let mut i = 0;
    while i < pages {
        if vepc.page(r.pgoff + i).is_some() {
            i += 1;
            continue;
        }
        let start = i;
        while i < pages && vepc.page(r.pgoff + i).is_none() {
            i += 1;
        }
        let at = r.start + faults::pages(start);
        // SAFETY: the pages lie in a range the table tracks, and the caller holds its
        // lock; nothing in Rust points into vEPC memory.
        let _ = unsafe { faults::sigbus_pages(at, faults::pages(i - start), r.prot) };
    }
}
