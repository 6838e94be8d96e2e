//! What Linux answers for every file operation a program can make on
//! `/dev/sgx_vepc`, and for what the flags of its mapping decide: one table, as
//! [`super::vfs`] is for the ioctls the VFS answers. The emulated device
//! ([`crate::device::Emulated`], and through it the `LD_PRELOAD` shim) and `vepc sim`
//! both ask these functions, so the two cannot disagree.
//!
//! The driver's own `file_operations` (`sgx_vepc_fops`, `virt.c`) are `open`,
//! `release`, `unlocked_ioctl`, `compat_ioctl` and `mmap`; every other call is the
//! VFS's or the memory manager's answer for a character device on devtmpfs with those
//! operations only. `sgx_vepc_mmap` gives the mapping `VM_PFNMAP | VM_IO | VM_DONTDUMP
//! | VM_DONTCOPY`, and those flags decide the rest. Linux 6.18 unless a row says
//! otherwise; every row holds from 5.13 (the device's first release) unless dated.
//!
//! | operation | Linux's answer on `/dev/sgx_vepc` | source | here |
//! | --- | --- | --- | --- |
//! | `open` | no node before 5.13: `ENOENT`; `O_CREAT\|O_EXCL` `EEXIST`; `O_DIRECTORY` (and `O_TMPFILE`) `ENOTDIR`; `O_TRUNC` ignored; then `sgx_vepc_open`: a new, empty instance; from 6.19 the first SGX user runs EUPDATESVN (`EAGAIN`, `EIO`) | `fs/namei.c` `do_open`, `fs/open.c` `do_dentry_open`, `virt.c` `sgx_vepc_open` | [`fs::open`] |
//! | `open(O_PATH)` | no driver open, no instance, no SGX user; `fstat` and `close` work, `read`, `write`, `ioctl`, `mmap` answer `EBADF` | `fs/open.c` `do_dentry_open` (`FMODE_PATH`), `fs/file.c` `fget` | [`fs::open`] |
//! | the access mode | `O_RDONLY` reads, `O_WRONLY` writes, `O_RDWR` both, 3 neither (ioctl only) | `include/linux/fs.h` `OPEN_FMODE` | [`Access::from_flags`] |
//! | `fcntl` | the VFS's, as for any file: `F_GETFL` is the open's flags with `O_LARGEFILE` | `fs/fcntl.c` | the kernel's own (the shim's descriptor is an open of `/dev/null` with the program's flags) |
//! | `read`, `readv`, `pread64`, `preadv`, `preadv2` | no read access `EBADF`; no `read` operation `EINVAL` (`pread64`: a negative position `EINVAL` first) | `fs/read_write.c` `vfs_read`, `ksys_pread64` | [`fs::transfer`] |
//! | `write`, `writev`, `pwrite64`, `pwritev`, `pwritev2` | the same with write access | `fs/read_write.c` `vfs_write` | [`fs::transfer`] |
//! | `lseek` | no `llseek` operation: `ESPIPE` (from 6.12 `FMODE_LSEEK` is cleared at open; before, `no_llseek`) | `fs/open.c` `do_dentry_open`, `fs/read_write.c` `vfs_llseek` | [`fs::lseek`] |
//! | `ftruncate`, `truncate` | a negative length `EINVAL`; not a regular file `EINVAL` | `fs/open.c` `do_ftruncate`, `vfs_truncate` | [`fs::truncate`] |
//! | `fallocate`, `posix_fallocate` | offset < 0 or length <= 0 `EINVAL`; unknown mode bits `EOPNOTSUPP`; no write access `EBADF`; not a regular file or block device `ENODEV` | `fs/open.c` `vfs_fallocate` | [`fs::fallocate`] |
//! | `fstat`, `statx` | the node: a character device, misc major 10 | `fs/stat.c` | faked (mode 0600, owned by the caller, 10:125) |
//! | `ioctl` | [`super::vfs`], then `sgx_vepc_ioctl` | `fs/ioctl.c`, `virt.c` | [`super::vfs`] |
//! | `mmap`: length, offset, room | an offset not page-aligned `EINVAL`; length 0 `EINVAL`; a length that rounds to 0 `ENOMEM`; an offset range that wraps `EOVERFLOW`; more than `vm.max_map_count` mappings `ENOMEM`; no room below `TASK_SIZE` `ENOMEM`; `MAP_FIXED_NOREPLACE` over a mapping `EEXIST`; past a character device's limit (`ULONG_MAX` bytes) `EOVERFLOW` | `arch/x86/kernel/sys_x86_64.c`, `mm/mmap.c` `do_mmap`, `file_mmap_ok` | [`mmap::mmap`] |
//! | `mmap`: flags | `MAP_HUGETLB` `EINVAL`; with `MAP_SHARED` unknown flags are ignored; with `MAP_SHARED_VALIDATE` any flag outside `LEGACY_MAP_MASK` (`MAP_SYNC`, `MAP_FIXED_NOREPLACE`, …) `EOPNOTSUPP`; `MAP_LOCKED` without `RLIMIT_MEMLOCK` or `CAP_IPC_LOCK` `EPERM`; `MAP_GROWSDOWN` `EINVAL`; neither shared nor private `EINVAL` | `mm/mmap.c` `ksys_mmap_pgoff`, `do_mmap` | [`mmap::mmap`] |
//! | `mmap`: access | shared `PROT_WRITE` without write access `EACCES`; no read access `EACCES`; a shared mapping of a read-only open loses `VM_SHARED`, and `sgx_vepc_mmap` then says `EINVAL`, as it does for `MAP_PRIVATE` | `mm/mmap.c` `do_mmap`, `virt.c` `sgx_vepc_mmap` | [`mmap::mmap`] |
//! | `MAP_POPULATE`, `MAP_LOCKED`, `mlock`, `mlock2`, `mlockall` | nothing is faulted in or locked: `__mm_populate` skips `VM_IO\|VM_PFNMAP` mappings and `mlock_fixup` leaves `VM_SPECIAL` ones alone; the call answers 0 | `mm/gup.c` `__mm_populate`, `mm/mlock.c` `mlock_fixup`, `mm/vma.c` `__mmap_region` | [`vma::LOCK`] |
//! | `madvise` | by advice, [`vma::madvise`]: `MADV_POPULATE_READ`/`WRITE` `EINVAL` (5.14); `MADV_DONTNEED`, `MADV_FREE`, `MADV_COLD`, `MADV_PAGEOUT`, `MADV_DOFORK`, `MADV_DODUMP`, `MADV_WIPEONFORK`, `MADV_COLLAPSE`, guard regions `EINVAL`; `MADV_REMOVE` `ENODEV`; the rest 0 | `mm/madvise.c`, `mm/gup.c` `check_vma_flags` | [`vma::madvise`] |
//! | `mprotect` | as any shared file mapping: `PROT_WRITE` without write access `EACCES` | `mm/mprotect.c` | the kernel's own |
//! | `mremap` | growing (and `old_len` 0, which grows from nothing) `EFAULT`; `MREMAP_DONTUNMAP` `EINVAL`; shrinking and moving as any mapping | `mm/mremap.c` | [`vma::mremap`] |
//! | `munmap` | the piece goes; the instance is released with its last reference (descriptor or mapping) | `mm/vma.c`, `virt.c` `sgx_vepc_release` | the emulated device |
//! | `fork` | `VM_DONTCOPY`: the child has no mapping there (a touch is `SIGSEGV`); the descriptor is shared | `kernel/fork.c` `dup_mmap` | `MADV_DONTFORK` on the memory |
//! | `/proc/PID/mem`, `process_vm_readv`/`writev` | GUP refuses `VM_IO\|VM_PFNMAP` and vEPC has no `access` operation: `EIO`, `EFAULT` | `mm/memory.c` `__access_remote_vm`, `mm/process_vm_access.c` | [`vma::REMOTE_ACCESS`] |
//! | core dump | `VM_DONTDUMP`: left out | `fs/coredump.c` `vma_dump_size` | `MADV_DONTDUMP` on the memory |
//! | `close`, `close_range`, `dup*` | the descriptor table's; release with the last reference | `fs/file.c` | the kernel's own |
//! | an access from outside an enclave (the VMM, a guest outside its enclaves) | abort-page semantics: reads return all ones, writes are dropped (SDM Vol. 3D §38.5.1) | the CPU | **not modelled**: real memory reads what was written |
//!
//! Rows the kernel answers only with the real device (`fstat`'s minor, given at
//! boot) are faked as said; the abort-page row cannot be given by ordinary memory.
//! `vepc-preload`'s tests run every row through the shim with a C client
//! (`crates/vepc-preload/tests/surface.rs`).

pub mod fs;
pub mod mmap;
pub mod vma;

/// What an open may do with the file: `f_mode`'s `FMODE_READ` and `FMODE_WRITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// `FMODE_READ`.
    pub read: bool,
    /// `FMODE_WRITE`.
    pub write: bool,
}

impl Access {
    /// Read and write: how the library opens the device.
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
    };

    /// From `open`'s flags: `OPEN_FMODE(flags)` is `(flags + 1) & O_ACCMODE`, so mode 3
    /// gives neither (an open for ioctls only).
    pub fn from_flags(flags: i32) -> Self {
        let mode = (flags + 1) & 3;
        Self {
            read: mode & 1 != 0,
            write: mode & 2 != 0,
        }
    }
}

/// x86-64 values of the flags the table reads (`asm-generic/mman-common.h`,
/// `asm/mman.h`, `asm-generic/fcntl.h`).
pub mod flags {
    #![allow(missing_docs)]
    pub const PROT_READ: i32 = 0x1;
    pub const PROT_WRITE: i32 = 0x2;
    pub const PROT_EXEC: i32 = 0x4;
    pub const MAP_SHARED: i32 = 0x01;
    pub const MAP_PRIVATE: i32 = 0x02;
    pub const MAP_SHARED_VALIDATE: i32 = 0x03;
    pub const MAP_TYPE: i32 = 0x0f;
    pub const MAP_FIXED: i32 = 0x10;
    pub const MAP_ANONYMOUS: i32 = 0x20;
    pub const MAP_32BIT: i32 = 0x40;
    pub const MAP_GROWSDOWN: i32 = 0x0100;
    pub const MAP_DENYWRITE: i32 = 0x0800;
    pub const MAP_EXECUTABLE: i32 = 0x1000;
    pub const MAP_LOCKED: i32 = 0x2000;
    pub const MAP_NORESERVE: i32 = 0x4000;
    pub const MAP_POPULATE: i32 = 0x8000;
    pub const MAP_NONBLOCK: i32 = 0x1_0000;
    pub const MAP_STACK: i32 = 0x2_0000;
    pub const MAP_HUGETLB: i32 = 0x4_0000;
    pub const MAP_SYNC: i32 = 0x8_0000;
    pub const MAP_FIXED_NOREPLACE: i32 = 0x10_0000;
    pub const MAP_UNINITIALIZED: i32 = 0x400_0000;
    pub const O_ACCMODE: i32 = 0o3;
    pub const O_CREAT: i32 = 0o100;
    pub const O_EXCL: i32 = 0o200;
    pub const O_DIRECTORY: i32 = 0o200000;
    pub const O_PATH: i32 = 0o10000000;
}
