//! [`EpcRegion`]: a mapping of a vEPC instance, handed out as an address and a length.

use std::os::fd::AsFd;
use std::sync::Arc;

use super::VepcFd;
use super::emulated::Emulated;
use super::error::VepcError;
use super::fd::{Identity, Inner};
use crate::driver::surface::flags::{MAP_FIXED, MAP_NORESERVE, MAP_POPULATE, MAP_SHARED};
use crate::driver::surface::mmap::MmapRequest;
use crate::sys::mm;

/// How to map a vEPC instance, beyond `MAP_SHARED` and read-write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapOptions {
    /// `MAP_NORESERVE`.
    pub noreserve: bool,
    /// `MAP_POPULATE`, passed to the kernel as asked. Linux faults nothing in for a
    /// vEPC mapping (`__mm_populate` skips `VM_IO | VM_PFNMAP` mappings), and neither
    /// does the emulated device: each page still takes its EPC page at its first
    /// touch. Touch the pages to fault them in.
    pub populate: bool,
}

impl MapOptions {
    fn flags(self) -> i32 {
        let mut f = MAP_SHARED;
        if self.noreserve {
            f |= MAP_NORESERVE;
        }
        if self.populate {
            f |= MAP_POPULATE;
        }
        f
    }
}

/// Read and write: how vEPC is always mapped here.
const PROT_RW: i32 =
    crate::driver::surface::flags::PROT_READ | crate::driver::surface::flags::PROT_WRITE;

/// A `MAP_SHARED` mapping of a vEPC instance, unmapped on drop.
///
/// It is deliberately not a slice: EPC is not ordinary memory (reads from outside an
/// enclave see an abort page, writes are dropped). Hand [`addr`](Self::addr) and
/// [`len`](Self::len) to KVM as a memory slot. On an emulated device the mapping keeps
/// its instance alive (as a VMA keeps its file) and the instance its device.
#[derive(Debug)]
pub struct EpcRegion {
    addr: usize,
    len: usize,
    owner: Owner,
}

/// Who made the mapping, and so who unmaps it.
#[derive(Debug)]
enum Owner {
    /// The host's kernel; the region unmaps its own range.
    Host {
        /// The file mapped.
        file: Identity,
    },
    /// The emulated device; the region's pieces are known by their token.
    Emulated {
        device: Arc<Emulated>,
        token: u64,
        file: Identity,
    },
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
            Some(a) => (a, opts.flags() | MAP_FIXED),
            None => (0, opts.flags()),
        };
        let fail = |e| VepcError::mmap(e, len, at);
        let owner_file = fd.identity();
        let (addr, owner) = match fd.inner() {
            Inner::Host(host) => {
                // SAFETY: with an address, the caller vouches for the range.
                let addr = unsafe { mm::map_file(addr, host.as_fd(), len, PROT_RW, flags, 0) };
                (addr.map_err(fail)?, Owner::Host { file: owner_file })
            }
            Inner::Emulated { file, .. } => {
                let req = MmapRequest {
                    addr: addr as u64,
                    len: len as u64,
                    prot: PROT_RW,
                    flags,
                    offset: 0,
                };
                // SAFETY: with an address, the caller vouches for the range.
                let (addr, token) = unsafe { file.mmap_token(&req) }.map_err(fail)?;
                let device = Arc::clone(file.device());
                (
                    addr,
                    Owner::Emulated {
                        device,
                        token,
                        file: owner_file,
                    },
                )
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

    /// Whether this region is a mapping of `fd`'s instance.
    pub fn maps(&self, fd: &VepcFd) -> bool {
        let file = match &self.owner {
            Owner::Host { file } | Owner::Emulated { file, .. } => file,
        };
        *file == fd.identity()
    }

    /// Maps another instance over this region's range in place (`MAP_FIXED`), so the
    /// guest's memory layout stays while the old instance's mapping goes: the reset on
    /// kernels without REMOVE_ALL. `fd` must be an instance of the same device as the
    /// region's ([`VepcError::InvalidArgument`] otherwise, and nothing changes).
    pub fn remap(&mut self, fd: &VepcFd, opts: MapOptions) -> Result<(), VepcError> {
        let same_device = match (&self.owner, fd.inner()) {
            (Owner::Host { .. }, Inner::Host(_)) => true,
            (Owner::Emulated { device, .. }, Inner::Emulated { file, .. }) => {
                Arc::ptr_eq(device, file.device())
            }
            _ => false,
        };
        if !same_device {
            return Err(VepcError::InvalidArgument {
                op: "remap",
                hint: "a region can be remapped only with an instance of its own device",
            });
        }
        // SAFETY: the range is this region's own mapping, replaced in place.
        let new = unsafe { Self::new(fd, Some(self.addr), self.len, opts) }?;
        // The new mapping took the range and the old one went with the MAP_FIXED.
        let old = std::mem::replace(self, new);
        match old.owner {
            // Its owner is plain data: forgetting it keeps its drop from unmapping the
            // new mapping's range.
            Owner::Host { .. } => std::mem::forget(old),
            // Its token has no pieces left: dropping it unmaps nothing.
            Owner::Emulated { .. } => drop(old),
        }
        Ok(())
    }
}

impl Drop for EpcRegion {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Host { .. } => {
                // SAFETY: the range was mapped by this region and is unmapped only
                // here; it is handed out as an address, never as a Rust reference.
                let _ = unsafe { mm::unmap(self.addr, self.len) };
            }
            Owner::Emulated { device, token, .. } => device.unmap_token(*token),
        }
    }
}
