//! The operating system underneath the hooks: the next definition of each hooked libc
//! function (found with `dlsym(RTLD_NEXT)`, so calls the shim makes itself never come
//! back into its own hooks), and the few system calls the model's stand-in file needs.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulong, c_void};

use vepc::abi::Errno;

/// A hooked function's answer when libc has no next definition of it: `ENOSYS`.
pub trait Failure {
    /// The C failure value.
    fn failure() -> Self;
}

impl Failure for c_int {
    fn failure() -> Self {
        -1
    }
}

impl Failure for *mut c_void {
    fn failure() -> Self {
        libc::MAP_FAILED
    }
}

impl Failure for isize {
    fn failure() -> Self {
        -1
    }
}

impl Failure for i64 {
    fn failure() -> Self {
        -1
    }
}

impl Failure for *mut libc::FILE {
    fn failure() -> Self {
        std::ptr::null_mut()
    }
}

/// The calling thread's `errno`.
pub fn errno() -> Errno {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    Errno::from_raw(unsafe { *libc::__errno_location() })
}

/// Sets the calling thread's `errno`.
pub fn set_errno(e: Errno) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e.raw() };
}

macro_rules! next {
    ($( $name:ident ( $($a:ident : $t:ty),* ) -> $r:ty; )*) => {
        /// The next definitions (normally glibc's) of the functions the shim hooks.
        pub mod real {
            use super::*;
            $(
                #[doc = concat!("glibc's `", stringify!($name), "`.")]
                ///
                /// # Safety
                /// As the C function: the caller passes what its manual page asks.
                pub unsafe fn $name($($a: $t),*) -> $r {
                    use std::sync::atomic::{AtomicUsize, Ordering};
                    static ADDR: AtomicUsize = AtomicUsize::new(0);
                    let mut f = ADDR.load(Ordering::Acquire);
                    if f == 0 {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: RTLD_NEXT and a NUL-terminated symbol name.
                        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
                        if f == 0 {
                            set_errno(Errno::from_raw(libc::ENOSYS));
                            return <$r as Failure>::failure();
                        }
                        ADDR.store(f, Ordering::Release);
                    }
                    // SAFETY: `f` is libc's definition of this function, whose C
                    // prototype is the one declared here (variadic arguments are read
                    // from the same registers on x86-64 as a fixed argument would be).
                    let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute(f) };
                    // SAFETY: the caller's contract is the C function's.
                    unsafe { f($($a),*) }
                }
            )*
        }
    };
}

next! {
    open(path: *const c_char, flags: c_int, mode: c_uint) -> c_int;
    open64(path: *const c_char, flags: c_int, mode: c_uint) -> c_int;
    openat(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int;
    openat64(dirfd: c_int, path: *const c_char, flags: c_int, mode: c_uint) -> c_int;
    __open_2(path: *const c_char, flags: c_int) -> c_int;
    __open64_2(path: *const c_char, flags: c_int) -> c_int;
    __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
    __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int;
    close(fd: c_int) -> c_int;
    close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(fd: c_int, to: c_int) -> c_int;
    dup3(fd: c_int, to: c_int, flags: c_int) -> c_int;
    fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int;
    ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int;
    mmap(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: libc::off_t) -> *mut c_void;
    mmap64(addr: *mut c_void, len: usize, prot: c_int, flags: c_int, fd: c_int, off: libc::off64_t) -> *mut c_void;
    munmap(addr: *mut c_void, len: usize) -> c_int;
    stat(path: *const c_char, buf: *mut libc::stat) -> c_int;
    stat64(path: *const c_char, buf: *mut libc::stat64) -> c_int;
    lstat(path: *const c_char, buf: *mut libc::stat) -> c_int;
    lstat64(path: *const c_char, buf: *mut libc::stat64) -> c_int;
    fstat(fd: c_int, buf: *mut libc::stat) -> c_int;
    fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int;
    fstatat(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int;
    fstatat64(dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int;
    statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: c_uint, buf: *mut libc::statx) -> c_int;
    access(path: *const c_char, mode: c_int) -> c_int;
    faccessat(dirfd: c_int, path: *const c_char, mode: c_int, flags: c_int) -> c_int;
    euidaccess(path: *const c_char, mode: c_int) -> c_int;
    eaccess(path: *const c_char, mode: c_int) -> c_int;
    closefrom(low: c_int) -> c_int;
    read(fd: c_int, buf: *mut c_void, n: usize) -> isize;
    write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    pread(fd: c_int, buf: *mut c_void, n: usize, off: i64) -> isize;
    pread64(fd: c_int, buf: *mut c_void, n: usize, off: i64) -> isize;
    pwrite(fd: c_int, buf: *const c_void, n: usize, off: i64) -> isize;
    pwrite64(fd: c_int, buf: *const c_void, n: usize, off: i64) -> isize;
    readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize;
    writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize;
    preadv(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64) -> isize;
    preadv64(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64) -> isize;
    pwritev(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64) -> isize;
    pwritev64(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64) -> isize;
    preadv2(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64, flags: c_int) -> isize;
    preadv64v2(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64, flags: c_int) -> isize;
    pwritev2(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64, flags: c_int) -> isize;
    pwritev64v2(fd: c_int, iov: *const libc::iovec, n: c_int, off: i64, flags: c_int) -> isize;
    lseek(fd: c_int, off: i64, whence: c_int) -> i64;
    lseek64(fd: c_int, off: i64, whence: c_int) -> i64;
    ftruncate(fd: c_int, len: i64) -> c_int;
    ftruncate64(fd: c_int, len: i64) -> c_int;
    truncate(path: *const c_char, len: i64) -> c_int;
    truncate64(path: *const c_char, len: i64) -> c_int;
    fallocate(fd: c_int, mode: c_int, off: i64, len: i64) -> c_int;
    fallocate64(fd: c_int, mode: c_int, off: i64, len: i64) -> c_int;
    posix_fallocate(fd: c_int, off: i64, len: i64) -> c_int;
    posix_fallocate64(fd: c_int, off: i64, len: i64) -> c_int;
    madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    posix_madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int;
    mlock(addr: *const c_void, len: usize) -> c_int;
    mlock2(addr: *const c_void, len: usize, flags: c_uint) -> c_int;
    munlock(addr: *const c_void, len: usize) -> c_int;
    mlockall(flags: c_int) -> c_int;
    munlockall() -> c_int;
    mremap(old: *mut c_void, old_len: usize, new_len: usize, flags: c_int, new: *mut c_void) -> *mut c_void;
    process_vm_readv(pid: libc::pid_t, local: *const libc::iovec, liovcnt: libc::c_ulong, remote: *const libc::iovec, riovcnt: libc::c_ulong, flags: libc::c_ulong) -> isize;
    process_vm_writev(pid: libc::pid_t, local: *const libc::iovec, liovcnt: libc::c_ulong, remote: *const libc::iovec, riovcnt: libc::c_ulong, flags: libc::c_ulong) -> isize;
    fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE;
    fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE;
    fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE;
}

/// The device node the shim answers for.
pub const VEPC_PATH: &CStr = c"/dev/sgx_vepc";

/// The node's major and minor. The real `/dev/sgx_vepc` is a misc device (major 10)
/// with a minor given at boot; this one is made up and stable.
pub const VEPC_RDEV: (u32, u32) = (10, 125);

/// `openat(AT_FDCWD, "/dev/null", flags, mode)` through glibc's next `openat`: the
/// program's descriptor for an open of the device. The kernel answers for it as for
/// any character device on devtmpfs without file operations of its own: `fcntl`'s
/// flags, `O_PATH`, `poll`; the hooks answer the rest.
pub fn open_null(flags: c_int, mode: c_uint) -> Result<c_int, Errno> {
    // SAFETY: a C string, flags and a mode.
    let fd = unsafe { real::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), flags, mode) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

/// Closes a descriptor the shim made and nobody else knows of.
pub fn close_own(fd: c_int) {
    // SAFETY: the descriptor is the caller's own, unused by anything else.
    unsafe { real::close(fd) };
}

/// Ends the process at once with `code`, running nothing of the program's: its
/// `atexit` handlers could call back into a shim that can no longer answer.
pub fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// A new descriptor for the same open file as `fd` (`F_DUPFD`, or `F_DUPFD_CLOEXEC`),
/// made through glibc's next `fcntl`, so the shim's own hook does not see it.
pub fn dup(fd: c_int, cloexec: bool) -> Result<c_int, Errno> {
    let cmd = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // SAFETY: F_DUPFD(_CLOEXEC) with a lowest-number argument of 0.
    let r = unsafe { real::fcntl(fd, cmd, 0) };
    if r < 0 { Err(errno()) } else { Ok(r) }
}

/// Copies `buf.len()` bytes from this process's address `addr`, as the kernel's
/// `copy_from_user` would from the caller's: `EFAULT` where it cannot.
pub fn read_memory(addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    transfer(addr, buf.as_mut_ptr(), buf.len(), false)
}

/// Copies `buf` to this process's address `addr`, as `copy_to_user` would: `EFAULT`
/// where it cannot.
pub fn write_memory(addr: u64, buf: &[u8]) -> Result<(), Errno> {
    transfer(addr, buf.as_ptr().cast_mut(), buf.len(), true)
}

/// `process_vm_readv` (or `_writev`) on our own pid between `local..local + len` and
/// the remote `addr`: the kernel reaches the remote range, answering EFAULT for an
/// address that is not mapped for the access, so nothing is dereferenced here.
fn transfer(addr: u64, local: *mut u8, len: usize, write: bool) -> Result<(), Errno> {
    let local = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: len,
    };
    // SAFETY: the local iovec is a live buffer of `len` bytes (written only when
    // reading); the remote range is the program's own ioctl argument, which it passed
    // for the kernel to read or write there.
    // glibc's, not the shim's own hook of the same name.
    let n = unsafe {
        if write {
            real::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0)
        } else {
            real::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0)
        }
    };
    if usize::try_from(n).ok() == Some(len) {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

/// Sets or clears `flag` among `fd`'s descriptor flags (`F_SETFD`) or, with `status`,
/// its open file's status flags (`F_SETFL`), through glibc's next `fcntl`.
pub fn set_fd_flag(fd: c_int, status: bool, flag: c_int, on: bool) {
    let (get, set) = if status {
        (libc::F_GETFL, libc::F_SETFL)
    } else {
        (libc::F_GETFD, libc::F_SETFD)
    };
    // SAFETY: F_GETFD/F_GETFL take no argument; F_SETFD/F_SETFL take the flags.
    unsafe {
        let old = real::fcntl(fd, get, 0);
        if old >= 0 {
            let new = if on { old | flag } else { old & !flag };
            real::fcntl(fd, set, new as c_ulong);
        }
    }
}

/// `fd`'s open file status flags (`F_GETFL`), 0 if it has none.
pub fn status_flags(fd: c_int) -> c_int {
    // SAFETY: F_GETFL takes no argument.
    unsafe { real::fcntl(fd, libc::F_GETFL, 0) }.max(0)
}

/// `st_dev` and whether it is a directory, for an open descriptor; `None` if `fd` is
/// not one. For a path instead, `fd` is -1 and `path` names it.
pub fn file_kind(fd: c_int, path: Option<&CStr>) -> Option<(u64, bool)> {
    // SAFETY: fstat/stat into a zeroed struct the kernel fills; next definitions, so
    // the shim's own fake stat does not answer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let r = match path {
            Some(p) => real::stat(p.as_ptr(), &mut st),
            None => real::fstat(fd, &mut st),
        };
        (r == 0).then_some((st.st_dev, st.st_mode & libc::S_IFMT == libc::S_IFDIR))
    }
}

/// What `stat` says of the made-up node: a character device, mode 0600, owned by
/// the caller, with [`VEPC_RDEV`]. The rest (`st_dev`, times) is `/dev/null`'s.
///
/// # Safety
/// `buf` must point to writable memory for a `struct stat`.
pub unsafe fn fake_stat(buf: *mut libc::stat) -> c_int {
    // SAFETY: the caller gives a writable `struct stat`.
    unsafe {
        if real::stat(c"/dev/null".as_ptr(), buf) != 0 {
            return -1;
        }
        let st = &mut *buf;
        st.st_mode = libc::S_IFCHR | 0o600;
        st.st_rdev = libc::makedev(VEPC_RDEV.0, VEPC_RDEV.1);
        st.st_ino = 0x5697_e9c0;
        st.st_uid = libc::geteuid();
        st.st_gid = libc::getegid();
        st.st_size = 0;
    }
    0
}

/// [`fake_stat`] for `statx`.
///
/// # Safety
/// `buf` must point to writable memory for a `struct statx`.
pub unsafe fn fake_statx(buf: *mut libc::statx, mask: c_uint) -> c_int {
    // SAFETY: the caller gives a writable `struct statx`.
    unsafe {
        if real::statx(libc::AT_FDCWD, c"/dev/null".as_ptr(), 0, mask, buf) != 0 {
            return -1;
        }
        let st = &mut *buf;
        st.stx_mode = (libc::S_IFCHR | 0o600) as u16;
        st.stx_rdev_major = VEPC_RDEV.0;
        st.stx_rdev_minor = VEPC_RDEV.1;
        st.stx_ino = 0x5697_e9c0;
        st.stx_uid = libc::geteuid();
        st.stx_gid = libc::getegid();
        st.stx_size = 0;
    }
    0
}
