//! Shared mappings of a file: made where the kernel chooses or at a fixed address,
//! advised, and unmapped.
//!
//! Addresses are plain `usize`s: vEPC memory is handed out as an address and a length,
//! never as a Rust reference, so nothing in Rust points into it.

use std::ffi::c_void;
use std::os::fd::BorrowedFd;

use rustix::mm::{Advice, MapFlags, ProtFlags};

use crate::abi::Errno;

/// `mmap(addr, len, prot, MAP_SHARED | flags, fd, offset)`, as mmap(2) has it: with
/// `MAP_FIXED` in `flags` the mapping replaces whatever is at `addr`, without it
/// `addr` is a hint.
///
/// # Safety
///
/// With `MAP_FIXED`, `addr..addr + len` must be a range the caller owns (reserved for
/// this mapping, or a mapping it made), into which no Rust reference points.
pub(crate) unsafe fn map_shared(
    addr: usize,
    fd: BorrowedFd<'_>,
    len: usize,
    prot: i32,
    flags: i32,
    offset: u64,
) -> Result<usize, Errno> {
    // SAFETY: the caller vouches for the range when it asks for MAP_FIXED; otherwise
    // the kernel maps a range no other mapping uses.
    let p = unsafe {
        rustix::mm::mmap(
            addr as *mut c_void,
            len,
            prot_flags(prot),
            shared(flags),
            fd,
            offset,
        )
    };
    p.map(|p| p as usize).map_err(super::errno)
}

/// `MAP_FIXED`, for callers building flags.
pub(crate) const FIXED: i32 = MapFlags::FIXED.bits() as i32;

/// `munmap(addr, len)`.
///
/// # Safety
///
/// The range must be one the caller mapped and no longer uses, and into which no Rust
/// reference points.
pub(crate) unsafe fn unmap(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: the caller vouches for the range.
    unsafe { rustix::mm::munmap(addr as *mut c_void, len) }.map_err(super::errno)
}

/// `madvise(MADV_POPULATE_WRITE)` (`_READ` when not writable): faults every page of
/// the range in through the normal fault path, as `MAP_POPULATE` does.
pub(crate) fn populate(addr: usize, len: usize, writable: bool) -> Result<(), Errno> {
    let advice = if writable {
        Advice::LinuxPopulateWrite
    } else {
        Advice::LinuxPopulateRead
    };
    // SAFETY: populating only faults pages in (a hole of a shared file reads as
    // zeroes before and after); no data anybody wrote changes.
    unsafe { rustix::mm::madvise(addr as *mut c_void, len, advice) }.map_err(super::errno)
}

/// `madvise(MADV_NOHUGEPAGE)`: every first touch takes one 4 KiB page, as a vEPC
/// fault does, never a 2 MiB one.
pub(crate) fn no_huge_pages(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: advice about the page size of future faults; no data changes.
    unsafe { rustix::mm::madvise(addr as *mut c_void, len, Advice::LinuxNoHugepage) }
        .map_err(super::errno)
}

fn shared(flags: i32) -> MapFlags {
    // The sharing type is ours to set; the caller's other flags pass.
    let mut f = MapFlags::from_bits_retain(flags as u32);
    f.remove(MapFlags::PRIVATE);
    f | MapFlags::SHARED
}

fn prot_flags(prot: i32) -> ProtFlags {
    ProtFlags::from_bits_retain(prot as u32)
}
