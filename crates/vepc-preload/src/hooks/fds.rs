//! Calls on descriptors: closing and duplicating them (the shim's own stay out of the
//! program's reach, [`vepc::sys::kept`]), `ioctl`, and the file operations the driver
//! does not have (`read`, `write`, `lseek`, `ftruncate`, `fallocate`), answered from
//! [`vepc::driver::surface::fs`].

use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::sync::Arc;

use serde_json::Value;
use vepc::abi::Errno;
use vepc::device::EmulatedFile;
use vepc::driver::surface::fs::{self as rules, Direction};
use vepc::sys::kept::{is_kept, kept_in};

use super::fail;
use crate::state::{OpenFile, existing};
use crate::sys::{errno, real, set_errno};

/// The open behind `fd` if it is one of the shim's with an instance (not `O_PATH`).
fn instance(fd: c_int) -> Option<(Arc<OpenFile>, Arc<EmulatedFile>)> {
    let open = existing()?.fd(fd)?;
    let file = open.file.clone()?;
    Some((open, file))
}

/// `close`: the last close of an instance (with no mapping left) releases it. The
/// shim's own descriptors are not the program's to close: `EBADF`, as for a number
/// it never opened.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if is_kept(fd) {
        return fail(Errno::EBADF);
    }
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

const CLOSE_RANGE_CLOEXEC: c_int = 1 << 2;

/// `close_range(first, last, flags)` around the shim's own descriptors, then the
/// shim's bookkeeping.
fn close_range_around(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let lo = c_int::try_from(first).unwrap_or(c_int::MAX);
    let hi = c_int::try_from(last).unwrap_or(c_int::MAX);
    let mut r = 0;
    let mut from = u64::from(first);
    for k in kept_in(lo, hi) {
        let k = k as u64;
        if k > from {
            // SAFETY: a range of descriptors that holds none of the shim's.
            r = r.min(unsafe { real::close_range(from as c_uint, (k - 1) as c_uint, flags) });
        }
        from = k + 1;
    }
    if from <= u64::from(last) {
        // SAFETY: as above.
        r = r.min(unsafe { real::close_range(from as c_uint, last, flags) });
    }
    if r == 0
        && flags & CLOSE_RANGE_CLOEXEC == 0
        && let Some(shim) = existing()
    {
        shim.closed_range(lo, hi);
    }
    r
}

/// `close_range`: closes the shim's instances in the range too, never its own
/// descriptors.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    if first > last {
        return fail(Errno::EINVAL);
    }
    close_range_around(first, last, flags)
}

/// `closefrom` (glibc 2.34): as `close_range(low, ~0U, 0)`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    let e = errno();
    let _ = close_range_around(low.max(0) as c_uint, c_uint::MAX, 0);
    set_errno(e);
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
    if is_kept(fd) {
        return fail(Errno::EBADF);
    }
    // SAFETY: passed on unchanged.
    after_dup(fd, unsafe { real::dup(fd) })
}

/// `dup2`: as `dup`, and `to` is closed first. Neither may be one of the shim's own
/// descriptors: `EBADF`, as for a number past the program's limit.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(fd: c_int, to: c_int) -> c_int {
    if is_kept(fd) || is_kept(to) {
        return fail(Errno::EBADF);
    }
    // SAFETY: passed on unchanged.
    after_dup(fd, unsafe { real::dup2(fd, to) })
}

/// `dup3`: as `dup2`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(fd: c_int, to: c_int, flags: c_int) -> c_int {
    if is_kept(fd) || is_kept(to) {
        return fail(Errno::EBADF);
    }
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

/// `fcntl`: `F_DUPFD` and `F_DUPFD_CLOEXEC` duplicate; the rest is the kernel's, on
/// the descriptor it made for the open.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    if is_kept(fd) {
        return fail(Errno::EBADF);
    }
    // SAFETY: passed on unchanged.
    after_fcntl(fd, cmd, unsafe { real::fcntl(fd, cmd, arg) })
}

/// `fcntl64`: as `fcntl`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    if is_kept(fd) {
        return fail(Errno::EBADF);
    }
    // SAFETY: passed on unchanged.
    after_fcntl(fd, cmd, unsafe { real::fcntl64(fd, cmd, arg) })
}

/// `ioctl`: on the shim's instances, the model's `sgx_vepc_ioctl` behind the VFS.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: c_ulong) -> c_int {
    if is_kept(fd) {
        return fail(Errno::EBADF);
    }
    let Some((open, file)) = instance(fd) else {
        // SAFETY: passed on unchanged.
        return unsafe { real::ioctl(fd, request, arg) };
    };
    let Some(shim) = existing() else {
        return fail(Errno::EBADF);
    };
    match shim.ioctl(fd, &open, &file, request, arg) {
        Ok(n) => c_int::try_from(n).unwrap_or(c_int::MAX),
        Err(e) => fail(e),
    }
}

/// What a read- or write-like call on `fd` answers, if the shim answers it.
fn transfer(fd: c_int, direction: Direction, pos: Option<i64>) -> Option<Errno> {
    if is_kept(fd) {
        return Some(Errno::EBADF);
    }
    instance(fd).map(|(open, _)| rules::transfer(open.access, direction, pos))
}

/// `readv`-like calls check the vector's length before the file: `UIO_MAXIOV`.
fn vector(fd: c_int, n: c_int, direction: Direction, pos: Option<i64>) -> Option<Errno> {
    let answer = transfer(fd, direction, pos)?;
    if !(0..=1024).contains(&n) && answer != Errno::EBADF {
        return Some(Errno::EINVAL);
    }
    Some(answer)
}

macro_rules! transfer_hooks {
    ($( $name:ident ( $dir:ident, $( $a:ident : $t:ty ),* ) $(@ $pos:ident)? ; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the driver has no such operation ([`rules::transfer`]).")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, $( $a: $t ),*) -> isize {
            #[allow(unused_variables)]
            let pos: Option<i64> = None;
            $(let pos = Some($pos);)?
            if let Some(e) = transfer(fd, Direction::$dir, pos) {
                return fail(e);
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(fd, $( $a ),*) }
        }
    )*};
}

transfer_hooks! {
    read(Read, buf: *mut c_void, n: usize);
    write(Write, buf: *const c_void, n: usize);
    pread(Read, buf: *mut c_void, n: usize, off: i64) @ off;
    pread64(Read, buf: *mut c_void, n: usize, off: i64) @ off;
    pwrite(Write, buf: *const c_void, n: usize, off: i64) @ off;
    pwrite64(Write, buf: *const c_void, n: usize, off: i64) @ off;
}

macro_rules! vector_hooks {
    ($( $name:ident ( $dir:ident, $( $a:ident : $t:ty ),* ) $(@ $pos:ident)? ; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the driver has no such operation ([`rules::transfer`]).")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, iov: *const libc::iovec, n: c_int, $( $a: $t ),*) -> isize {
            #[allow(unused_variables)]
            let pos: Option<i64> = None;
            $(let pos = Some($pos);)?
            if let Some(e) = vector(fd, n, Direction::$dir, pos) {
                return fail(e);
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(fd, iov, n, $( $a ),*) }
        }
    )*};
}

vector_hooks! {
    readv(Read,);
    writev(Write,);
    preadv(Read, off: i64) @ off;
    preadv64(Read, off: i64) @ off;
    pwritev(Write, off: i64) @ off;
    pwritev64(Write, off: i64) @ off;
    preadv2(Read, off: i64, flags: c_int) @ off;
    preadv64v2(Read, off: i64, flags: c_int) @ off;
    pwritev2(Write, off: i64, flags: c_int) @ off;
    pwritev64v2(Write, off: i64, flags: c_int) @ off;
}

macro_rules! lseek_hooks {
    ($( $name:ident; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the device is not seekable (`ESPIPE`).")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, off: i64, whence: c_int) -> i64 {
            if is_kept(fd) {
                return fail(Errno::EBADF);
            }
            if instance(fd).is_some() {
                return fail(rules::lseek());
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(fd, off, whence) }
        }
    )*};
}

lseek_hooks! {
    lseek;
    lseek64;
}

macro_rules! ftruncate_hooks {
    ($( $name:ident; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: the device has no length (`EINVAL`).")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, len: i64) -> c_int {
            if is_kept(fd) {
                return fail(Errno::EBADF);
            }
            if instance(fd).is_some() {
                return fail(rules::truncate(len));
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(fd, len) }
        }
    )*};
}

ftruncate_hooks! {
    ftruncate;
    ftruncate64;
}

macro_rules! fallocate_hooks {
    ($( $name:ident; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: not a regular file or block device ([`rules::fallocate`]).")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, mode: c_int, off: i64, len: i64) -> c_int {
            if is_kept(fd) {
                return fail(Errno::EBADF);
            }
            if let Some((open, _)) = instance(fd) {
                return fail(rules::fallocate(open.access, mode, off, len));
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(fd, mode, off, len) }
        }
    )*};
}

fallocate_hooks! {
    fallocate;
    fallocate64;
}

macro_rules! posix_fallocate_hooks {
    ($( $name:ident; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: `fallocate` with mode 0; the error number is the answer.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int, off: i64, len: i64) -> c_int {
            if is_kept(fd) {
                return Errno::EBADF.raw();
            }
            if let Some((open, _)) = instance(fd) {
                return rules::fallocate(open.access, 0, off, len).raw();
            }
            // SAFETY: passed on unchanged.
            unsafe { real::$name(fd, off, len) }
        }
    )*};
}

posix_fallocate_hooks! {
    posix_fallocate;
    posix_fallocate64;
}
