//! [`EpcRegion`]: a mapping of a vEPC instance, handed out as an address and a length.

use std::ffi::c_void;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use super::error::VepcError;

/// How to map a vEPC instance, beyond `MAP_SHARED` and read-write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapOptions {
    /// `MAP_NORESERVE`.
    pub noreserve: bool,
    /// `MAP_POPULATE`: fault every page in now (each takes an EPC page, or the
    /// mapping fails when the EPC is exhausted).
    pub populate: bool,
}

/// A `MAP_SHARED` mapping of a vEPC instance, unmapped on drop.
///
/// It is deliberately not a slice: EPC is not ordinary memory (reads from outside an
/// enclave see an abort page, writes are dropped). Hand [`addr`](Self::addr) and
/// [`len`](Self::len) to KVM as a memory slot.
#[derive(Debug)]
pub struct EpcRegion {
    addr: NonNull<c_void>,
    len: usize,
}

// SAFETY: the region is an address range owned by this value; nothing is ever read or
// written through the pointer, so moving or sharing it between threads is sound.
unsafe impl Send for EpcRegion {}
// SAFETY: as above; `&EpcRegion` only gives out the address and length.
unsafe impl Sync for EpcRegion {}

impl EpcRegion {
    pub(super) fn new(
        fd: BorrowedFd<'_>,
        at: Option<NonNull<c_void>>,
        len: usize,
        opts: MapOptions,
    ) -> Result<Self, VepcError> {
        let mut flags = MapFlags::SHARED;
        if opts.noreserve {
            flags |= MapFlags::NORESERVE;
        }
        if opts.populate {
            flags |= MapFlags::POPULATE;
        }
        let hint = match at {
            Some(a) => {
                flags |= MapFlags::FIXED;
                a.as_ptr()
            }
            None => std::ptr::null_mut(),
        };
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: without MAP_FIXED the kernel picks a free range, disturbing nothing;
        // with it, `VepcFd::map_fixed`'s caller vouched for the range, and `remap`
        // passes a range this region owns.
        let addr =
            unsafe { rustix::mm::mmap(hint, len, prot, flags, fd, 0) }.map_err(VepcError::mmap)?;
        let addr = NonNull::new(addr).ok_or(VepcError::Os {
            op: "mmap",
            errno: crate::abi::Errno::ENOMEM,
        })?;
        Ok(Self { addr, len })
    }

    /// Start address, for a KVM memory slot's `userspace_addr`.
    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (it never is: mmap refuses length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maps another instance over this region's range in place (`MAP_FIXED`), so the
    /// guest's memory layout stays while the old instance's mapping goes. This is the
    /// reset on kernels without REMOVE_ALL.
    pub fn remap(&mut self, fd: BorrowedFd<'_>, opts: MapOptions) -> Result<(), VepcError> {
        let new = Self::new(fd, Some(self.addr), self.len, opts)?;
        // The new mapping now owns the range; the old one is gone with it.
        std::mem::forget(new);
        Ok(())
    }
}

impl Drop for EpcRegion {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by this region and is unmapped only here.
        let _ = unsafe { rustix::mm::munmap(self.addr.as_ptr(), self.len) };
    }
}
