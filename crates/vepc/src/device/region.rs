//! [`EpcRegion`]: a mapping of a vEPC instance, handed out as an address and a length.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::VepcFd;
use super::emulated::Emulated;
use super::error::VepcError;
use super::fd::Inner;
use crate::sys::mm;

/// How to map a vEPC instance, beyond `MAP_SHARED` and read-write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapOptions {
    /// `MAP_NORESERVE`.
    pub noreserve: bool,
    /// `MAP_POPULATE`: fault every page in now (each takes an EPC page; with the EPC
    /// exhausted the rest of the pages answer SIGBUS when touched).
    pub populate: bool,
}

impl MapOptions {
    fn flags(self) -> i32 {
        use rustix::mm::MapFlags;
        let mut f = MapFlags::empty();
        if self.noreserve {
            f |= MapFlags::NORESERVE;
        }
        if self.populate {
            f |= MapFlags::POPULATE;
        }
        f.bits() as i32
    }
}

/// Read and write: how vEPC is always mapped here.
const PROT_RW: i32 =
    (rustix::mm::ProtFlags::READ.bits() | rustix::mm::ProtFlags::WRITE.bits()) as i32;

/// A `MAP_SHARED` mapping of a vEPC instance, unmapped on drop.
///
/// It is deliberately not a slice: EPC is not ordinary memory (reads from outside an
/// enclave see an abort page, writes are dropped). Hand [`addr`](Self::addr) and
/// [`len`](Self::len) to KVM as a memory slot.
#[derive(Debug)]
pub struct EpcRegion {
    addr: usize,
    len: usize,
    owner: Owner,
}

/// Who is told when the region goes.
#[derive(Debug)]
enum Owner {
    Host,
    Emulated(Arc<Emulated>),
}

impl EpcRegion {
    /// Maps `fd` (`len` bytes from offset 0) at `at`, or where the kernel chooses.
    ///
    /// # Safety
    ///
    /// With `at`, the range must be the caller's to replace (`VepcFd::map_fixed`).
    pub(super) unsafe fn new(
        fd: &VepcFd,
        at: Option<usize>,
        len: usize,
        opts: MapOptions,
    ) -> Result<Self, VepcError> {
        let (addr, flags) = match at {
            Some(a) => (a, opts.flags() | mm::FIXED),
            None => (0, opts.flags()),
        };
        let (addr, owner) = match fd.inner() {
            Inner::Host(fd) => {
                // SAFETY: with an address, the caller vouches for the range.
                let addr = unsafe { mm::map_shared(addr, fd.as_fd(), len, PROT_RW, flags, 0) };
                (addr.map_err(VepcError::mmap)?, Owner::Host)
            }
            Inner::Emulated(file) => {
                let device = file
                    .device()
                    .ok_or(VepcError::mmap(crate::abi::Errno::ENODEV))?;
                // SAFETY: with an address, the caller vouches for the range.
                let addr = unsafe { file.mmap(addr, len, PROT_RW, flags, 0) };
                (addr.map_err(VepcError::mmap)?, Owner::Emulated(device))
            }
        };
        Ok(Self {
            addr,
            len: len.next_multiple_of(4096),
            owner,
        })
    }

    /// Start address, for a KVM memory slot's `userspace_addr`.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (it never is: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps another instance over this region's range in place (`MAP_FIXED`), so the
    /// guest's memory layout stays while the old instance's mapping goes: the reset on
    /// kernels without REMOVE_ALL. `fd` must be of the same device as the region's.
    pub fn remap(&mut self, fd: &VepcFd, opts: MapOptions) -> Result<(), VepcError> {
        let same_kind = matches!(
            (&self.owner, fd.inner()),
            (Owner::Host, Inner::Host(_)) | (Owner::Emulated(_), Inner::Emulated(_))
        );
        if !same_kind {
            return Err(VepcError::InvalidArgument {
                op: "remap",
                hint: "a region can be remapped only with an instance of its own device",
            });
        }
        // SAFETY: the range is this region's own mapping, replaced in place.
        let new = unsafe { Self::new(fd, Some(self.addr), self.len, opts) }?;
        // The new mapping owns the range now; the old one went with the MAP_FIXED.
        std::mem::forget(new);
        Ok(())
    }
}

impl Drop for EpcRegion {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by this region and is unmapped only here; it is
        // handed out as an address, never as a Rust reference.
        let _ = unsafe { mm::unmap(self.addr, self.len) };
        if let Owner::Emulated(d) = &self.owner {
            d.unmapped(self.addr, self.len);
        }
    }
}
