//! The shim's process-wide state: the library's emulated device, which descriptors are
//! opens of it, and what each intercepted call answers. The hooks ([`crate::hooks`])
//! make the system calls; this module decides: descriptors in [`fds`], mappings in
//! [`maps`], `ioctl` and the guest script in [`ioctl`]. Memory and first touches are
//! the library's ([`vepc::device::Emulated`]).

mod fds;
mod ioctl;
mod maps;

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::Value;
use vepc::device::{Emulated, EmulatedFile, FaultMode as Mode, Faults, Released};
use vepc::driver::Device;
use vepc::model::Epc;

use crate::config::{Config, FaultMode, instance_name};
use crate::inject::Injections;
use crate::log::Log;
use fds::FdMarks;

use vepc::sync::unpoisoned as lock;

/// One open of the device: what the kernel calls the file. Descriptors from `dup`
/// share it; the instance is released when the last descriptor is closed and the last
/// mapping is gone, as the kernel's `release` runs on the file's last reference.
#[derive(Debug)]
pub struct Open {
    /// The emulated instance.
    pub file: Arc<EmulatedFile>,
    writable: bool,
    /// Its place in map order, from its first mapping: the `n` of its name `Sn`.
    number: OnceLock<usize>,
    /// Its first mapping, `(pgoff, pages)`: what a guest script's page numbers index.
    first_map: OnceLock<(u64, u64)>,
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

/// A mapping the hooks are about to make for the program.
#[derive(Debug)]
pub struct MmapPlan {
    /// The page offset into the instance.
    pub pgoff: u64,
}

/// The shim.
#[derive(Debug)]
pub struct Shim {
    emulated: Arc<Emulated>,
    faults_wanted: FaultMode,
    /// How first touches were served when last logged.
    faults_logged: Mutex<Option<Faults>>,
    /// The call log.
    pub log: Log,
    fds: Mutex<HashMap<c_int, Arc<Open>>>,
    marks: FdMarks,
    named: Mutex<Vec<Weak<Open>>>,
    /// Instance numbers (the model's) to names, for the release line.
    names: Mutex<HashMap<u64, String>>,
    remove_alls: AtomicU64,
    script: Mutex<Option<String>>,
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
        let mode = match config.faults {
            FaultMode::Auto => Mode::Auto,
            FaultMode::Userfaultfd => Mode::Userfaultfd,
            FaultMode::Eager => Mode::Eager,
        };
        let emulated = Emulated::new(Device::new(epc, config.kernel), mode);
        emulated.on_release(|r| {
            if let Some(shim) = existing() {
                shim.released(r);
            }
        });
        Self {
            emulated,
            faults_wanted: config.faults,
            faults_logged: Mutex::new(None),
            log,
            fds: Mutex::default(),
            marks: FdMarks::default(),
            named: Mutex::default(),
            names: Mutex::default(),
            remove_alls: AtomicU64::new(0),
            script: Mutex::new(config.script.map(|(_, text)| text)),
            inject: config.inject,
        }
    }

    /// The model's device.
    pub fn device(&self) -> &Arc<Device> {
        self.emulated.model()
    }

    /// The emulated device.
    pub fn emulated(&self) -> &Arc<Emulated> {
        &self.emulated
    }

    /// Whether the device node exists on this kernel (it appeared in 5.13).
    pub fn node_exists(&self) -> bool {
        self.device().kernel().has_vepc()
    }

    /// The model released an instance: the log says so, with the EPC's counts.
    fn released(&self, r: Released) {
        let name = lock(&self.names).remove(&r.id);
        let s = r.stats;
        self.log.line(
            "release",
            vec![
                ("instance", name.map_or(Value::Null, Value::from)),
                (
                    "stats",
                    serde_json::json!({"free": s.free, "used": s.used, "zombie": s.zombie}),
                ),
            ],
        );
    }
}
