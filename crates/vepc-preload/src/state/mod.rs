//! The shim's process-wide state, and what each intercepted call answers: one
//! method of [`Shim`] per hook, which the hooks ([`crate::hooks`]) call after or
//! instead of the system call. Its parts: the program's descriptors that are opens of
//! the device (`fds`), the checks before a mapping and the log of how first touches
//! are served (`maps`), the driver's side of `ioctl` with the guest script and
//! injected answers (`ioctl`). Memory and first touches are the library's
//! ([`vepc::device::Emulated`]); the VFS's own ioctls are its table
//! ([`vepc::driver::vfs`]).

mod fds;
mod ioctl;
mod maps;

use std::collections::HashMap;
use std::ffi::{c_int, c_uint};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::Value;
use vepc::abi::{Errno, PAGE_SIZE};
use vepc::device::{Emulated, EmulatedFile, FaultMode as Mode, Released};
use vepc::driver::Device;
use vepc::driver::surface::Access;
use vepc::driver::surface::fs::{Opened, open as open_rules};
use vepc::driver::surface::mmap::MmapRequest;
use vepc::driver::vfs::{Vfs, do_vfs_ioctl};
use vepc::model::Epc;
use vepc::sync::unpoisoned as lock;

use crate::config::{Config, FaultMode, instance_name};
use crate::inject::AtStart;
use crate::log::{Log, result};
use fds::Descriptors;
use ioctl::{DriverIoctls, ProgramCaller};
use maps::FaultNotes;

/// One open of the device: what the kernel calls the file. Descriptors from `dup`
/// share it; the instance is released when the last descriptor is closed and the last
/// mapping is gone, as the kernel's `release` runs on the file's last reference.
#[derive(Debug)]
pub struct OpenFile {
    /// The emulated instance; `None` for an `O_PATH` open, which has none.
    pub file: Option<Arc<EmulatedFile>>,
    /// What the open may do.
    pub access: Access,
    /// Its place in map order, from its first mapping: the `n` of its name `Sn`.
    number: OnceLock<usize>,
    /// Its first mapping, `(pgoff, pages)`: what a guest script's page numbers index.
    first_map: OnceLock<(u64, u64)>,
    remove_alls: AtomicU64,
}

impl OpenFile {
    /// `S0`, `S1`, … once mapped.
    pub fn name(&self) -> Option<String> {
        self.number.get().map(|&n| instance_name(n))
    }

    fn name_value(&self) -> Value {
        self.name().map_or(Value::Null, Value::from)
    }
}

/// The shim.
#[derive(Debug)]
pub struct Shim {
    emulated: Arc<Emulated>,
    /// The call log.
    pub log: Log,
    descriptors: Descriptors,
    faults: FaultNotes,
    driver: DriverIoctls,
    /// Instances in map order, for their names and the guest script.
    named: Mutex<Vec<Weak<OpenFile>>>,
    /// Instance numbers (the model's) to names, for the release line.
    names: Mutex<HashMap<u64, String>>,
}

static SHIM: OnceLock<Shim> = OnceLock::new();

/// Stops the program: a configuration the shim cannot use would make its results
/// meaningless. One line, exit status 2.
fn stop(why: &dyn std::fmt::Display) -> ! {
    eprintln!("vepc-preload: {why}");
    std::process::exit(2);
}

/// The shim, set up from the environment on first use. A configuration it cannot use
/// stops the program with the reason (exit status 2): running on another model than
/// the one asked for would make its results meaningless.
pub fn shim() -> &'static Shim {
    SHIM.get_or_init(|| match Config::from_vars(|k| std::env::var_os(k)) {
        Ok(c) => Shim::new(c),
        Err(e) => stop(&e),
    })
}

/// The shim if anything has used it yet: calls on descriptors the shim never made
/// do not set it up.
pub fn existing() -> Option<&'static Shim> {
    SHIM.get()
}

impl Shim {
    fn new(config: Config) -> Self {
        // Before the first descriptor of the shim's own is made.
        vepc::sys::kept::hide_descriptors();
        // Config has checked the sizes with the model's own rules.
        let epc = match Epc::new(&config.epc) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("vepc-preload: VEPC_EPC: {e}");
                std::process::exit(2);
            }
        };
        let log = Log::open(config.log.as_deref()).unwrap_or_else(|e| stop(&e));
        let init = log.write(
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
        if let Err(e) = init {
            stop(&e);
        }
        let mode = match config.faults {
            FaultMode::Auto => Mode::Auto,
            FaultMode::Userfaultfd => Mode::Userfaultfd,
            FaultMode::Eager => Mode::Eager,
        };
        let device = Device::new(epc, config.kernel);
        host_at_start(&device, config.inject.at_start(), &log);
        let emulated = match Emulated::new(device, mode) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("vepc-preload: {e}");
                std::process::exit(2);
            }
        };
        emulated.on_release(|r| {
            if let Some(shim) = existing() {
                shim.released(r);
            }
        });
        emulated.on_lost(|why| {
            eprintln!("vepc-preload: {why}; stopping the program (exit status 2)");
            crate::sys::exit_now(2);
        });
        Self {
            emulated,
            log,
            descriptors: Descriptors::default(),
            faults: FaultNotes::new(config.faults),
            driver: DriverIoctls::new(config.inject, config.script.map(|(_, text)| text)),
            named: Mutex::default(),
            names: Mutex::default(),
        }
    }

    /// The emulated device.
    pub fn emulated(&self) -> &Arc<Emulated> {
        &self.emulated
    }

    /// Whether the device node exists on this kernel (it appeared in 5.13).
    pub fn node_exists(&self) -> bool {
        self.emulated.kernel().has_vepc()
    }

    /// `open("/dev/sgx_vepc", flags, mode)`: the VFS's checks, then a descriptor the
    /// kernel made with the program's flags (an open of `/dev/null`, so that `fcntl`,
    /// `poll` and `O_PATH` answer as for the device), then the driver's open: a new
    /// instance. The descriptor.
    pub fn open(&self, flags: c_int, mode: c_uint) -> Result<c_int, Errno> {
        let opened = open_rules(self.emulated.kernel(), flags)?;
        let fd = crate::sys::open_null(flags, mode)?;
        let (file, access) = match opened {
            Opened::Path => (None, Access::from_flags(0)),
            Opened::Instance(access) => match self.emulated.open_as(0, access) {
                Ok(f) => (Some(f), access),
                Err(e) => {
                    crate::sys::close_own(fd);
                    return Err(e);
                }
            },
        };
        let open = Arc::new(OpenFile {
            file,
            access,
            number: OnceLock::new(),
            first_map: OnceLock::new(),
            remove_alls: AtomicU64::new(0),
        });
        drop(self.descriptors.insert(fd, open));
        Ok(fd)
    }

    /// The open behind `fd`, if it is one of the shim's (cheap for the others).
    pub fn fd(&self, fd: c_int) -> Option<Arc<OpenFile>> {
        self.descriptors.get(fd)
    }

    /// `close(fd)`: forgets `fd` before it is closed, so a descriptor given the same
    /// number meanwhile is not mistaken for it. Drop the result after the close: its
    /// last reference going releases the instance.
    pub fn closing(&self, fd: c_int) -> Option<Arc<OpenFile>> {
        self.descriptors.take(fd)
    }

    /// Every descriptor in `first..=last` was closed (`close_range`).
    pub fn closed_range(&self, first: c_int, last: c_int) {
        for fd in self.descriptors.in_range(first, last) {
            drop(self.descriptors.take(fd));
        }
    }

    /// `new` is a duplicate of `old` (`dup`, `dup2`, `fcntl(F_DUPFD)`); if `new` was
    /// one of the shim's, it was closed first.
    pub fn duplicated(&self, old: c_int, new: c_int) {
        let replaced = match self.descriptors.get(old) {
            Some(open) => self.descriptors.insert(new, open),
            None => self.descriptors.take(new),
        };
        drop(replaced);
    }

    /// Before an `mmap` of an instance: `VEPC_FAULTS=userfaultfd` with no userfaultfd
    /// to be had is `ENODEV`, said once on stderr.
    pub fn before_mmap(&self) -> Result<(), Errno> {
        self.faults.prepare(&self.emulated, &self.log)
    }

    /// The hooks mapped `req` of `open`: the instance is named if this is its first
    /// mapping, and a change in how first touches are served is logged.
    pub fn mapped(&self, open: &Arc<OpenFile>, req: &MmapRequest) {
        let pgoff = req.offset / PAGE_SIZE;
        let len = req.len as usize;
        open.first_map
            .get_or_init(|| (pgoff, len.div_ceil(4096) as u64));
        open.number.get_or_init(|| {
            let mut named = lock(&self.named);
            named.push(Arc::downgrade(open));
            let n = named.len() - 1;
            if let Some(f) = &open.file {
                lock(&self.names).insert(f.id(), instance_name(n));
            }
            n
        });
        self.faults.after_mapping(&self.emulated, &self.log);
    }

    /// `ioctl(fd, request, arg)` on an open of the device: the VFS's answer, or the
    /// driver's; logged. Also says whether the answer was injected (`VEPC_INJECT`).
    pub fn ioctl(
        &self,
        fd: c_int,
        open: &OpenFile,
        file: &EmulatedFile,
        request: u64,
        arg: u64,
    ) -> Result<u64, Errno> {
        // ioctl(2)'s request is an unsigned int: the upper half never reaches the VFS.
        let req = request as u32;
        let mut caller = ProgramCaller {
            fd,
            descriptors: &self.descriptors,
        };
        let (r, injected) = match do_vfs_ioctl(req, arg, &mut caller) {
            Vfs::Answered(r) => (r, false),
            Vfs::Driver => {
                self.driver
                    .answer(open, file, req, arg, || self.script_targets(), &self.log)
            }
        };
        ioctl::log_line(&self.log, fd, open, file, (request, arg), r, injected);
        r
    }

    /// The device and the program's live instances, named `S0`, `S1`, … in map order.
    fn script_targets(&self) -> (Arc<Emulated>, Vec<(String, Arc<OpenFile>)>) {
        let named = lock(&self.named)
            .iter()
            .enumerate()
            .filter_map(|(n, w)| w.upgrade().map(|o| (instance_name(n), o)))
            .collect();
        (Arc::clone(&self.emulated), named)
    }

    /// The model released an instance: the log says so, with the EPC's counts.
    fn released(&self, r: Released) {
        let name = lock(&self.names).remove(&r.id);
        let s = r.stats;
        let written_back = self.emulated.reclaim_stats().written_back;
        self.log.line(
            "release",
            vec![
                ("instance", name.map_or(Value::Null, Value::from)),
                (
                    "stats",
                    serde_json::json!({
                        "free": s.free,
                        "used": s.used,
                        "zombie": s.zombie,
                        "poisoned": s.poisoned,
                        "host": s.host,
                        "written_back": written_back,
                    }),
                ),
            ],
        );
    }
}

/// `VEPC_INJECT`'s host state, made before the program's first call: memory errors
/// found while the pages are free, then host enclaves. Each is logged with its
/// answer; none stops the program (a host enclave that does not fit is given up, as
/// its process would).
fn host_at_start(device: &Device, at_start: &[AtStart], log: &Log) {
    for a in at_start {
        match a {
            AtStart::Poison(pages) => {
                for n in pages.clone() {
                    let paddr = device.epc().page_number_addr(n);
                    let handled = device.memory_failure(paddr, false).handled;
                    log.line(
                        "inject",
                        vec![
                            ("poison", n.into()),
                            ("result", result(handled.map(|_| "ok"))),
                        ],
                    );
                }
            }
            AtStart::HostEnclave(size) => {
                let built = device.host_enclave_create(size.div_ceil(PAGE_SIZE));
                log.line(
                    "inject",
                    vec![
                        ("host_enclave", (*size).into()),
                        ("result", result(built.map(|_| "ok"))),
                    ],
                );
            }
        }
    }
}
