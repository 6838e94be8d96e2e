//! What the flags `sgx_vepc_mmap` gives a mapping (`VM_PFNMAP | VM_IO | VM_DONTDUMP |
//! VM_DONTCOPY`, on top of `VM_SHARED`) decide for the calls that act on mappings:
//! `madvise`, `mlock`, `mremap`, and access from another address space.

use crate::abi::Errno;

/// `MADV_*` values (`include/uapi/asm-generic/mman-common.h`).
pub mod advice {
    #![allow(missing_docs)]
    pub const NORMAL: i32 = 0;
    pub const RANDOM: i32 = 1;
    pub const SEQUENTIAL: i32 = 2;
    pub const WILLNEED: i32 = 3;
    pub const DONTNEED: i32 = 4;
    pub const FREE: i32 = 8;
    pub const REMOVE: i32 = 9;
    pub const DONTFORK: i32 = 10;
    pub const DOFORK: i32 = 11;
    pub const MERGEABLE: i32 = 12;
    pub const UNMERGEABLE: i32 = 13;
    pub const HUGEPAGE: i32 = 14;
    pub const NOHUGEPAGE: i32 = 15;
    pub const DONTDUMP: i32 = 16;
    pub const DODUMP: i32 = 17;
    pub const WIPEONFORK: i32 = 18;
    pub const KEEPONFORK: i32 = 19;
    pub const COLD: i32 = 20;
    pub const PAGEOUT: i32 = 21;
    pub const POPULATE_READ: i32 = 22;
    pub const POPULATE_WRITE: i32 = 23;
    pub const DONTNEED_LOCKED: i32 = 24;
    pub const COLLAPSE: i32 = 25;
    pub const HWPOISON: i32 = 100;
    pub const SOFT_OFFLINE: i32 = 101;
    pub const GUARD_INSTALL: i32 = 102;
    pub const GUARD_REMOVE: i32 = 103;
}

/// The `MADV_*` name of `advice`, for logs.
pub fn advice_name(advice: i32) -> Option<&'static str> {
    use advice::*;
    Some(match advice {
        NORMAL => "MADV_NORMAL",
        RANDOM => "MADV_RANDOM",
        SEQUENTIAL => "MADV_SEQUENTIAL",
        WILLNEED => "MADV_WILLNEED",
        DONTNEED => "MADV_DONTNEED",
        FREE => "MADV_FREE",
        REMOVE => "MADV_REMOVE",
        DONTFORK => "MADV_DONTFORK",
        DOFORK => "MADV_DOFORK",
        MERGEABLE => "MADV_MERGEABLE",
        UNMERGEABLE => "MADV_UNMERGEABLE",
        HUGEPAGE => "MADV_HUGEPAGE",
        NOHUGEPAGE => "MADV_NOHUGEPAGE",
        DONTDUMP => "MADV_DONTDUMP",
        DODUMP => "MADV_DODUMP",
        WIPEONFORK => "MADV_WIPEONFORK",
        KEEPONFORK => "MADV_KEEPONFORK",
        COLD => "MADV_COLD",
        PAGEOUT => "MADV_PAGEOUT",
        POPULATE_READ => "MADV_POPULATE_READ",
        POPULATE_WRITE => "MADV_POPULATE_WRITE",
        DONTNEED_LOCKED => "MADV_DONTNEED_LOCKED",
        COLLAPSE => "MADV_COLLAPSE",
        HWPOISON => "MADV_HWPOISON",
        SOFT_OFFLINE => "MADV_SOFT_OFFLINE",
        GUARD_INSTALL => "MADV_GUARD_INSTALL",
        GUARD_REMOVE => "MADV_GUARD_REMOVE",
        _ => return None,
    })
}

/// Whether Linux 6.18 knows `advice` at all (`madvise_behavior_valid`): an unknown one
/// is `EINVAL` before any mapping is looked at.
pub fn known_advice(advice: i32) -> bool {
    matches!(advice, 0..=4 | 8..=25 | 100..=103)
}

/// `madvise(addr, len, advice)` on (a part of) a vEPC mapping, as `mm/madvise.c` of
/// 6.18 answers it for that VMA. `Ok(())`: the advice is taken and changes nothing a
/// program can observe on vEPC (its flags only, or nothing at all).
///
/// | advice | answer | why (`mm/madvise.c` unless named) |
/// | --- | --- | --- |
/// | `NORMAL`, `RANDOM`, `SEQUENTIAL`, `DONTFORK`, `KEEPONFORK`, `DONTDUMP`, `HUGEPAGE`, `NOHUGEPAGE` | 0 | flags only |
/// | `WILLNEED` | 0 | `vfs_fadvise` on a device without a backing store ignores it |
/// | `MERGEABLE`, `UNMERGEABLE` | 0 | `ksm_madvise` skips `VM_SHARED`/`VM_PFNMAP` mappings |
/// | `DONTNEED`, `DONTNEED_LOCKED`, `FREE` | `EINVAL` | `madvise_dontneed_free_valid_vma`: `VM_PFNMAP` |
/// | `REMOVE` | `ENODEV` | `madvise_remove` → `vfs_fallocate` on a character device |
/// | `DOFORK` | `EINVAL` | `VM_IO` mappings are never copied |
/// | `DODUMP` | `EINVAL` | `VM_SPECIAL` mappings are never dumped |
/// | `WIPEONFORK` | `EINVAL` | only private anonymous memory |
/// | `COLD`, `PAGEOUT` | `EINVAL` | `can_madv_lru_vma`: `VM_PFNMAP` |
/// | `POPULATE_READ`, `POPULATE_WRITE` | `EINVAL` | `mm/gup.c`: `check_vma_flags` refuses `VM_IO\|VM_PFNMAP` (5.14) |
/// | `COLLAPSE` | `EINVAL` | no transparent huge pages on `VM_PFNMAP` (6.1) |
/// | `GUARD_INSTALL`, `GUARD_REMOVE` | `EINVAL` | `is_valid_guard_vma`: `VM_SPECIAL` (6.13; unknown before) |
/// | `HWPOISON`, `SOFT_OFFLINE` | `EPERM` without `CAP_SYS_ADMIN`, else `EFAULT` | `madvise_inject_error`: GUP refuses the page |
/// | anything else | `EINVAL` | `madvise_behavior_valid` |
pub fn madvise(advice: i32, cap_sys_admin: bool) -> Result<(), Errno> {
    use advice::*;
    match advice {
        NORMAL | RANDOM | SEQUENTIAL | WILLNEED | DONTFORK | KEEPONFORK | DONTDUMP | HUGEPAGE
        | NOHUGEPAGE | MERGEABLE | UNMERGEABLE => Ok(()),
        REMOVE => Err(Errno::ENODEV),
        HWPOISON | SOFT_OFFLINE if !cap_sys_admin => Err(Errno::EPERM),
        HWPOISON | SOFT_OFFLINE => Err(Errno::EFAULT),
        _ => Err(Errno::EINVAL),
    }
}

/// `mlock`, `mlock2`, `munlock`, `mlockall`, and `MAP_POPULATE`/`MAP_LOCKED` on a vEPC
/// mapping: `mlock_fixup` leaves a `VM_SPECIAL` mapping unlocked and `__mm_populate`
/// skips `VM_IO|VM_PFNMAP` ones, so nothing is faulted in and the call answers as if
/// the mapping were not there (`mm/mlock.c`, `mm/gup.c`).
pub const LOCK: &str = "nothing faulted in or locked; the call goes on with the rest";

/// `/proc/PID/mem` and `process_vm_readv`/`process_vm_writev` on a vEPC mapping: GUP
/// refuses `VM_IO|VM_PFNMAP` and the driver has no `access` operation, so
/// `/proc/PID/mem` answers `EIO` and `process_vm_*` stops there (`EFAULT` when
/// nothing was moved) (`mm/memory.c` `__access_remote_vm`, `mm/process_vm_access.c`).
pub const REMOTE_ACCESS: &str = "EIO from /proc/PID/mem, EFAULT from process_vm_*";

/// `MREMAP_*` values (`include/uapi/linux/mman.h`).
pub mod remap {
    #![allow(missing_docs)]
    pub const MAYMOVE: i32 = 1;
    pub const FIXED: i32 = 2;
    pub const DONTUNMAP: i32 = 4;
}

/// What an `mremap` of a vEPC mapping does, once the VFS's own argument checks passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remap {
    /// The same length in place: nothing changes.
    Nothing,
    /// The tail past `new_len` is unmapped, in place.
    Shrink,
    /// The mapping (shrunk to `new_len` first, if shorter) moves to another address.
    Move,
}

/// `mremap(old, old_len, new_len, flags, new)` of a range that lies in one vEPC
/// mapping, after the generic checks (alignment, flags, overlap: the kernel's own): a
/// vEPC mapping can shrink and move but never grow (`VM_PFNMAP`), and never be left
/// behind with `MREMAP_DONTUNMAP` (`mm/mremap.c` `check_prep_vma`, 6.18; the same
/// checks in `vma_to_resize` before).
pub fn mremap(old_len: u64, new_len: u64, flags: i32, moves: bool) -> Result<Remap, Errno> {
    if flags & remap::DONTUNMAP != 0 {
        return Err(Errno::EINVAL);
    }
    if new_len > old_len {
        return Err(Errno::EFAULT);
    }
    Ok(if moves {
        Remap::Move
    } else if new_len < old_len {
        Remap::Shrink
    } else {
        Remap::Nothing
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn populate_and_dontneed_are_refused() {
        assert_eq!(madvise(advice::POPULATE_WRITE, true), Err(Errno::EINVAL));
        assert_eq!(madvise(advice::POPULATE_READ, true), Err(Errno::EINVAL));
        assert_eq!(madvise(advice::DONTNEED, true), Err(Errno::EINVAL));
        assert_eq!(madvise(advice::REMOVE, true), Err(Errno::ENODEV));
        assert_eq!(madvise(advice::DONTFORK, false), Ok(()));
        assert_eq!(madvise(advice::DOFORK, false), Err(Errno::EINVAL));
        assert_eq!(madvise(advice::HWPOISON, false), Err(Errno::EPERM));
        assert_eq!(madvise(999, true), Err(Errno::EINVAL));
    }

    #[test]
    fn a_vepc_mapping_never_grows() {
        assert_eq!(
            mremap(8192, 16384, remap::MAYMOVE, true),
            Err(Errno::EFAULT)
        );
        assert_eq!(mremap(0, 4096, remap::MAYMOVE, true), Err(Errno::EFAULT));
        assert_eq!(mremap(8192, 4096, 0, false), Ok(Remap::Shrink));
        assert_eq!(
            mremap(8192, 8192, remap::MAYMOVE | remap::FIXED, true),
            Ok(Remap::Move)
        );
        assert_eq!(
            mremap(8192, 8192, remap::MAYMOVE | remap::DONTUNMAP, true),
            Err(Errno::EINVAL)
        );
    }
}
