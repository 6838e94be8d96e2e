//! The exported entry points: each has glibc's name and C prototype, so with
//! `LD_PRELOAD` the dynamic linker binds the program's calls here first. A call that
//! is not about `/dev/sgx_vepc` or one of the shim's descriptors goes straight on to
//! glibc ([`crate::sys::real`]) with its arguments unchanged.
//!
//! Variadic prototypes (`open`'s mode, `ioctl`'s and `fcntl`'s argument) are declared
//! with the argument as a fixed one: on x86-64 a caller passes it in the same register
//! either way, and reading it is what the kernel does too. That is how `arg` in the log
//! shows whatever a caller that passed no third argument left in `rdx`.

use std::ffi::{CStr, c_char, c_int, c_uint, c_ulong, c_void};
use std::os::fd::AsRawFd;

use serde_json::Value;
use vepc::abi::Errno;

use crate::log::{hex, result};
use crate::state::{Shim, existing, shim};
use crate::sys::{self, Failure, VEPC_PATH, errno, real, set_errno};

fn fail<T: Failure>(e: Errno) -> T {
    set_errno(e);
    T::failure()
}

/// Whether `path` names the device.
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn is_vepc(path: *const c_char) -> bool {
    // SAFETY: per the function's contract.
    !path.is_null() && unsafe { CStr::from_ptr(path) } == VEPC_PATH
}

fn path_value() -> Value {
    VEPC_PATH.to_string_lossy().into_owned().into()
}

fn open_vepc(call: &str, flags: c_int) -> c_int {
    let shim = shim();
    let r = shim.open(flags).and_then(|file| {
        // The program's descriptor is the instance's memfd, duplicated: the same open
        // file, so what it maps is the instance's memory.
        let fd = sys::dup(file.memfd().as_raw_fd(), flags & libc::O_CLOEXEC != 0)?;
        shim.opened(fd, file, flags);
        Ok(fd)
    });
    shim.log.line(
        call,
        vec![
            ("path", path_value()),
            ("flags", hex(flags as u32 as u64)),
            ("result", result(r)),
        ],
    );
    r.unwrap_or_else(fail)
}

macro_rules! open_hooks {
    ($( $name:ident ( $(at $dirfd:ident,)? path, flags $(, $mode:ident)? ); )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: opens of `/dev/sgx_vepc` get a model instance.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($dirfd: c_int,)? path: *const c_char, flags: c_int $(, $mode: c_uint)?) -> c_int {
            // SAFETY: the caller passes a C string, as the function requires.
            if unsafe { is_vepc(path) } {
                return open_vepc(stringify!($name), flags);
            }
            // SAFETY: the caller's arguments, passed on unchanged.
            unsafe { real::$name($($dirfd,)? path, flags $(, $mode)?) }
        }
    )*};
}

open_hooks! {
    open(path, flags, mode);
    open64(path, flags, mode);
    openat(at dirfd, path, flags, mode);
    openat64(at dirfd, path, flags, mode);
    __open_2(path, flags);
    __open64_2(path, flags);
    __openat_2(at dirfd, path, flags);
    __openat64_2(at dirfd, path, flags);
}

/// `close`: the last close of an instance (with no mapping left) releases it.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let Some(shim) = existing() else {
        // SAFETY: passed on unchanged.
        return unsafe { real::close(fd) };
    };
    let open = shim.closing(fd);
    // SAFETY: passed on unchanged.
    let r = unsafe { real::close(fd) };
    if let Some(o) = &open {
        let e = errno();
        shim.log.line(
            "close",
            vec![
                ("fd", fd.into()),
                ("instance", o.name().map_or(Value::Null, Value::from)),
                ("result", r.into()),
            ],
        );
        // After the close: the last reference going releases the instance.
        drop(open);
        set_errno(e);
    }
    r
}

/// `close_range`: closes the shim's descriptors in the range too.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: passed on unchanged.
    let r = unsafe { real::close_range(first, last, flags) };
    const CLOSE_RANGE_CLOEXEC: c_int = 1 << 2;
    if r == 0
        && flags & CLOSE_RANGE_CLOEXEC == 0
        && let Some(shim) = existing()
    {
        let last = c_int::try_from(last).unwrap_or(c_int::MAX);
        shim.closed_range(c_int::try_from(first).unwrap_or(c_int::MAX), last);
    }
    r
}

fn after_dup(old: c_int, new: c_int) -> c_int {
    if new >= 0
        && new != old
        && let Some(shim) = existing()
    {
        let e = errno();
        shim.duplicated(old, new);
        set_errno(e);
    }
    new
}

/// `dup`: the copy refers to the same open.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: passed on unchanged.
    after_dup(fd, unsafe { real::dup(fd) })
}

/// `dup2`: as `dup`, and `to` is closed first.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    // SAFETY: passed on unchanged.
    after_dup(fd, unsafe { real::dup2(fd, to) })
}

/// `dup3`: as `dup2`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    // SAFETY: passed on unchanged.
    after_dup(fd, unsafe { real::dup3(fd, to, flags) })
}

fn after_fcntl(fd: c_int, cmd: c_int, r: c_int) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        after_dup(fd, r)
    } else {
        r
    }
}

/// `fcntl`: `F_DUPFD` and `F_DUPFD_CLOEXEC` duplicate; the rest passes through.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: passed on unchanged.
    after_fcntl(fd, cmd, unsafe { real::fcntl(fd, cmd, arg) })
}

/// `fcntl64`: as `fcntl`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // SAFETY: passed on unchanged.
    after_fcntl(fd, cmd, unsafe { real::fcntl64(fd, cmd, arg) })
}

/// `ioctl`: on the shim's descriptors, the model's `sgx_vepc_ioctl` behind the VFS.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    let Some((shim, open)) = existing().and_then(|s| s.fd(fd).map(|o| (s, o))) else {
        // SAFETY: passed on unchanged.
        return unsafe { real::ioctl(fd, request, arg) };
    };
    match shim.ioctl(fd, &open, request, arg) {
        Ok(n) => c_int::try_from(n).unwrap_or(c_int::MAX),
        Err(e) => fail(e),
    }
}

/// The shim's `mmap` of one of its descriptors.
///
/// # Safety
/// As `mmap`; `fd` is the shim's.
unsafe fn mmap_vepc(
    shim: &Shim,
    open: &std::sync::Arc<crate::state::OpenFile>,
    call: &str,
    (addr, len, prot, flags, fd, off): (*mut c_void, usize, c_int, c_int, c_int, i64),
) -> *mut c_void {
    let log = |r: Result<u64, Errno>| {
        shim.log.line(
            call,
            vec![
                ("fd", fd.into()),
                ("instance", open.name().map_or(Value::Null, Value::from)),
                ("addr", hex(addr as u64)),
                ("len", (len as u64).into()),
                ("prot", hex(prot as u32 as u64)),
                ("flags", hex(flags as u32 as u64)),
                ("offset", off.into()),
                ("result", r.map_or_else(|e| e.to_string().into(), hex)),
            ],
        );
    };
    let pgoff = match shim.mmap_plan(open, (len, prot, flags, off)) {
        Ok(p) => p,
        Err(e) => {
            log(Err(e));
            return fail(e);
        }
    };
    // SAFETY: the program's own mapping request, with its address and flags: the
    // caller's contract is mmap(2)'s.
    let mapped = unsafe { open.file.mmap(addr as usize, len, prot, flags, pgoff) };
    match mapped {
        Ok(p) => {
            shim.mapped(open, pgoff, len);
            log(Ok(p as u64));
            p as *mut c_void
        }
        Err(e) => {
            log(Err(e));
            fail(e)
        }
    }
}

/// # Safety
/// As `mmap`.
unsafe fn mmap_any(
    call: &str,
    args: (*mut c_void, usize, c_int, c_int, c_int, i64),
    real_mmap: unsafe fn(*mut c_void, usize, c_int, c_int, c_int, i64) -> *mut c_void,
) -> *mut c_void {
    let (addr, len, prot, flags, fd, off) = args;
    let shim = existing();
    if fd >= 0
        && flags & libc::MAP_ANONYMOUS == 0
        && let Some(shim) = shim
        && let Some(open) = shim.fd(fd)
    {
        // SAFETY: the caller's contract; the descriptor is the shim's.
        return unsafe { mmap_vepc(shim, &open, call, args) };
    }
    // SAFETY: passed on unchanged.
    let p = unsafe { real_mmap(addr, len, prot, flags, fd, off) };
    if p != libc::MAP_FAILED
        && flags & libc::MAP_FIXED != 0
        && let Some(shim) = shim
    {
        // Whatever was mapped there before is gone.
        let e = errno();
        shim.unmapped(p as usize, len);
        set_errno(e);
    }
    p
}

/// `mmap`: a shared mapping of the shim's descriptor is a mapping of the instance.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off_t,
) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { mmap_any("mmap", (addr, len, prot, flags, fd, off), real::mmap) }
}

/// `mmap64`: as `mmap`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: libc::off64_t,
) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { mmap_any("mmap64", (addr, len, prot, flags, fd, off), real::mmap64) }
}

/// `munmap`: the instance's mapping shrinks or goes.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    // SAFETY: passed on unchanged.
    let r = unsafe { real::munmap(addr, len) };
    if r == 0
        && let Some(shim) = existing()
    {
        shim.unmapped(addr as usize, len.next_multiple_of(4096));
    }
    r
}

fn node_or_enoent(call: &str) -> Result<(), Errno> {
    let shim = shim();
    let r = if shim.node_exists() {
        Ok(())
    } else {
        Err(Errno::ENOENT)
    };
    shim.log.line(
        call,
        vec![("path", path_value()), ("result", result(r.map(|()| 0)))],
    );
    r
}

/// # Safety
/// `buf` is a writable `struct stat`.
unsafe fn stat_vepc(call: &str, buf: *mut libc::stat) -> c_int {
    match node_or_enoent(call) {
        // SAFETY: per the contract.
        Ok(()) => unsafe { sys::fake_stat(buf) },
        Err(e) => fail(e),
    }
}

macro_rules! stat_hooks {
    ($( $name:ident ( $(at $dirfd:ident,)? path, buf: $buf:ty $(, $flags:ident)? ); )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the device node is a character device.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($dirfd: c_int,)? path: *const c_char, buf: $buf $(, $flags: c_int)?) -> c_int {
            // SAFETY: the caller passes a C string.
            if unsafe { is_vepc(path) } {
                // SAFETY: `struct stat64` is `struct stat` on x86-64.
                return unsafe { stat_vepc(stringify!($name), buf.cast()) };
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name($($dirfd,)? path, buf $(, $flags)?) }
        }
    )*};
}

stat_hooks! {
    stat(path, buf: *mut libc::stat);
    stat64(path, buf: *mut libc::stat64);
    lstat(path, buf: *mut libc::stat);
    lstat64(path, buf: *mut libc::stat64);
}

/// Whether an `*at` call with `AT_EMPTY_PATH` is about the shim's descriptor.
///
/// # Safety
/// `path` is null or a C string.
unsafe fn empty_path_on_ours(dirfd: c_int, path: *const c_char, flags: c_int) -> bool {
    flags & libc::AT_EMPTY_PATH != 0
        && !path.is_null()
        // SAFETY: a C string per the contract.
        && unsafe { *path } == 0
        && existing().is_some_and(|s| s.fd(dirfd).is_some())
}

/// `fstatat`: the node, or the shim's descriptor with `AT_EMPTY_PATH`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: C strings and buffers per the contract.
    unsafe {
        if is_vepc(path) || empty_path_on_ours(dirfd, path, flags) {
            return stat_vepc("fstatat", buf);
        }
        real::fstatat(dirfd, path, buf, flags)
    }
}

/// `fstatat64`: as `fstatat`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstatat64(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    // SAFETY: C strings and buffers per the contract; stat64 is stat on x86-64.
    unsafe {
        if is_vepc(path) || empty_path_on_ours(dirfd, path, flags) {
            return stat_vepc("fstatat64", buf.cast());
        }
        real::fstatat64(dirfd, path, buf, flags)
    }
}

/// `fstat`: the shim's descriptors are the character device, as the real one's are.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    if existing().is_some_and(|s| s.fd(fd).is_some()) {
        // SAFETY: a writable stat buffer per the contract.
        return unsafe { sys::fake_stat(buf) };
    }
    // SAFETY: passed on unchanged.
    unsafe { real::fstat(fd, buf) }
}

/// `fstat64`: as `fstat`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int {
    if existing().is_some_and(|s| s.fd(fd).is_some()) {
        // SAFETY: a writable stat buffer; stat64 is stat on x86-64.
        return unsafe { sys::fake_stat(buf.cast()) };
    }
    // SAFETY: passed on unchanged.
    unsafe { real::fstat64(fd, buf) }
}

/// `statx`: as `fstatat`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: c_uint,
    buf: *mut libc::statx,
) -> c_int {
    // SAFETY: C strings and buffers per the contract.
    unsafe {
        if is_vepc(path) || empty_path_on_ours(dirfd, path, flags) {
            return match node_or_enoent("statx") {
                Ok(()) => sys::fake_statx(buf, mask),
                Err(e) => fail(e),
            };
        }
        real::statx(dirfd, path, flags, mask, buf)
    }
}

fn access_vepc(call: &str, mode: c_int) -> c_int {
    // Mode 0600 and owned by the caller: read and write, never execute.
    let executable = if mode & libc::X_OK != 0 {
        Err(Errno::EACCES)
    } else {
        Ok(())
    };
    match node_or_enoent(call).and(executable) {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

macro_rules! access_hooks {
    ($( $name:ident ( $(at $dirfd:ident,)? path, mode $(, $flags:ident)? ); )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the device node exists and is read-write.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($dirfd: c_int,)? path: *const c_char, mode: c_int $(, $flags: c_int)?) -> c_int {
            // SAFETY: the caller passes a C string.
            if unsafe { is_vepc(path) } {
                return access_vepc(stringify!($name), mode);
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name($($dirfd,)? path, mode $(, $flags)?) }
        }
    )*};
}

access_hooks! {
    access(path, mode);
    faccessat(at dirfd, path, mode, flags);
    euidaccess(path, mode);
    eaccess(path, mode);
}
