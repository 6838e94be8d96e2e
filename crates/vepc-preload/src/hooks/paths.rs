//! Calls that name the device by its path (`open`, `stat`, `access`, `truncate`,
//! `fopen`), and `fstat` of the shim's descriptors: the node exists, as a character
//! device, from Linux 5.13.

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::os::unix::ffi::OsStrExt;

use serde_json::Value;
use vepc::abi::Errno;

use super::fail;
use crate::log::{hex, result};
use crate::state::{existing, shim};
use crate::sys::{self, VEPC_PATH, real};

/// Whether `path`, from `dirfd` (`AT_FDCWD` or a directory descriptor), names the
/// device ([`crate::path::names_device`]).
///
/// # Safety
/// `path` is null or a NUL-terminated string.
unsafe fn is_vepc(dirfd: c_int, path: *const c_char) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: per the function's contract.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    crate::path::names_device(bytes, || {
        let dir = if dirfd == libc::AT_FDCWD {
            std::env::current_dir().ok()
        } else {
            std::fs::read_link(format!("/proc/self/fd/{dirfd}")).ok()
        };
        dir.map(|d| d.as_os_str().as_bytes().to_vec())
    })
}

fn path_value() -> Value {
    VEPC_PATH.to_string_lossy().into_owned().into()
}

fn open_vepc(call: &str, flags: c_int, mode: c_uint) -> c_int {
    let shim = shim();
    let r = shim.open(flags, mode);
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
            #[allow(unused_variables)]
            let dir = libc::AT_FDCWD;
            $(let dir = $dirfd;)?
            #[allow(unused_variables)]
            let mode: c_uint = 0;
            $(let mode = $mode;)?
            // SAFETY: the caller passes a C string, as the function requires.
            if unsafe { is_vepc(dir, path) } {
                return open_vepc(stringify!($name), flags, mode);
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

/// `fopen` of the device: an open as `open` makes it, then glibc's `fdopen`. glibc's
/// own reads and writes of the stream go to the kernel directly, which answers for
/// the descriptor as for `/dev/null` (docs: the shim's limits).
///
/// # Safety
/// C strings.
unsafe fn fopen_vepc(call: &str, mode: *const c_char) -> *mut libc::FILE {
    if mode.is_null() {
        return fail(Errno::EINVAL);
    }
    // SAFETY: a C string per the contract.
    let Some(flags) = crate::path::fopen_flags(unsafe { CStr::from_ptr(mode) }.to_bytes()) else {
        return fail(Errno::EINVAL);
    };
    let fd = open_vepc(call, flags, 0o666);
    if fd < 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: the descriptor just opened and the caller's mode string.
    let f = unsafe { real::fdopen(fd, mode) };
    if f.is_null() {
        let e = sys::errno();
        // SAFETY: closes the descriptor just opened (through the hook: it is the
        // shim's).
        unsafe { fds::close(fd) };
        sys::set_errno(e);
    }
    f
}

use super::fds;

/// `fopen`: the device as a stream.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: C strings per the contract.
    unsafe {
        if is_vepc(libc::AT_FDCWD, path) {
            return fopen_vepc("fopen", mode);
        }
        real::fopen(path, mode)
    }
}

/// `fopen64`: as `fopen`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: C strings per the contract.
    unsafe {
        if is_vepc(libc::AT_FDCWD, path) {
            return fopen_vepc("fopen64", mode);
        }
        real::fopen64(path, mode)
    }
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
    ($( $name:ident ( path, buf: $buf:ty ); )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the device node is a character device.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, buf: $buf) -> c_int {
            // SAFETY: the caller passes a C string.
            if unsafe { is_vepc(libc::AT_FDCWD, path) } {
                // SAFETY: `struct stat64` is `struct stat` on x86-64.
                return unsafe { stat_vepc(stringify!($name), buf.cast()) };
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(path, buf) }
        }
    )*};
}

stat_hooks! {
    stat(path, buf: *mut libc::stat);
    stat64(path, buf: *mut libc::stat64);
    lstat(path, buf: *mut libc::stat);
    lstat64(path, buf: *mut libc::stat64);
}

/// Whether an `*at` call names the device: by path from `dirfd`, or with
/// `AT_EMPTY_PATH` the shim's descriptor itself.
///
/// # Safety
/// `path` is null or a C string.
unsafe fn at_vepc(dirfd: c_int, path: *const c_char, flags: c_int) -> bool {
    if path.is_null() {
        return false;
    }
    // SAFETY: a C string per the contract.
    if flags & libc::AT_EMPTY_PATH != 0 && unsafe { *path } == 0 {
        return existing().is_some_and(|s| s.fd(dirfd).is_some());
    }
    // SAFETY: as above.
    unsafe { is_vepc(dirfd, path) }
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
        if at_vepc(dirfd, path, flags) {
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
        if at_vepc(dirfd, path, flags) {
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
        if at_vepc(dirfd, path, flags) {
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
            #[allow(unused_variables)]
            let dir = libc::AT_FDCWD;
            $(let dir = $dirfd;)?
            // SAFETY: the caller passes a C string.
            if unsafe { is_vepc(dir, path) } {
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

macro_rules! truncate_hooks {
    ($( $name:ident; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the device has no length to set (`vfs_truncate`: `EINVAL`).")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(path: *const c_char, len: i64) -> c_int {
            // SAFETY: the caller passes a C string.
            if unsafe { is_vepc(libc::AT_FDCWD, path) } {
                return match node_or_enoent(stringify!($name)) {
                    Ok(()) => fail(vepc::driver::surface::fs::truncate(len)),
                    Err(e) => fail(e),
                };
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(path, len) }
        }
    )*};
}

truncate_hooks! {
    truncate;
    truncate64;
}
