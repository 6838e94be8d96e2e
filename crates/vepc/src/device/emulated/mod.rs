//! The model as `/dev/sgx_vepc`, in-process, with real memory: what a Rust VMM maps
//! into its guest when there is no SGX, and what the `LD_PRELOAD` shim gives programs.
//!
//! Each open is an instance of the model's driver ([`crate::driver`]) and a memfd
//! holding its pages; a mapping is a `MAP_SHARED` mapping of the memfd, handed out as
//! an address and a length like the host device's. A page's first touch (by the VMM,
//! or by a guest through KVM) is the driver's fault: the index gets an EPC page, or,
//! when the EPC is exhausted, the toucher gets `SIGBUS` (`BUS_ADRERR`) at that address,
//! which KVM turns into `EFAULT` from `KVM_RUN`, as with `VM_FAULT_SIGBUS`.
//!
//! # First touches without a round trip
//!
//! While every mapped page that has no EPC page yet could still get one, no first
//! touch can fail, so none needs to be asked about: the device is *fast*, and a touch
//! is an ordinary page fault of the memfd. The model learns of those touches later,
//! from the memfd itself (`SEEK_DATA`: a page that was touched has data), before
//! anything observes it: REMOVE_ALL, the counts, a new mapping, a release. That is
//! exact, because EPC taken at first touch and EPC taken at the next observation are
//! indistinguishable while nothing could run out.
//!
//! The moment a new mapping (or another user of the model, such as a guest script)
//! could take a page that a mapped page would need, the device turns *exact*: every
//! mapping is registered with userfaultfd, the touches so far are settled, and from
//! then on each first touch is decided by the model as it happens (a zero page, or a
//! `SIGBUS`). Where userfaultfd is refused the device turns *eager* instead: every
//! mapped page is faulted in on the model at once, and the pages past the EPC's end
//! answer `SIGBUS` from then on.

mod regions;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::{MemfdFlags, SeekFrom};

use crate::abi::{Errno, PAGE_SIZE};
use crate::driver::{Device, Mapping, Sharing, Stats, VepcFile};
use crate::sync::unpoisoned as lock;
use crate::sys::mm;
use crate::sys::uffd::Userfaultfd;
use regions::Regions;

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
/// let emulated = Emulated::new(model, FaultMode::Auto);
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
    model: Arc<Device>,
    mode: FaultMode,
    state: Mutex<State>,
    files: Mutex<Vec<Weak<EmulatedFile>>>,
    uffd: OnceLock<Result<Arc<Userfaultfd>, String>>,
    on_release: OnceLock<ReleaseHook>,
    /// Whether any range is tracked; written under `state`'s lock.
    mapped_any: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Emulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulated")
            .field("mode", &self.mode)
            .field("faults", &self.faults())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    regions: Regions<Piece>,
    faults: Faults,
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

/// One open of the emulated device: the model's file and the memfd with its pages.
#[derive(Debug)]
pub struct EmulatedFile {
    model: VepcFile,
    memfd: OwnedFd,
    /// Bytes the memfd covers (it grows with the mappings).
    size: AtomicU64,
    device: Weak<Emulated>,
    /// Dropped after `model` (fields drop in order): reports the release it caused.
    _notice: ReleaseNotice,
}

/// Tells the device's release hook when dropping an [`EmulatedFile`] released its
/// instance.
#[derive(Debug)]
struct ReleaseNotice {
    id: u64,
    device: Weak<Emulated>,
}

impl Drop for ReleaseNotice {
    fn drop(&mut self) {
        if let Some(d) = self.device.upgrade()
            && !d.model.is_live(self.id)
        {
            d.released(self.id);
        }
    }
}

/// What a page's first touch gets.
enum Answer {
    Backed,
    Sigbus { prot: i32 },
    Unknown,
}

impl Emulated {
    /// An emulated device over the model `model`, its first touches served as `mode`
    /// says.
    pub fn new(model: Arc<Device>, mode: FaultMode) -> Arc<Self> {
        let faults = match mode {
            FaultMode::Auto => Faults::Fast,
            FaultMode::Userfaultfd => Faults::Exact,
            FaultMode::Eager => Faults::Eager,
        };
        Arc::new(Self {
            model,
            mode,
            state: Mutex::new(State {
                regions: Regions::default(),
                faults,
            }),
            files: Mutex::new(Vec::new()),
            uffd: OnceLock::new(),
            on_release: OnceLock::new(),
            mapped_any: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The model behind the device. Call [`settle`](Self::settle) before reading its
    /// counts: touches made while the device is fast reach it only then.
    pub fn model(&self) -> &Arc<Device> {
        &self.model
    }

    /// How first touches reach the model now.
    pub fn faults(&self) -> Faults {
        lock(&self.state).faults
    }

    /// Calls `hook` after each instance's release (the model's `sgx_vepc_release`).
    /// Only the first hook set is kept.
    pub fn on_release(&self, hook: impl Fn(Released) + Send + Sync + 'static) {
        let _ = self.on_release.set(Box::new(hook));
    }

    /// `open("/dev/sgx_vepc")`: a new instance whose faults prefer EPC section `node`
    /// ([`Device::open_on_node`]). `ENOENT` on kernels before 5.13.
    pub fn open(self: &Arc<Self>, node: usize) -> Result<Arc<EmulatedFile>, Errno> {
        let model = self.model.open_on_node(node)?;
        let memfd =
            rustix::fs::memfd_create("sgx_vepc", MemfdFlags::CLOEXEC).map_err(crate::sys::errno)?;
        let file = Arc::new(EmulatedFile {
            _notice: ReleaseNotice {
                id: model.vepc().id(),
                device: Arc::downgrade(self),
            },
            model,
            memfd,
            size: AtomicU64::new(0),
            device: Arc::downgrade(self),
        });
        let mut files = lock(&self.files);
        files.retain(|f| f.strong_count() > 0);
        files.push(Arc::downgrade(&file));
        Ok(file)
    }

    /// EPC usage, with every touch so far counted.
    pub fn stats(&self) -> Stats {
        self.settle();
        self.model.stats()
    }

    /// Counts in the model every page touched while the device was fast.
    pub fn settle(&self) {
        let _state = lock(&self.state);
        for f in self.live_files() {
            f.settle();
        }
    }

    /// Turns the device exact (or eager) now, if it is fast: for handing the model to
    /// something else that takes EPC pages (a guest script's touches), which must not
    /// take a page a mapped page was counting on.
    pub fn go_exact(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        if state.faults == Faults::Fast {
            self.leave_fast(&mut state);
        }
    }

    fn live_files(&self) -> Vec<Arc<EmulatedFile>> {
        lock(&self.files).iter().filter_map(Weak::upgrade).collect()
    }

    /// Decides how the new range's first touches are served.
    fn place(
        self: &Arc<Self>,
        state: &mut State,
        addr: usize,
        len: usize,
        pgoff: u64,
        prot: i32,
        file: &Arc<EmulatedFile>,
    ) {
        match state.faults {
            Faults::Fast => {
                // Every mapped page without an EPC page must still be able to get one.
                let owed: u64 = state
                    .regions
                    .iter()
                    .map(|r| r.what.file.missing(r.pgoff, (r.end - r.start) / PAGE))
                    .sum();
                if owed > self.model.epc().free_pages() {
                    self.leave_fast(state);
                }
            }
            Faults::Exact => {
                // userfaultfd mode may not have been prepared: open it now, so no
                // first touch escapes the model; where it cannot be had, eager.
                if self.uffd().is_none_or(|u| u.register(addr, len).is_err()) {
                    self.fault_in_now(file, addr, len, pgoff, prot);
                }
            }
            Faults::Eager => self.fault_in_now(file, addr, len, pgoff, prot),
            Faults::Refused => {}
        }
    }

    /// From fast to exact (or eager): register every range first, so no touch after
    /// this escapes, then count the touches before it. The invariant of fast mode
    /// (every missing page of every range could get an EPC page) makes that count
    /// always fit.
    fn leave_fast(self: &Arc<Self>, state: &mut State) {
        let uffd = self.uffd();
        let ranges: Vec<(usize, usize, u64, i32, Arc<EmulatedFile>)> = state
            .regions
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.end - r.start,
                    r.pgoff,
                    r.prot,
                    Arc::clone(&r.what.file),
                )
            })
            .collect();
        let registered = uffd.is_some_and(|u| {
            ranges
                .iter()
                .all(|&(start, len, ..)| u.register(start, len).is_ok())
        });
        for f in self.live_files() {
            f.settle();
        }
        if registered {
            state.faults = Faults::Exact;
        } else {
            state.faults = Faults::Eager;
            for (start, len, pgoff, prot, file) in &ranges {
                self.fault_in_now(file, *start, *len, *pgoff, *prot);
            }
        }
    }

    /// The eager way: faults in every page of the range now, as `MAP_POPULATE` does;
    /// the pages the EPC has no room for answer SIGBUS from now on.
    fn fault_in_now(&self, file: &EmulatedFile, addr: usize, len: usize, pgoff: u64, prot: i32) {
        let vepc = file.model.vepc();
        let pages = (len / PAGE) as u64;
        if vepc.populate(pgoff, pages).is_ok() {
            return;
        }
        let mut i = 0;
        while i < pages {
            if vepc.page(pgoff + i).is_some() {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && vepc.page(pgoff + i).is_none() {
                i += 1;
            }
            let at = addr + (start as usize) * PAGE;
            // SAFETY: the pages lie in a vEPC range this device tracks; nothing in Rust
            // points into vEPC memory (it is handed out as an address and a length).
            let _ = unsafe { sigbus_pages(at, ((i - start) as usize) * PAGE, prot) };
        }
    }

    /// userfaultfd, opened (and its thread started) on first use; `None` where refused.
    fn uffd(self: &Arc<Self>) -> Option<&Arc<Userfaultfd>> {
        self.uffd
            .get_or_init(|| {
                let u = Arc::new(Userfaultfd::open()?);
                let server = Arc::clone(&u);
                let device = Arc::downgrade(self);
                std::thread::Builder::new()
                    .name("vepc-faults".into())
                    .spawn(move || serve(&server, &device))
                    .map_err(|e| format!("cannot start the fault thread: {e}"))?;
                Ok(u)
            })
            .as_ref()
            .ok()
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
    pub fn prepare(self: &Arc<Self>) -> Result<(), String> {
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
            r.prot & libc_map::PROT_WRITE != 0
        };
        // MADV_POPULATE_WRITE takes the page's fault path and reports a SIGBUS as
        // EFAULT.
        mm::populate(page, PAGE, writable)
    }

    /// `[addr, addr + len)` is no longer mapped as it was (`munmap`, or another
    /// mapping over it): its instances are released if this was their last reference.
    pub fn unmapped(&self, addr: usize, len: usize) {
        // A program's every munmap may ask: most find nothing, without the lock.
        if !self.mapped_any.load(Ordering::Acquire) {
            return;
        }
        let gone = {
            let mut state = lock(&self.state);
            let gone = state.regions.remove(addr, len);
            // Touches through the range are counted before the range stops being
            // owed pages: the memfd keeps them, and so does the instance.
            for p in &gone {
                p.file.settle();
            }
            if state.regions.is_empty() {
                self.mapped_any.store(false, Ordering::Release);
                // Nothing is owed any more: first touches can be fast again.
                if state.faults == Faults::Exact && self.mode == FaultMode::Auto {
                    state.faults = Faults::Fast;
                }
            }
            gone
        };
        drop(gone);
    }

    /// A first touch of the page at `page`, as `sgx_vepc_fault` answers it. A bad
    /// page's poison is never consumed here: every access the device sees is the
    /// VMM's or a guest's outside an enclave, and those get abort-page semantics on
    /// EPC, not its data (docs/SEMANTICS.md §7.1).
    fn resolve(&self, page: usize) -> Answer {
        let found = {
            let state = lock(&self.state);
            state
                .regions
                .find(page)
                .map(|(r, index)| (Arc::clone(&r.what.file), index, r.prot))
        };
        let Some((file, index, prot)) = found else {
            return Answer::Unknown;
        };
        let answer = match file.model.vepc().fault(index) {
            Ok(_) => Answer::Backed,
            Err(_) => Answer::Sigbus { prot },
        };
        drop(file);
        answer
    }

    fn released(&self, id: u64) {
        if let Some(hook) = self.on_release.get() {
            hook(Released {
                id,
                stats: self.stats(),
            });
        }
    }
}

impl Drop for Emulated {
    fn drop(&mut self) {
        if let Some(Ok(u)) = self.uffd.get() {
            u.stop();
        }
    }
}

/// The fault thread: answers each first touch until the device goes.
///
/// After each fault it keeps reading for 200 µs before it sleeps: a program touching
/// page after page faults again within microseconds, and waking an idle CPU for every
/// fault costs more than the fault itself.
fn serve(uffd: &Userfaultfd, device: &Weak<Emulated>) {
    const SPIN: std::time::Duration = std::time::Duration::from_micros(200);
    let mut idle_since: Option<std::time::Instant> = None;
    loop {
        match uffd.next_fault() {
            Ok(Some(page)) => {
                idle_since = None;
                let answer = device
                    .upgrade()
                    .map_or(Answer::Unknown, |d| d.resolve(page));
                match answer {
                    Answer::Backed => uffd.zero_page(page),
                    Answer::Sigbus { prot } => {
                        // SAFETY: `resolve` found the page in a vEPC range the device
                        // tracks; nothing in Rust points into vEPC memory.
                        let _ = unsafe { sigbus_pages(page, PAGE, prot) };
                        uffd.wake(page);
                    }
                    Answer::Unknown => uffd.wake(page),
                }
            }
            Ok(None) => {
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < SPIN {
                    std::hint::spin_loop();
                } else {
                    if !uffd.wait() {
                        return;
                    }
                    idle_since = None;
                }
            }
            Err(_) => return,
        }
    }
}

/// Makes `[addr, addr + len)` answer every access with `SIGBUS`, as a vEPC page whose
/// fault found no free EPC does: it maps an empty file there, and a shared mapping
/// past the end of its file faults with `SIGBUS` (`BUS_ADRERR`) at the address, as
/// `VM_FAULT_SIGBUS` does; KVM's access to it fails with `EFAULT`.
///
/// # Safety
///
/// The range must lie in a vEPC mapping this device tracks.
unsafe fn sigbus_pages(addr: usize, len: usize, prot: i32) -> Result<(), Errno> {
    static EMPTY: OnceLock<Option<OwnedFd>> = OnceLock::new();
    let fd = EMPTY
        .get_or_init(|| rustix::fs::memfd_create("sgx_vepc_sigbus", MemfdFlags::CLOEXEC).ok())
        .as_ref()
        .ok_or(Errno::ENOMEM)?;
    // SAFETY: the caller vouches the range is vEPC memory, which no Rust reference
    // points into; replacing it leaves what the kernel's fault path would: no memory.
    unsafe { mm::map_shared(addr, fd.as_fd(), len, prot, mm::FIXED, 0) }.map(drop)
}

impl EmulatedFile {
    /// The model's file: for the guest's side (ENCLS leaves on the instance's pages)
    /// and for reading the instance's state.
    pub fn model(&self) -> &VepcFile {
        &self.model
    }

    /// The memfd with the instance's pages (mapping it directly bypasses the device:
    /// use [`mmap`](Self::mmap)).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The device the file was opened on, while it lives.
    pub fn device(&self) -> Option<Arc<Emulated>> {
        self.device.upgrade()
    }

    /// `mmap(addr, len, prot, flags, fd, pgoff * 4096)` as a C program calls it: the
    /// driver's checks (`EINVAL` for length 0 or `MAP_PRIVATE`, …), then the mapping,
    /// tracked so that its first touches are the model's faults. The range is the
    /// caller's: unmap it with `munmap` and tell the device with
    /// [`Emulated::unmapped`] ([`crate::device::EpcRegion`] does both).
    ///
    /// # Safety
    ///
    /// As mmap(2): with `MAP_FIXED`, `addr..addr + len` must be the caller's to
    /// replace, with no Rust reference pointing into it.
    pub unsafe fn mmap(
        self: &Arc<Self>,
        addr: usize,
        len: usize,
        prot: i32,
        flags: i32,
        pgoff: u64,
    ) -> Result<usize, Errno> {
        let device = self.device.upgrade().ok_or(Errno::ENODEV)?;
        let map = self.model.mmap(len as u64, Sharing::Shared, pgoff)?;
        let len = usize::try_from(map.pages() * PAGE_SIZE).map_err(|_| Errno::ENOMEM)?;
        if lock(&device.state).faults == Faults::Refused {
            return Err(Errno::ENODEV);
        }
        self.grow((pgoff + map.pages()) * PAGE_SIZE)?;
        let populate = flags & libc_map::POPULATE != 0;
        let flags = flags & !libc_map::POPULATE;
        let offset = pgoff * PAGE_SIZE;
        // SAFETY: the caller vouches for the range when it asks for MAP_FIXED.
        let addr = unsafe { mm::map_shared(addr, self.memfd.as_fd(), len, prot, flags, offset) }?;
        let _ = mm::no_huge_pages(addr, len);
        let replaced = {
            let mut state = lock(&device.state);
            device.mapped_any.store(true, Ordering::Release);
            let replaced = state.regions.insert(
                addr,
                len,
                pgoff,
                prot,
                Piece {
                    _map: map,
                    file: Arc::clone(self),
                },
            );
            for p in &replaced {
                p.file.settle();
            }
            device.place(&mut state, addr, len, pgoff, prot, self);
            replaced
        };
        drop(replaced);
        if populate {
            let _ = mm::populate(addr, len, prot & libc_map::PROT_WRITE != 0);
        }
        Ok(addr)
    }

    fn grow(&self, len: u64) -> Result<(), Errno> {
        let size = self.size.load(Ordering::Acquire);
        if len > size {
            rustix::fs::ftruncate(&self.memfd, len).map_err(crate::sys::errno)?;
            self.size.fetch_max(len, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Pages of `pgoff..pgoff + pages` that have no EPC page yet.
    fn missing(&self, pgoff: u64, pages: usize) -> u64 {
        let mut present = 0;
        self.model
            .vepc()
            .each_page(pgoff..pgoff + pages as u64, |_, _| present += 1);
        pages as u64 - present
    }

    /// Gives every page of the memfd that was touched (has data) and has no EPC page
    /// yet its EPC page, in index order, as the faults would have.
    fn settle(&self) {
        let vepc = self.model.vepc();
        let size = self.size.load(Ordering::Acquire);
        if vepc.present_pages() * PAGE_SIZE >= size {
            return;
        }
        let mut at = 0;
        while at < size {
            let Ok(data) = rustix::fs::seek(&self.memfd, SeekFrom::Data(at)) else {
                break;
            };
            let hole = rustix::fs::seek(&self.memfd, SeekFrom::Hole(data)).unwrap_or(size);
            let first = data / PAGE_SIZE;
            let end = hole.div_ceil(PAGE_SIZE);
            // Fast mode guarantees a page for each: a failure is a bug of this module.
            if vepc.populate(first, end - first).is_err() {
                vepc.device().warn(format!(
                    "emulated device: no EPC left to settle pages {first}..{end}"
                ));
            }
            at = hole;
        }
    }

    /// Pages that hold an EPC page, every touch so far counted.
    pub fn present_pages(&self) -> u64 {
        self.settle();
        self.model.vepc().present_pages()
    }

    /// Pages not uninitialized (0 after a complete reset), every touch counted.
    pub fn valid_pages(&self) -> u64 {
        self.settle();
        self.model.vepc().valid_pages()
    }

    /// `ioctl(fd, request, arg)`: the model's `sgx_vepc_ioctl`, after counting the
    /// touches so far (REMOVE_ALL visits every page the instance holds).
    pub fn ioctl(&self, request: u32, arg: u64) -> Result<u64, Errno> {
        self.settle();
        self.model.ioctl(request, arg)
    }
}

/// `MAP_*` and `PROT_*` values the module reads from a caller's flags.
mod libc_map {
    use rustix::mm::{MapFlags, ProtFlags};

    pub(super) const POPULATE: i32 = MapFlags::POPULATE.bits() as i32;
    pub(super) const PROT_WRITE: i32 = ProtFlags::WRITE.bits() as i32;
}
