//! Mappings: made where the kernel chooses or at a fixed address, protected, advised,
//! moved, and unmapped.
//!
//! Addresses are plain `usize`s: vEPC memory is handed out as an address and a length,
//! never as a Rust reference, so nothing in Rust points into it.

use std::ffi::c_void;
use std::os::fd::BorrowedFd;

use rustix::mm::{Advice, MapFlags, MprotectFlags, MremapFlags, ProtFlags};

use crate::abi::Errno;

/// `mmap(addr, len, prot, flags, fd, offset)` of a file, as mmap(2) has it: with
/// `MAP_FIXED` in `flags` the mapping replaces whatever is at `addr`, without it `addr`
/// is a hint. For the host's device, whose driver decides the rest.
///
/// # Safety
///
/// With `MAP_FIXED`, `addr..addr + len` must be a range the caller owns (reserved for
/// this mapping, or a mapping it made), into which no Rust reference points.
pub(crate) unsafe fn map_file(
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
            ProtFlags::from_bits_retain(prot as u32),
            MapFlags::from_bits_retain(flags as u32),
            fd,
            offset,
        )
    };
    p.map(|p| p as usize).map_err(super::errno)
}

/// `mmap(addr, len, prot, MAP_SHARED | MAP_FIXED [| MAP_NORESERVE], fd, offset)`.
///
/// # Safety
///
/// `addr..addr + len` must be a range the caller owns (reserved for this mapping, or a
/// mapping it made), into which no Rust reference points.
pub(crate) unsafe fn map_fixed_shared(
    addr: usize,
    fd: BorrowedFd<'_>,
    len: usize,
    prot: i32,
    offset: u64,
    noreserve: bool,
) -> Result<(), Errno> {
    let mut flags = MapFlags::SHARED | MapFlags::FIXED;
    if noreserve {
        flags |= MapFlags::NORESERVE;
    }
    // SAFETY: the caller vouches for the range.
    let p = unsafe {
        rustix::mm::mmap(
            addr as *mut c_void,
            len,
            ProtFlags::from_bits_retain(prot as u32),
            flags,
            fd,
            offset,
        )
    };
    p.map(drop).map_err(super::errno)
}

/// `mmap(hint, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | extra)`:
/// an inaccessible reservation, which the kernel places as it would any mapping.
/// `extra` may hold `MAP_FIXED_NOREPLACE` and `MAP_32BIT`.
pub(crate) fn reserve(hint: usize, len: usize, extra: u32) -> Result<usize, Errno> {
    let flags = MapFlags::PRIVATE | MapFlags::NORESERVE | MapFlags::from_bits_retain(extra);
    // SAFETY: without MAP_FIXED the kernel replaces nothing (MAP_FIXED_NOREPLACE fails
    // rather than replace); the new range is inaccessible and no Rust reference points
    // into it.
    let p =
        unsafe { rustix::mm::mmap_anonymous(hint as *mut c_void, len, ProtFlags::empty(), flags) };
    p.map(|p| p as usize).map_err(super::errno)
}

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

/// `mprotect(addr, len, prot)`.
///
/// # Safety
///
/// The range must be the caller's mapping, into which no Rust reference points.
pub(crate) unsafe fn protect(addr: usize, len: usize, prot: i32) -> Result<(), Errno> {
    // SAFETY: the caller vouches for the range.
    unsafe {
        rustix::mm::mprotect(
            addr as *mut c_void,
            len,
            MprotectFlags::from_bits_retain(prot as u32),
        )
    }
    .map_err(super::errno)
}

/// `munlock(addr, len)`: the range is no longer locked (a mapping made while
/// `mlockall(MCL_FUTURE)` is in force is, unless told).
pub(crate) fn unlock(addr: usize, len: usize) -> Result<(), Errno> {
    // SAFETY: unlocking changes no data and no mapping.
    unsafe { rustix::mm::munlock(addr as *mut c_void, len) }.map_err(super::errno)
}

/// `madvise(MADV_POPULATE_WRITE)` (`_READ` when not writable): faults every page of
/// the range in through the normal fault path of the memory behind it.
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

/// What the emulated device tells the kernel about the memory behind a vEPC mapping,
/// so that it behaves as `sgx_vepc_mmap`'s flags make the real one: never copied into
/// a child (`VM_DONTCOPY`), never dumped (`VM_DONTDUMP`), and faulted one 4 KiB page
/// at a time, as a vEPC fault inserts one page.
pub(crate) fn advise_as_vepc(addr: usize, len: usize) -> Result<(), Errno> {
    for advice in [
        Advice::LinuxDontFork,
        Advice::LinuxDontDump,
        Advice::LinuxNoHugepage,
    ] {
        // SAFETY: advice about copying, dumping and page sizes; no data changes.
        unsafe { rustix::mm::madvise(addr as *mut c_void, len, advice) }.map_err(super::errno)?;
    }
    Ok(())
}

/// `mremap(old, old_len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED, new)`: the mapping
/// moves (and shrinks to `new_len` first, if shorter).
///
/// # Safety
///
/// Both ranges must be the caller's, into which no Rust reference points.
pub(crate) unsafe fn move_to(
    old: usize,
    old_len: usize,
    new_len: usize,
    new: usize,
) -> Result<(), Errno> {
    // SAFETY: the caller vouches for both ranges.
    unsafe {
        rustix::mm::mremap_fixed(
            old as *mut c_void,
            old_len,
            new_len,
            MremapFlags::MAYMOVE,
            new as *mut c_void,
        )
    }
    .map(drop)
    .map_err(super::errno)
}
