//! The shim's process-wide state: the model's device, which descriptors are opens of
//! it, which address ranges map them, and what each intercepted call answers. The
//! hooks ([`crate::hooks`]) do the system calls; this module decides.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use serde_json::Value;
use vepc::abi::{Errno, SGX_IOC_VEPC_REMOVE_ALL};
use vepc::driver::{Device, ModelInstance, Sharing, VepcFile};
use vepc::model::Epc;
use vepc::script::{Runner, parse_attached};

use crate::config::{Config, FaultMode, instance_name};
use crate::inject::Injections;
use crate::log::{Log, hex, result};
use crate::regions::Regions;
use crate::uffd::{Answer, Userfaultfd};

const PAGE: u64 = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One open of the device: what the kernel calls the file. Descriptors from `dup`
/// share it; the instance is released when the last descriptor is closed and the last
/// mapping is gone, as the kernel's `release` runs on the file's last reference.
#[derive(Debug)]
pub struct Open {
    /// The model's file.
    pub file: VepcFile,
    writable: bool,
    /// Its place in map order, from its first mapping: the `n` of its name `Sn`.
    number: OnceLock<usize>,
    remove_alls: AtomicU64,
}

impl Open {
    /// `S0`, `S1`, … once mapped.
    pub fn name(&self) -> Option<String> {
        self.number.get().map(|&n| instance_name(n))
    }

    fn name_value(&self) -> Value {
        self.name().map_or(Value::Null, Value::from)
    }
}

/// How first touches reach the model, decided at the first mapping.
#[derive(Debug)]
enum Faults {
    Userfaultfd(Arc<Userfaultfd>),
    Eager,
    /// `VEPC_FAULTS=userfaultfd` and none could be had: mappings fail with ENODEV.
    Refused,
}

/// A mapping the hooks are about to make for the program.
#[derive(Debug)]
pub struct MmapPlan {
    /// Page-aligned length.
    pub len: usize,
    /// The flags to pass on (`MAP_POPULATE` is done after the mapping is tracked).
    pub flags: c_int,
    /// Whether the program asked for `MAP_POPULATE`.
    pub populate: bool,
    pgoff: u64,
}

/// The shim.
#[derive(Debug)]
pub struct Shim {
    device: Arc<Device>,
    faults_wanted: FaultMode,
    /// The call log.
    pub log: Log,
    fds: Mutex<HashMap<c_int, Arc<Open>>>,
    marks: FdMarks,
    regions: Mutex<Regions<Arc<Open>>>,
    tracked_regions: AtomicUsize,
    named: Mutex<Vec<Weak<Open>>>,
    remove_alls: AtomicU64,
    script: Mutex<Option<String>>,
    faults: OnceLock<Faults>,
    inject: Injections,
}

static SHIM: OnceLock<Shim> = OnceLock::new();

/// The shim, set up from the environment on first use. A configuration it cannot use
/// stops the program with the reason (exit status 2): running on another model than
/// the one asked for would make its results meaningless.
pub fn shim() -> &'static Shim {
    SHIM.get_or_init(|| match Config::from_vars(|k| std::env::var(k).ok()) {
        Ok(c) => Shim::new(c),
        Err(e) => {
            eprintln!("vepc-preload: {e}");
            std::process::exit(2);
        }
    })
}

/// The shim if anything has used it yet: calls on descriptors the shim never made
/// do not set it up.
pub fn existing() -> Option<&'static Shim> {
    SHIM.get()
}

impl Shim {
    fn new(config: Config) -> Self {
        // Config has checked the sizes with the model's own rules.
        let epc = match Epc::new(&config.epc) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("vepc-preload: VEPC_EPC: {e}");
                std::process::exit(2);
            }
        };
        let log = Log::open(config.log.as_deref());
        log.line(
            "init",
            vec![
                ("epc", config.epc.clone().into()),
                ("kernel", config.kernel.to_string().into()),
                (
                    "script",
                    config
                        .script
                        .as_ref()
                        .map_or(Value::Null, |(p, _)| p.display().to_string().into()),
                ),
                ("inject", (!config.inject.is_empty()).into()),
            ],
        );
        Self {
            device: Device::new(epc, config.kernel),
            faults_wanted: config.faults,
            log,
            fds: Mutex::default(),
            marks: FdMarks::default(),
            regions: Mutex::default(),
            tracked_regions: AtomicUsize::new(0),
            named: Mutex::default(),
            remove_alls: AtomicU64::new(0),
            script: Mutex::new(config.script.map(|(_, text)| text)),
            faults: OnceLock::new(),
            inject: config.inject,
        }
    }

    /// The model's device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Whether the device node exists on this kernel (it appeared in 5.13).
    pub fn node_exists(&self) -> bool {
        self.device.kernel().has_vepc()
    }

    // ---- descriptors ------------------------------------------------------------

    /// `open("/dev/sgx_vepc", flags)`: a new instance, before the hooks make the
    /// descriptor for it.
    pub fn open(&self, flags: c_int) -> Result<VepcFile, Errno> {
        if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
            return Err(Errno::from_raw(libc::EEXIST));
        }
        if flags & libc::O_DIRECTORY != 0 {
            return Err(Errno::from_raw(libc::ENOTDIR));
        }
        self.device.open()
    }

    /// The hooks made descriptor `fd` for `file`.
    pub fn opened(&self, fd: c_int, file: VepcFile, flags: c_int) {
        let open = Arc::new(Open {
            file,
            writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
            number: OnceLock::new(),
            remove_alls: AtomicU64::new(0),
        });
        self.track_fd(fd, open);
    }

    fn track_fd(&self, fd: c_int, open: Arc<Open>) {
        let old = {
            let mut fds = lock(&self.fds);
            let old = fds.insert(fd, open);
            if old.is_none() {
                self.marks.set(fd);
            }
            old
        };
        self.release(old);
    }

    /// The open behind `fd`, if it is one of the shim's. Every `ioctl` of the program
    /// (a vCPU's `KVM_RUN` among them) asks, so a descriptor that is not the shim's is
    /// answered from a bitmap without the lock.
    pub fn fd(&self, fd: c_int) -> Option<Arc<Open>> {
        if !self.marks.maybe(fd) {
            return None;
        }
        lock(&self.fds).get(&fd).cloned()
    }

    /// Forgets `fd` before it is closed, so a new descriptor given the same number
    /// meanwhile is not mistaken for it. Pass the result to [`Shim::release`] after.
    pub fn take_fd(&self, fd: c_int) -> Option<Arc<Open>> {
        if !self.marks.maybe(fd) {
            return None;
        }
        let mut fds = lock(&self.fds);
        let old = fds.remove(&fd);
        if old.is_some() {
            self.marks.clear(fd);
        }
        old
    }

    /// `fd` was closed (by `dup2` onto it, or `close_range`).
    pub fn closed(&self, fd: c_int) {
        let old = self.take_fd(fd);
        self.release(old);
    }

    /// Every descriptor in `first..=last` was closed (`close_range`).
    pub fn closed_range(&self, first: c_int, last: c_int) {
        let gone: Vec<c_int> = lock(&self.fds)
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in gone {
            self.closed(fd);
        }
    }

    /// `new` is a duplicate of `old` (`dup`, `dup2`, `fcntl(F_DUPFD)`).
    pub fn duplicated(&self, old: c_int, new: c_int) {
        match self.fd(old) {
            Some(open) => self.track_fd(new, open),
            // `new` was closed first if it was one of ours.
            None => self.closed(new),
        }
    }

    /// A reference to an open went; if it was the last, the model has released the
    /// instance, and the log says so.
    pub fn release(&self, open: Option<Arc<Open>>) {
        let Some(open) = open.and_then(Arc::into_inner) else {
            return;
        };
        let name = open.name_value();
        drop(open);
        let stats = self.device.stats();
        self.log.line(
            "release",
            vec![
                ("instance", name),
                (
                    "stats",
                    serde_json::json!({"free": stats.free, "used": stats.used, "zombie": stats.zombie}),
                ),
            ],
        );
    }

    // ---- mappings ---------------------------------------------------------------

    /// The checks `mmap` makes before the mapping exists, in the kernel's order: the
    /// length and offset (`do_mmap`), write access for a shared mapping, then
    /// `sgx_vepc_mmap`'s shared-only rule.
    pub fn mmap_plan(
        &self,
        open: &Open,
        len: usize,
        prot: c_int,
        flags: c_int,
        off: i64,
    ) -> Result<MmapPlan, Errno> {
        if off < 0 || !(off as u64).is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let shared = matches!(flags & 0x0f, libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE);
        let sharing = if shared {
            Sharing::Shared
        } else {
            Sharing::Private
        };
        let pgoff = off as u64 / PAGE;
        // Length and offset first; the private check is the model's last.
        let mapping = open.file.mmap(len as u64, Sharing::Shared, pgoff)?;
        if shared && prot & libc::PROT_WRITE != 0 && !open.writable {
            return Err(Errno::EACCES);
        }
        open.file.mmap(len as u64, sharing, pgoff)?;
        if matches!(self.faults(), Faults::Refused) {
            return Err(Errno::ENODEV);
        }
        let len = usize::try_from(mapping.pages() * PAGE).map_err(|_| Errno::ENOMEM)?;
        Ok(MmapPlan {
            len,
            flags: flags & !libc::MAP_POPULATE,
            populate: flags & libc::MAP_POPULATE != 0,
            pgoff,
        })
    }

    /// The size the stand-in file needs for `plan`.
    pub fn file_len(plan: &MmapPlan) -> u64 {
        (plan.pgoff + plan.len as u64 / PAGE) * PAGE
    }

    /// The hooks mapped `plan` at `addr`: track it, name the instance if this is its
    /// first mapping, and arrange for its first touches to reach the model.
    pub fn mapped(
        &self,
        open: &Arc<Open>,
        plan: &MmapPlan,
        addr: usize,
        prot: c_int,
    ) -> Result<(), Errno> {
        open.number.get_or_init(|| {
            let mut named = lock(&self.named);
            named.push(Arc::downgrade(open));
            named.len() - 1
        });
        let replaced =
            lock(&self.regions).insert(addr, plan.len, plan.pgoff, prot, Arc::clone(open));
        self.tracked_regions.store(1, Ordering::Relaxed);
        for r in replaced {
            self.release(Some(r));
        }
        match self.faults() {
            Faults::Userfaultfd(uffd) => uffd.register(addr, plan.len)?,
            Faults::Eager => self.fault_in_eagerly(open, plan, addr, prot),
            Faults::Refused => return Err(Errno::ENODEV),
        }
        if plan.populate {
            crate::sys::populate(addr, plan.len, prot);
        }
        Ok(())
    }

    /// `[addr, addr + len)` is no longer mapped as it was (`munmap`, or a `MAP_FIXED`
    /// mapping of something else over it).
    pub fn unmapped(&self, addr: usize, len: usize) {
        if self.tracked_regions.load(Ordering::Relaxed) == 0 {
            return;
        }
        let gone = {
            let mut regions = lock(&self.regions);
            let gone = regions.remove(addr, len);
            if regions.is_empty() {
                self.tracked_regions.store(0, Ordering::Relaxed);
            }
            gone
        };
        for open in gone {
            self.release(Some(open));
        }
    }

    fn faults(&self) -> &Faults {
        self.faults.get_or_init(|| {
            if self.faults_wanted == FaultMode::Eager {
                self.log.line(
                    "faults",
                    vec![
                        ("mode", "eager".into()),
                        ("why", "VEPC_FAULTS=eager".into()),
                    ],
                );
                return Faults::Eager;
            }
            match Userfaultfd::open() {
                Ok(uffd) => {
                    let uffd = Arc::new(uffd);
                    let server = Arc::clone(&uffd);
                    let spawned = std::thread::Builder::new()
                        .name("vepc-userfaultfd".into())
                        .spawn(move || server.serve(shim_resolve));
                    match spawned {
                        Ok(_) => {
                            self.log
                                .line("faults", vec![("mode", "userfaultfd".into())]);
                            Faults::Userfaultfd(uffd)
                        }
                        Err(e) => self.no_userfaultfd(format!("cannot start its thread: {e}")),
                    }
                }
                Err(why) => self.no_userfaultfd(why),
            }
        })
    }

    fn no_userfaultfd(&self, why: String) -> Faults {
        let refused = self.faults_wanted == FaultMode::Userfaultfd;
        let mode = if refused { "refused" } else { "eager" };
        self.log.line(
            "faults",
            vec![("mode", mode.into()), ("why", why.clone().into())],
        );
        if refused {
            eprintln!(
                "vepc-preload: VEPC_FAULTS=userfaultfd, but {why}: mappings of /dev/sgx_vepc fail with ENODEV"
            );
            Faults::Refused
        } else {
            eprintln!(
                "vepc-preload: {why}; every page is faulted in when it is mapped (VEPC_FAULTS=eager)"
            );
            Faults::Eager
        }
    }

    /// The fallback without userfaultfd: every page of the mapping is faulted in now,
    /// and the pages the EPC had no room for answer SIGBUS from the start.
    fn fault_in_eagerly(&self, open: &Open, plan: &MmapPlan, addr: usize, prot: c_int) {
        let vepc = open.file.vepc();
        let pages = plan.len as u64 / PAGE;
        if vepc.populate(plan.pgoff, pages).is_ok() {
            return;
        }
        let mut i = 0;
        while i < pages {
            if vepc.page(plan.pgoff + i).is_some() {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && vepc.page(plan.pgoff + i).is_none() {
                i += 1;
            }
            let _ = crate::sys::map_sigbus(
                addr + (start * PAGE) as usize,
                ((i - start) * PAGE) as usize,
                prot,
            );
        }
    }

    /// A first touch of the page at `page`: the model's fault.
    fn resolve(&self, page: usize) -> Answer {
        let found = lock(&self.regions)
            .find(page)
            .map(|(r, index)| (Arc::clone(&r.what), index, r.prot));
        let Some((open, index, prot)) = found else {
            return Answer::Unknown;
        };
        let answer = match open.file.vepc().fault(index) {
            Ok(_) => Answer::Backed,
            Err(_) => Answer::Sigbus { prot },
        };
        self.release(Some(open));
        answer
    }

    // ---- ioctl ------------------------------------------------------------------

    /// `ioctl(fd, request, arg)` on an open of the device, after the VFS's own
    /// requests (which the hooks pass to the stand-in file).
    /// Also says whether the answer was injected (`VEPC_INJECT`).
    pub fn ioctl(&self, open: &Open, request: u32, arg: u64) -> (Result<u64, Errno>, bool) {
        let injected = if request == SGX_IOC_VEPC_REMOVE_ALL {
            self.run_script_once();
            let here = open.remove_alls.fetch_add(1, Ordering::Relaxed) + 1;
            let all = self.remove_alls.fetch_add(1, Ordering::Relaxed) + 1;
            self.inject.answer(open.number.get().copied(), here, all)
        } else {
            None
        };
        match injected {
            Some(e) => (Err(e), true),
            None => (open.file.ioctl(request, arg), false),
        }
    }

    /// Logs an `ioctl` with what a reader of the log needs to judge a reset.
    pub fn log_ioctl(
        &self,
        fd: c_int,
        open: &Open,
        request: u64,
        arg: u64,
        r: Result<u64, Errno>,
        injected: bool,
    ) {
        if !self.log.enabled() {
            return;
        }
        let vepc = open.file.vepc();
        self.log.line(
            "ioctl",
            vec![
                ("fd", fd.into()),
                ("instance", open.name_value()),
                ("request", hex(request)),
                ("arg", hex(arg)),
                ("result", result(r)),
                ("injected", injected.into()),
                ("present_pages", vepc.present_pages().into()),
                ("valid_pages", vepc.valid_pages().into()),
            ],
        );
    }

    /// Runs `VEPC_SCRIPT` on the program's instances, once: just before its first
    /// REMOVE_ALL, when a VMM has mapped every section.
    fn run_script_once(&self) {
        let Some(text) = lock(&self.script).take() else {
            return;
        };
        let live: Vec<(String, Arc<Open>)> = lock(&self.named)
            .iter()
            .enumerate()
            .filter_map(|(n, w)| w.upgrade().map(|o| (instance_name(n), o)))
            .collect();
        let instances: Vec<(String, ModelInstance)> = {
            let regions = lock(&self.regions);
            live.iter()
                .map(|(name, open)| {
                    let first = regions.iter().find(|r| Arc::ptr_eq(&r.what, open));
                    let maps = first
                        .and_then(|r| {
                            open.file
                                .mmap((r.end - r.start) as u64, Sharing::Shared, r.pgoff)
                                .ok()
                        })
                        .into_iter()
                        .collect();
                    let inst = ModelInstance {
                        file: open.file.clone(),
                        maps,
                    };
                    (name.clone(), inst)
                })
                .collect()
        };
        let names: Vec<&str> = instances.iter().map(|(n, _)| n.as_str()).collect();
        let script = match parse_attached(&text, &names) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!(
                    "VEPC_SCRIPT not run: line {}, column {}: {} (the program mapped {} instance(s))",
                    e.line,
                    e.col,
                    e.msg,
                    names.len()
                );
                eprintln!("vepc-preload: {msg}");
                self.log.line("script", vec![("error", msg.into())]);
                return;
            }
        };
        let report = Runner::attach(Arc::clone(&self.device), instances).run(&script);
        for o in &report.outcomes {
            let mut fields = vec![
                ("line", o.line.into()),
                ("command", o.command.clone().into()),
                ("result", o.result.clone().into()),
            ];
            if let Some(m) = &o.mismatch {
                eprintln!(
                    "vepc-preload: VEPC_SCRIPT line {}: expected {}, got {}",
                    m.of_line, m.expected, m.actual
                );
                fields.push(("expected", m.expected.clone().into()));
                fields.push(("actual", m.actual.clone().into()));
            }
            self.log.line("script", fields);
        }
        for w in &report.warnings {
            eprintln!("vepc-preload: kernel warning: {w}");
        }
    }
}

fn shim_resolve(page: usize) -> Answer {
    existing().map_or(Answer::Unknown, |s| s.resolve(page))
}

/// Which descriptors may be the shim's, readable without a lock: one bit per
/// descriptor below [`FdMarks::BITS`], and a count of the shim's descriptors above it.
/// Written only with the descriptor table's lock held, so it never says no for a
/// descriptor the table has.
#[derive(Debug)]
struct FdMarks {
    bits: Vec<AtomicU64>,
    high: AtomicUsize,
}

impl Default for FdMarks {
    fn default() -> Self {
        Self {
            bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            high: AtomicUsize::new(0),
        }
    }
}

impl FdMarks {
    const BITS: usize = 4096;

    fn slot(fd: c_int) -> Option<(usize, u64)> {
        let fd = usize::try_from(fd).ok().filter(|&f| f < Self::BITS)?;
        Some((fd / 64, 1 << (fd % 64)))
    }

    fn maybe(&self, fd: c_int) -> bool {
        match Self::slot(fd) {
            Some((w, bit)) => self.bits[w].load(Ordering::Acquire) & bit != 0,
            None => fd >= 0 && self.high.load(Ordering::Acquire) > 0,
        }
    }

    fn set(&self, fd: c_int) {
        match Self::slot(fd) {
            Some((w, bit)) => {
                self.bits[w].fetch_or(bit, Ordering::Release);
            }
            None => {
                self.high.fetch_add(1, Ordering::Release);
            }
        }
    }

    fn clear(&self, fd: c_int) {
        match Self::slot(fd) {
            Some((w, bit)) => {
                self.bits[w].fetch_and(!bit, Ordering::Release);
            }
            None => {
                self.high.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FdMarks;

    #[test]
    fn marks_say_no_only_for_descriptors_never_set() {
        let m = FdMarks::default();
        assert!(!m.maybe(3) && !m.maybe(5000) && !m.maybe(-1));
        m.set(3);
        m.set(4095);
        m.set(5000);
        assert!(m.maybe(3) && m.maybe(4095) && m.maybe(5000));
        assert!(!m.maybe(4) && !m.maybe(-1));
        // Above the bitmap any descriptor may be ours while one is.
        assert!(m.maybe(6000));
        m.clear(3);
        m.clear(5000);
        assert!(!m.maybe(3) && !m.maybe(6000) && m.maybe(4095));
    }
}
