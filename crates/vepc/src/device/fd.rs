//! [`VepcFd`]: one open `/dev/sgx_vepc`, one method per operation, whichever device
//! is behind it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use super::emulated;
use super::error::VepcError;
use super::region::{EpcRegion, MapOptions};
use crate::abi::{Errno, SGX_IOC_VEPC_REMOVE_ALL};
use crate::driver::VepcFile;

/// Where Linux puts the device.
pub const SGX_VEPC_PATH: &str = "/dev/sgx_vepc";

/// An open `/dev/sgx_vepc`: one virtual EPC instance.
///
/// On the host it is the kernel's (**not yet run on SGX hardware**: every path is
/// tested on this project's machines with non-vEPC files and `strace` only); on an
/// [`Emulated`](super::Emulated) device it is the model's, with real memory.
///
/// # Examples
///
/// On the emulated device (on an SGX host, [`VepcFd::open`] or
/// [`VepcDevice::host`](super::VepcDevice::host) instead):
///
/// ```
/// use vepc::device::{MapOptions, VepcDevice};
///
/// let device = VepcDevice::emulated(&[1 << 20])?;
/// let fd = device.open()?;
/// let region = fd.map(16 * 4096, MapOptions::default())?;
/// assert_eq!(region.len(), 16 * 4096);
/// // Nothing touched, nothing to remove: no SECS page is left.
/// assert_eq!(fd.remove_all()?, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VepcFd {
    inner: Inner,
}

#[derive(Debug)]
pub(super) enum Inner {
    Host(OwnedFd),
    Emulated {
        file: Arc<emulated::EmulatedFile>,
        /// What [`AsFd`] hands out: an `O_PATH` descriptor, which nothing can map.
        node: OwnedFd,
    },
}

/// Which open a descriptor or a mapping is of: for [`EpcRegion::maps`] and the
/// identity checks of [`super::VepcSection::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Identity {
    /// A host fd: its number and the file it refers to (two opens of the node share
    /// the file, so the number tells them apart).
    Host { fd: RawFd, dev: u64, ino: u64 },
    /// An emulated instance: its device and number.
    Emulated { device: usize, id: u64 },
}

impl VepcFd {
    /// `open("/dev/sgx_vepc", O_RDWR | O_CLOEXEC)` on the host.
    ///
    /// The kernel takes no EPC at open. The errors, each with its advice:
    /// - [`VepcError::NoDevice`] (`ENOENT`, `ENODEV`, `ENXIO`): no SGX, or no
    ///   `CONFIG_X86_SGX_KVM`, or a kernel before 5.13.
    /// - [`VepcError::PermissionDenied`] (`EACCES`, `EPERM`): the node's group.
    /// - From Linux 6.19 on a CPU with EUPDATESVN, the first open of any SGX file (this
    ///   one or `/dev/sgx_enclave`, with none open) runs EUPDATESVN
    ///   (docs/SEMANTICS.md §7.3): [`VepcError::SvnUpdateRetry`] (`EAGAIN`, no entropy:
    ///   retry) or [`VepcError::SvnUpdateFailed`] (`EIO`: the EPC was not empty; only a
    ///   reboot helps). The model answers both; this binding has not run on such a host.
    pub fn open() -> Result<Self, VepcError> {
        Self::open_path(SGX_VEPC_PATH)
    }

    /// Opens a vEPC device node at another path (a container's bind mount, say).
    pub fn open_path(path: impl AsRef<Path>) -> Result<Self, VepcError> {
        let path = path.as_ref();
        crate::sys::fd::open_rdwr(path)
            .map(|fd| Self {
                inner: Inner::Host(fd),
            })
            .map_err(|e| VepcError::open(path.to_owned(), e))
    }

    pub(super) fn emulated(file: Arc<emulated::EmulatedFile>) -> Result<Self, Errno> {
        let node = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(crate::sys::errno)?;
        Ok(Self {
            inner: Inner::Emulated { file, node },
        })
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub(super) fn identity(&self) -> Identity {
        match &self.inner {
            Inner::Host(fd) => {
                let (dev, ino) = rustix::fs::fstat(fd).map_or((0, 0), |st| (st.st_dev, st.st_ino));
                Identity::Host {
                    fd: fd.as_raw_fd(),
                    dev,
                    ino,
                }
            }
            Inner::Emulated { file, .. } => Identity::Emulated {
                device: Arc::as_ptr(file.device()) as usize,
                id: file.id(),
            },
        }
    }

    /// Whether this fd is an instance of `device`: an emulated fd of that emulated
    /// device, or a host fd of a host device. (Which host node an fd came from, the
    /// kernel does not say once it is open.)
    pub fn is_of(&self, device: &super::VepcDevice) -> bool {
        match (&self.inner, device.emulation()) {
            (Inner::Host(_), None) => true,
            (Inner::Emulated { file, .. }, Some(d)) => Arc::ptr_eq(file.device(), d),
            _ => false,
        }
    }

    /// `ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL, 0)`: EREMOVE every page of the instance.
    ///
    /// Returns the number of SECS pages that could not be removed because they still
    /// have children (in this or another instance); the caller must run a second round
    /// after every instance of the guest had its first (`crate::reset`). Kernel text
    /// (`sgx.rst`): "It indicates a bug in the kernel or the userspace client if any of
    /// the second round of SGX_IOC_VEPC_REMOVE_ALL calls has a return code other than 0."
    pub fn remove_all(&self) -> Result<u64, VepcError> {
        match &self.inner {
            Inner::Host(fd) => crate::sys::fd::ioctl_io(fd, SGX_IOC_VEPC_REMOVE_ALL)
                .map(|n| u64::try_from(n).unwrap_or(0)),
            Inner::Emulated { file, .. } => file.ioctl(SGX_IOC_VEPC_REMOVE_ALL, 0),
        }
        .map_err(VepcError::remove_all)
    }

    /// Maps `len` bytes of the instance `MAP_SHARED`, read-write, at an address the
    /// kernel picks. The region is unmapped when dropped.
    pub fn map(&self, len: usize, opts: MapOptions) -> Result<EpcRegion, VepcError> {
        // SAFETY: no fixed address: nothing existing is replaced.
        unsafe { EpcRegion::new(self, None, len, opts) }
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
        addr: usize,
        len: usize,
        opts: MapOptions,
    ) -> Result<EpcRegion, VepcError> {
        // SAFETY: the caller's contract is this function's.
        unsafe { EpcRegion::new(self, Some(addr), len, opts) }
    }

    /// The model's file behind an emulated fd (`None` on the host): for driving the
    /// guest's side (ENCLS leaves) on the model. It turns the device exact first
    /// ([`EmulatedFile::model`](super::EmulatedFile::model)).
    pub fn model(&self) -> Option<&VepcFile> {
        self.emulated_file().map(|f| f.model())
    }

    /// The emulated instance behind the fd (`None` on the host).
    pub fn emulated_file(&self) -> Option<&Arc<emulated::EmulatedFile>> {
        match &self.inner {
            Inner::Host(_) => None,
            Inner::Emulated { file, .. } => Some(file),
        }
    }

    /// Pages of the instance that hold an EPC page, and of those the ones not
    /// uninitialized (0 after a complete reset). Emulated fds only: the kernel does
    /// not say.
    pub fn pages(&self) -> Option<(u64, u64)> {
        self.emulated_file()
            .map(|f| (f.present_pages(), f.valid_pages()))
    }
}

impl From<OwnedFd> for VepcFd {
    /// Adopts a host vEPC fd the VMM was handed (a sandboxed VMM cannot `open` itself).
    fn from(fd: OwnedFd) -> Self {
        Self {
            inner: Inner::Host(fd),
        }
    }
}

impl AsFd for VepcFd {
    /// The host's fd. On an emulated device, an `O_PATH` descriptor of its own: an
    /// emulated instance cannot be reached through a descriptor, so every `read`,
    /// `write`, `ioctl` or `mmap` through this one answers `EBADF` at once, rather
    /// than do something the real device would not (mapping memory the model never
    /// sees, `ENOTTY` for REMOVE_ALL). Map with [`VepcFd::map`] (or the `vm-memory`
    /// feature's regions) and reset with [`VepcFd::remove_all`].
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.inner {
            Inner::Host(fd) => fd.as_fd(),
            Inner::Emulated { node, .. } => node.as_fd(),
        }
    }
}

impl AsRawFd for VepcFd {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}
