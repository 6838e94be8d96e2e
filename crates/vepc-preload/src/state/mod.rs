//! The shim's process-wide state: the model's device, which descriptors are opens of
//! it, which address ranges map them, and what each intercepted call answers. The
//! hooks ([`crate::hooks`]) do the system calls; this module decides: descriptors in
//! [`fds`], mappings and first touches in [`maps`], `ioctl` and the guest script in
//! [`ioctl`].

mod fds;
mod ioctl;
mod maps;

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use serde_json::Value;
use vepc::driver::{Device, VepcFile};
use vepc::model::Epc;

use crate::config::{Config, FaultMode, instance_name};
use crate::inject::Injections;
use crate::log::Log;
use crate::regions::Regions;
use crate::uffd::Userfaultfd;
use fds::FdMarks;

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
    /// Whether `regions` has anything; written under its lock.
    any_regions: AtomicBool,
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
            any_regions: AtomicBool::new(false),
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
}
