//! `/dev/sgx_vepc` for VMMs: one API, two devices behind it.
//!
//! - the **host's** (`/dev/sgx_vepc`, Linux 5.13+), for SGX hosts;
//! - the **emulated** one ([`Emulated`]): the model, in-process, with real memory a
//!   VMM can hand to KVM, for everywhere else (CI, a laptop, an AMD host).
//!
//! A VMM written against [`VepcDevice`], [`VepcFd`], [`EpcRegion`] and [`VepcSection`]
//! runs on either by changing the constructor of its [`VepcDevice`]; the reset
//! protocol ([`crate::reset`]), its quiesce hook and its `ENOTTY` fallback work on
//! both, and both fail with the same [`VepcError`]s.
//!
//! The layout follows rust-vmm's `kvm-ioctls`: [`VepcFd`] is one file descriptor with
//! one method per operation the kernel's `sgx_vepc_fops` has (`mmap`, the ioctl).

mod emulated;
mod error;
mod fd;
#[cfg(feature = "vm-memory")]
pub mod guest_memory;
mod instance;
mod model_section;
mod region;
mod section;

use std::path::PathBuf;
use std::sync::Arc;

pub use emulated::{Emulated, EmulatedFile, FaultMode, Faults, Released, note_mlockall_future};
pub use error::VepcError;
pub use fd::{SGX_VEPC_PATH, VepcFd};
pub use instance::VepcInstance;
pub use model_section::ModelSection;
pub use region::{EpcRegion, MapOptions};
pub use section::VepcSection;

use crate::abi::KernelVersion;
use crate::driver::{Device, Stats};
use crate::model::Epc;
use crate::reset::ResetLock;

/// Where vEPC instances come from: the host's `/dev/sgx_vepc`, or the emulated one.
#[derive(Debug, Clone)]
pub struct VepcDevice {
    kind: Kind,
    /// Serializes the resets of this device's instances.
    reset: Arc<ResetLock>,
}

#[derive(Debug, Clone)]
enum Kind {
    Host(PathBuf),
    Emulated { device: Arc<Emulated>, node: usize },
}

impl VepcDevice {
    /// The host's `/dev/sgx_vepc`.
    pub fn host() -> Self {
        Self::host_at(SGX_VEPC_PATH)
    }

    /// A host vEPC node at another path (a container's bind mount, say).
    pub fn host_at(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            reset: host_reset_lock(&path),
            kind: Kind::Host(path),
        }
    }

    /// The model as `/dev/sgx_vepc`: an EPC with one section per entry of
    /// `section_bytes`, behaving like Linux 6.18, first touches served fast while
    /// nothing can run out ([`FaultMode::Auto`]).
    pub fn emulated(section_bytes: &[u64]) -> Result<Self, VepcError> {
        let model = Device::new(Epc::new(section_bytes)?, KernelVersion::DEFAULT);
        Ok(Self::emulated_on(&Emulated::new(model, FaultMode::Auto)?))
    }

    /// An emulated device built by the caller (another kernel version, fault mode or
    /// EPC).
    pub fn emulated_on(device: &Arc<Emulated>) -> Self {
        Self {
            reset: Arc::clone(device.reset_lock()),
            kind: Kind::Emulated {
                device: Arc::clone(device),
                node: 0,
            },
        }
    }

    /// The lock [`crate::reset::reset`] holds over this device's instances.
    pub fn reset_lock(&self) -> &Arc<ResetLock> {
        &self.reset
    }

    /// The same device, with the instances it opens faulting their pages in from EPC
    /// section `node` first, as a VMM pinning a section's vCPUs to NUMA node `node`
    /// gets from the kernel. The host's kernel decides that itself: no effect there.
    pub fn on_node(mut self, node: usize) -> Self {
        if let Kind::Emulated { node: n, .. } = &mut self.kind {
            *n = node;
        }
        self
    }

    /// `open()`: a new, empty instance.
    pub fn open(&self) -> Result<VepcFd, VepcError> {
        match &self.kind {
            Kind::Host(path) => VepcFd::open_path(path),
            Kind::Emulated { device, node } => device
                .open(*node)
                .and_then(VepcFd::emulated)
                .map_err(|e| VepcError::open(SGX_VEPC_PATH.into(), e)),
        }
    }

    /// The emulated device behind this one (`None` on the host).
    pub fn emulation(&self) -> Option<&Arc<Emulated>> {
        match &self.kind {
            Kind::Host(_) => None,
            Kind::Emulated { device, .. } => Some(device),
        }
    }

    /// EPC usage of an emulated device, every touch counted (`None` on the host).
    pub fn stats(&self) -> Option<Stats> {
        self.emulation().map(|d| d.stats())
    }
}

/// One reset lock per host node path, for every [`VepcDevice`] of this process that
/// names it: instances of one node share a kernel, whose ioctls and releases must not
/// run beside a reset.
fn host_reset_lock(path: &std::path::Path) -> Arc<ResetLock> {
    use std::collections::HashMap;
    use std::sync::{Mutex, Weak};
    static LOCKS: Mutex<Option<HashMap<PathBuf, Weak<ResetLock>>>> = Mutex::new(None);
    let mut locks = crate::sync::unpoisoned(&LOCKS);
    let map = locks.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = map.get(path).and_then(Weak::upgrade) {
        return l;
    }
    let l = ResetLock::new();
    map.insert(path.to_owned(), Arc::downgrade(&l));
    l
}
