//! The real process's address space, as [`crate::driver::surface::mmap`] consults it:
//! the kernel itself answers where a mapping can go, through an inaccessible
//! reservation made the way the mapping would be.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::abi::Errno;
use crate::driver::surface::flags::{MAP_32BIT, MAP_FIXED, MAP_FIXED_NOREPLACE};
use crate::driver::surface::mmap::AddressSpace;
use crate::sys::mm;

/// Whether `mlockall(MCL_FUTURE)` is in force (the shim's `mlockall` hook says so).
static LOCK_FUTURE: AtomicBool = AtomicBool::new(false);

/// Tells the emulated device whether `mlockall(MCL_FUTURE)` is in force in this
/// process: a mapping made then counts against `RLIMIT_MEMLOCK` in `do_mmap`'s check,
/// though a vEPC mapping is never locked.
pub fn note_mlockall_future(on: bool) {
    LOCK_FUTURE.store(on, Ordering::Release);
}

/// This process, for one `mmap`.
#[derive(Debug, Default)]
pub(super) struct ProcessSpace {
    /// The reservation made for the mapping, if any: replaced by it, or unmapped.
    pub(super) reserved: Option<(usize, usize)>,
}

impl AddressSpace for ProcessSpace {
    fn too_many_mappings(&self) -> bool {
        // The reservation is a mapping too: past vm.max_map_count it gets ENOMEM.
        false
    }

    fn unmapped_area(&mut self, addr: u64, len: u64, flags: i32) -> Result<u64, Errno> {
        let (Ok(addr), Ok(len)) = (usize::try_from(addr), usize::try_from(len)) else {
            return Err(Errno::ENOMEM);
        };
        let wide = (flags & MAP_32BIT) as u32;
        if flags & MAP_FIXED == 0 {
            let at = mm::reserve(addr, len, wide)?;
            self.reserved = Some((at, len));
            return Ok(at as u64);
        }
        match mm::reserve(addr, len, wide | MAP_FIXED_NOREPLACE as u32) {
            // A kernel before 4.17 takes MAP_FIXED_NOREPLACE as a hint.
            Ok(at) if at != addr => {
                // SAFETY: the reservation just made, at an address nothing else uses.
                let _ = unsafe { mm::unmap(at, len) };
                occupied(flags, addr)
            }
            Ok(at) => {
                self.reserved = Some((at, len));
                Ok(at as u64)
            }
            Err(Errno::EEXIST) => occupied(flags, addr),
            Err(e) => Err(e),
        }
    }

    fn abandon(&mut self, addr: u64, len: u64) {
        if let Some((at, n)) = self.reserved.take() {
            debug_assert_eq!((at as u64, n as u64), (addr, len));
            // SAFETY: the reservation this space made, which nothing uses.
            let _ = unsafe { mm::unmap(at, n) };
        }
    }

    fn can_mlock(&self) -> bool {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        limit.current != Some(0) || crate::sys::caps::has(crate::sys::caps::IPC_LOCK)
    }

    fn may_lock(&self, map_locked: bool, len: u64) -> bool {
        if !map_locked && !LOCK_FUTURE.load(Ordering::Acquire) {
            return true;
        }
        if crate::sys::caps::has(crate::sys::caps::IPC_LOCK) {
            return true;
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Memlock);
        let Some(limit) = limit.current else {
            return true;
        };
        locked_bytes().saturating_add(len) <= limit
    }
}

/// `MAP_FIXED` over a range already mapped: allowed (it is replaced), unless asked
/// not to.
fn occupied(flags: i32, addr: usize) -> Result<u64, Errno> {
    if flags & MAP_FIXED_NOREPLACE != 0 {
        Err(Errno::EEXIST)
    } else {
        Ok(addr as u64)
    }
}

/// `VmLck` of `/proc/self/status`, in bytes.
fn locked_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmLck:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
