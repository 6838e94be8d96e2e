//! The real `/dev/sgx_vepc`, for VMMs on SGX hosts: a safe binding in the style of
//! rust-vmm's `kvm-ioctls` (one type per file descriptor, one method per operation),
//! and [`RealInstance`] for [`crate::reset`].
//!
//! This is the only module of the crate allowed `unsafe`: `mmap`, `munmap` and
//! `ioctl` demand it. **None of it has run on SGX hardware yet**; it is tested here on
//! files that are not vEPC (`/dev/null`), under `strace`.

pub mod cpu;
mod error;
mod io;
pub mod kvm;
mod region;
mod vepc_fd;

use std::os::fd::AsFd;
use std::path::PathBuf;

pub use error::VepcError;
pub use region::{EpcRegion, MapOptions};
pub use vepc_fd::{SGX_VEPC_PATH, VepcFd};

use crate::abi::Errno;
use crate::reset::VepcInstance;

/// A guest EPC section on the real device: an open instance and its mapping.
#[derive(Debug)]
pub struct RealInstance {
    path: PathBuf,
    fd: VepcFd,
    region: EpcRegion,
    opts: MapOptions,
}

impl RealInstance {
    /// Opens `/dev/sgx_vepc` and maps `len` bytes of it.
    pub fn open(len: usize, opts: MapOptions) -> Result<Self, VepcError> {
        let fd = VepcFd::open()?;
        let region = fd.map(len, opts)?;
        Ok(Self::new(SGX_VEPC_PATH.into(), fd, region, opts))
    }

    /// An instance the VMM opened and mapped itself. `path` is where
    /// [`recreate`](VepcInstance::recreate) opens a new instance on pre-5.16 kernels.
    pub fn new(path: PathBuf, fd: VepcFd, region: EpcRegion, opts: MapOptions) -> Self {
        Self {
            path,
            fd,
            region,
            opts,
        }
    }

    /// The open file.
    pub fn fd(&self) -> &VepcFd {
        &self.fd
    }

    /// The mapping, for the guest's memory slot.
    pub fn region(&self) -> &EpcRegion {
        &self.region
    }
}

impl VepcInstance for RealInstance {
    fn remove_all(&self) -> Result<u64, Errno> {
        self.fd.remove_all().map_err(|e| e.errno())
    }

    /// Opens a new instance, maps it over the old one's range with `MAP_FIXED` (so the
    /// guest's memory slot stays valid), then closes the old file: with its mapping
    /// already replaced, that is its last reference, and the kernel releases it.
    fn recreate(&mut self) -> Result<(), Errno> {
        let new = VepcFd::open_path(&self.path).map_err(|e| e.errno())?;
        self.region
            .remap(new.as_fd(), self.opts)
            .map_err(|e| e.errno())?;
        self.fd = new;
        Ok(())
    }
}
