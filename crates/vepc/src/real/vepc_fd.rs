//! [`VepcFd`]: one open `/dev/sgx_vepc` file, one method per operation.

use std::ffi::c_void;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::{Mode, OFlags};

use super::error::VepcError;
use super::io::NoArg;
use super::region::{EpcRegion, MapOptions};
use crate::abi::SGX_IOC_VEPC_REMOVE_ALL;

/// Where Linux puts the device.
pub const SGX_VEPC_PATH: &str = "/dev/sgx_vepc";

/// An open `/dev/sgx_vepc` file: one virtual EPC instance.
///
/// Not yet run on SGX hardware: every path here is tested on this project's machines
/// with non-vEPC files and `strace` only.
#[derive(Debug)]
pub struct VepcFd {
    fd: OwnedFd,
}

impl VepcFd {
    /// `open("/dev/sgx_vepc", O_RDWR | O_CLOEXEC)`.
    pub fn open() -> Result<Self, VepcError> {
        Self::open_path(SGX_VEPC_PATH)
    }

    /// Opens a vEPC device node at another path (a container's bind mount, say).
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self, VepcError> {
        let path = path.as_ref();
        rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map(|fd| Self { fd })
            .map_err(|e| VepcError::open(path.to_owned(), e))
    }

    /// `ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL, 0)`: EREMOVE every page of the instance.
    ///
    /// Returns the number of SECS pages that could not be removed because they still
    /// have children (in this or another instance); the caller must run a second round
    /// after every instance of the guest had its first (`crate::reset`). Kernel text
    /// (`sgx.rst`): "It indicates a bug in the kernel or the userspace client if any of
    /// the second round of SGX_IOC_VEPC_REMOVE_ALL calls has a return code other than 0."
    pub fn remove_all(&self) -> Result<u64, VepcError> {
        // SAFETY: REMOVE_ALL is `_IO`: the kernel reads no memory through the argument,
        // which `NoArg` passes as an explicit 0.
        let n = unsafe { rustix::ioctl::ioctl(&self.fd, NoArg(SGX_IOC_VEPC_REMOVE_ALL)) }
            .map_err(VepcError::remove_all)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Maps `len` bytes of the instance `MAP_SHARED`, read-write, at an address the
    /// kernel picks. The region is unmapped when dropped.
    pub fn map(&self, len: usize, opts: MapOptions) -> Result<EpcRegion, VepcError> {
        EpcRegion::new(self.as_fd(), None, len, opts)
    }

    /// Maps `len` bytes of the instance over `addr..addr + len` (`MAP_FIXED`), as QEMU
    /// does over the range it reserved for guest RAM. Whatever was mapped there is
    /// replaced. The region is unmapped when dropped.
    ///
    /// # Safety
    ///
    /// The range must be one the caller owns and that no Rust reference or other live
    /// object points into: its old mapping disappears.
    pub unsafe fn map_fixed(
        &self,
        addr: NonNull<c_void>,
        len: usize,
        opts: MapOptions,
    ) -> Result<EpcRegion, VepcError> {
        EpcRegion::new(self.as_fd(), Some(addr), len, opts)
    }
}

impl From<OwnedFd> for VepcFd {
    /// Adopts a vEPC fd the VMM was handed (a sandboxed VMM cannot `open` itself).
    fn from(fd: OwnedFd) -> Self {
        Self { fd }
    }
}

impl From<VepcFd> for OwnedFd {
    fn from(v: VepcFd) -> Self {
        v.fd
    }
}

impl AsFd for VepcFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for VepcFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
