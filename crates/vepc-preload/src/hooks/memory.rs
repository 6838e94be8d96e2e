//! Calls on memory: `mmap` of the shim's descriptors makes a vEPC mapping; everything
//! that can act on one (`munmap`, `mmap` with `MAP_FIXED` over it, `mremap`,
//! `madvise`, `mlock`, `mlockall`, `process_vm_*`) answers as the flags
//! `sgx_vepc_mmap` gives the real one decide ([`vepc::driver::surface::vma`]).

use std::ffi::{c_int, c_uint, c_ulong, c_void};

use serde_json::Value;
use vepc::abi::Errno;
use vepc::driver::surface::mmap::MmapRequest;
use vepc::driver::surface::vma;
use vepc::sys::kept::is_kept;

use super::fail;
use crate::log::hex;
use crate::state::{OpenFile, Shim, existing};
use crate::sys::{errno, real};

const PAGE: usize = vepc::abi::PAGE_SIZE as usize;

type MmapFn = unsafe fn(*mut c_void, usize, c_int, c_int, c_int, i64) -> *mut c_void;
type MmapArgs = (*mut c_void, usize, c_int, c_int, c_int, i64);

/// The shim's `mmap` of one of its instances.
///
/// # Safety
/// As `mmap`.
unsafe fn mmap_vepc(
    shim: &Shim,
    open: &std::sync::Arc<OpenFile>,
    file: &std::sync::Arc<vepc::device::EmulatedFile>,
    call: &str,
    (addr, len, prot, flags, fd, off): MmapArgs,
) -> *mut c_void {
    let req = MmapRequest {
        addr: addr as u64,
        len: len as u64,
        prot,
        flags,
        offset: off as u64,
    };
    let r = shim.before_mmap().and_then(|()| {
        // SAFETY: the program's own mapping request: the caller's contract is mmap(2)'s.
        let at = unsafe { file.mmap(&req) }?;
        shim.mapped(open, &req);
        Ok(at)
    });
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
            (
                "result",
                r.map_or_else(|e| e.to_string().into(), |p| hex(p as u64)),
            ),
        ],
    );
    match r {
        Ok(p) => p as *mut c_void,
        Err(e) => fail(e),
    }
}

/// # Safety
/// As `mmap`.
unsafe fn mmap_any(call: &str, args: MmapArgs, real_mmap: MmapFn) -> *mut c_void {
    let (addr, len, prot, flags, fd, off) = args;
    if fd >= 0 && flags & libc::MAP_ANONYMOUS == 0 {
        if is_kept(fd) {
            return fail(Errno::EBADF);
        }
        if let Some(shim) = existing()
            && let Some(open) = shim.fd(fd)
            && let Some(file) = open.file.clone()
        {
            // SAFETY: the caller's contract; the descriptor is the shim's.
            return unsafe { mmap_vepc(shim, &open, &file, call, args) };
        }
    }
    let real = || {
        // SAFETY: passed on unchanged.
        let p = unsafe { real_mmap(addr, len, prot, flags, fd, off) };
        if p == libc::MAP_FAILED {
            Err(errno())
        } else {
            Ok(p)
        }
    };
    let r = match existing() {
        // Whatever was mapped there before is gone: the table follows.
        // SAFETY: the call is the program's own, with its contract.
        Some(shim) if flags & libc::MAP_FIXED != 0 => unsafe {
            shim.emulated().map_over(addr as usize, len, real)
        },
        _ => real(),
    };
    r.unwrap_or_else(fail)
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

/// `munmap`: an instance's mapping shrinks or goes; the last reference releases it.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let Some(shim) = existing() else {
        // SAFETY: passed on unchanged.
        return unsafe { real::munmap(addr, len) };
    };
    // SAFETY: the program's own munmap, with munmap(2)'s contract.
    match unsafe { shim.emulated().munmap(addr as usize, len) } {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// `mremap`: a vEPC mapping shrinks and moves, but never grows.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new: *mut c_void,
) -> *mut c_void {
    let Some(shim) = existing() else {
        // SAFETY: passed on unchanged.
        return unsafe { real::mremap(old, old_len, new_len, flags, new) };
    };
    let emulated = shim.emulated();
    // SAFETY: the program's own mremap, with mremap(2)'s contract.
    if let Some(r) = unsafe { emulated.mremap(old as usize, old_len, new_len, flags, new as usize) }
    {
        return r.map_or_else(fail, |p| p as *mut c_void);
    }
    let real = || {
        // SAFETY: passed on unchanged.
        let p = unsafe { real::mremap(old, old_len, new_len, flags, new) };
        if p == libc::MAP_FAILED {
            Err(errno())
        } else {
            Ok(p)
        }
    };
    let r = if flags & libc::MREMAP_FIXED != 0 {
        // SAFETY: as above; the destination's old mappings go.
        unsafe { emulated.map_over(new as usize, new_len, real) }
    } else {
        real()
    };
    r.unwrap_or_else(fail)
}

/// Calls `other` on each part of `[addr, addr + len)` that is not a vEPC mapping and
/// `ours` on each part that is, in address order, as the kernel walks the mappings:
/// the first error other than a hole's `ENOMEM` ends the walk; a hole's is the answer
/// at the end.
fn walk(
    shim: &Shim,
    addr: usize,
    len: usize,
    mut other: impl FnMut(usize, usize) -> Result<(), Errno>,
    mut ours: impl FnMut(usize, usize) -> Result<(), Errno>,
) -> Result<(), Errno> {
    let end = addr.saturating_add(len);
    let mut hole = Ok(());
    let mut at = addr;
    for (start, stop) in shim.emulated().tracked_in(addr, len) {
        if at < start {
            match other(at, start - at) {
                Err(Errno::ENOMEM) => hole = Err(Errno::ENOMEM),
                r => r?,
            }
        }
        ours(start, stop - start)?;
        at = stop;
    }
    if at < end {
        match other(at, end - at) {
            Err(Errno::ENOMEM) => hole = Err(Errno::ENOMEM),
            r => r?,
        }
    }
    hole
}

fn result_of(r: c_int) -> Result<(), Errno> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// `madvise` of a range that meets vEPC mappings.
fn madvise_vepc(shim: &Shim, addr: usize, len: usize, advice: c_int) -> Result<(), Errno> {
    // madvise's own checks, before any mapping is looked at.
    if !vma::known_advice(advice) || !addr.is_multiple_of(PAGE) {
        return Err(Errno::EINVAL);
    }
    let Some(len) = len.checked_next_multiple_of(PAGE) else {
        return Err(Errno::EINVAL);
    };
    if addr.checked_add(len).is_none() {
        return Err(Errno::EINVAL);
    }
    let admin = vepc::sys::caps::has(vepc::sys::caps::SYS_ADMIN);
    let r = walk(
        shim,
        addr,
        len,
        // SAFETY: the program's own advice on its own memory, passed on.
        |a, n| result_of(unsafe { real::madvise(a as *mut c_void, n, advice) }),
        |_, _| vma::madvise(advice, admin),
    );
    shim.log.line(
        "madvise",
        vec![
            ("addr", hex(addr as u64)),
            ("len", (len as u64).into()),
            (
                "advice",
                vma::advice_name(advice).map_or_else(|| advice.into(), Value::from),
            ),
            ("result", crate::log::result(r.map(|()| 0))),
        ],
    );
    r
}

/// The vEPC mappings in `[addr, addr + len)`, if the shim has any there.
fn meets_vepc(addr: *const c_void, len: usize) -> Option<&'static Shim> {
    let shim = existing()?;
    let page = (addr as usize) & !(PAGE - 1);
    let len = len.saturating_add(addr as usize - page);
    (!shim.emulated().tracked_in(page, len).is_empty()).then_some(shim)
}

/// `madvise`: on vEPC mappings, what `VM_PFNMAP | VM_IO | VM_DONTCOPY | VM_DONTDUMP`
/// allow ([`vma::madvise`]): `MADV_POPULATE_WRITE` is `EINVAL`, as QEMU's prealloc
/// probe expects on an SGX host.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    match meets_vepc(addr, len) {
        Some(shim) => match madvise_vepc(shim, addr as usize, len, advice) {
            Ok(()) => 0,
            Err(e) => fail(e),
        },
        // SAFETY: passed on unchanged.
        None => unsafe { real::madvise(addr, len, advice) },
    }
}

/// `posix_madvise`: glibc ignores `POSIX_MADV_DONTNEED` and passes the rest to
/// `madvise`; the error number is the answer.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    match meets_vepc(addr, len) {
        Some(_) if advice == libc::POSIX_MADV_DONTNEED => 0,
        Some(shim) => {
            madvise_vepc(shim, addr as usize, len, advice).map_or_else(|e| e.raw(), |()| 0)
        }
        // SAFETY: passed on unchanged.
        None => unsafe { real::posix_madvise(addr, len, advice) },
    }
}

/// `mlock`/`mlock2` of a range that meets vEPC mappings: the rest is locked, the
/// vEPC mappings are left alone ([`vma::LOCK`]).
fn lock_around(
    shim: &Shim,
    addr: *const c_void,
    len: usize,
    lock: impl Fn(*const c_void, usize) -> c_int,
) -> c_int {
    let page = (addr as usize) & !(PAGE - 1);
    let len = len
        .saturating_add(addr as usize - page)
        .next_multiple_of(PAGE);
    let r = walk(
        shim,
        page,
        len,
        |a, n| result_of(lock(a as *const c_void, n)),
        |_, _| Ok(()),
    );
    match r {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

/// `mlock`: nothing of a vEPC mapping is faulted in or locked.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mlock(addr: *const c_void, len: usize) -> c_int {
    match meets_vepc(addr, len) {
        // SAFETY: the program's own memory, passed on piece by piece.
        Some(shim) => lock_around(shim, addr, len, |a, n| unsafe { real::mlock(a, n) }),
        // SAFETY: passed on unchanged.
        None => unsafe { real::mlock(addr, len) },
    }
}

/// `mlock2`: as `mlock`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mlock2(addr: *const c_void, len: usize, flags: c_uint) -> c_int {
    match meets_vepc(addr, len) {
        // SAFETY: as in mlock.
        Some(shim) => lock_around(shim, addr, len, |a, n| unsafe { real::mlock2(a, n, flags) }),
        // SAFETY: passed on unchanged.
        None => unsafe { real::mlock2(addr, len, flags) },
    }
}

/// The program's mappings, from `/proc/self/maps`.
fn mappings() -> Vec<(usize, usize)> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let range = l.split(' ').next()?;
            let (a, b) = range.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// `mlockall`: everything but the vEPC mappings is locked (and faulted in, unless
/// `MCL_ONFAULT`). The kernel would lock them too, then fault them in; so each mapping
/// is locked on fault first, the others then locked in full, the vEPC ones unlocked.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mlockall(flags: c_int) -> c_int {
    let future = flags & libc::MCL_FUTURE != 0;
    let Some(shim) = existing().filter(|_| flags & libc::MCL_CURRENT != 0) else {
        // SAFETY: passed on unchanged.
        let r = unsafe { real::mlockall(flags) };
        if r == 0 {
            vepc::device::note_mlockall_future(future);
        }
        return r;
    };
    // SAFETY: locking changes no data; each call is mlockall(2)'s or mlock(2)'s.
    unsafe {
        let r = real::mlockall(libc::MCL_CURRENT | libc::MCL_ONFAULT);
        if r != 0 {
            return r;
        }
        let ours = shim.emulated().tracked_in(0, usize::MAX);
        if flags & libc::MCL_ONFAULT == 0 {
            for (a, b) in mappings() {
                if !ours.iter().any(|&(s, e)| s < b && a < e) {
                    let _ = real::mlock(a as *const c_void, b - a);
                }
            }
        }
        for (s, e) in ours {
            libc::munlock(s as *const c_void, e - s);
        }
        if future {
            let r = real::mlockall(libc::MCL_FUTURE | (flags & libc::MCL_ONFAULT));
            if r != 0 {
                return r;
            }
        }
    }
    vepc::device::note_mlockall_future(future);
    0
}

/// `munlockall`: also ends `MCL_FUTURE`.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munlockall() -> c_int {
    // SAFETY: passed on unchanged.
    let r = unsafe { real::munlockall() };
    if r == 0 {
        vepc::device::note_mlockall_future(false);
    }
    r
}

type ProcessVm = unsafe fn(
    libc::pid_t,
    *const libc::iovec,
    c_ulong,
    *const libc::iovec,
    c_ulong,
    c_ulong,
) -> isize;

/// `process_vm_readv`/`writev` on this process's own vEPC mappings: the transfer
/// stops where it meets one, as GUP refuses `VM_IO | VM_PFNMAP` ([`vma::REMOTE_ACCESS`]).
///
/// # Safety
/// As the C functions.
unsafe fn process_vm(
    call: ProcessVm,
    pid: libc::pid_t,
    local: *const libc::iovec,
    lcnt: c_ulong,
    remote: *const libc::iovec,
    rcnt: c_ulong,
    flags: c_ulong,
) -> isize {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let Some(shim) = existing().filter(|_| pid == me && rcnt <= 1024) else {
        // SAFETY: passed on unchanged.
        return unsafe { call(pid, local, lcnt, remote, rcnt, flags) };
    };
    let mut iov = vec![[0u8; 16]; rcnt as usize];
    for (i, slot) in iov.iter_mut().enumerate() {
        let at = remote as u64 + 16 * i as u64;
        if crate::sys::read_memory(at, slot).is_err() {
            // SAFETY: passed on unchanged: the kernel answers for the bad vector.
            return unsafe { call(pid, local, lcnt, remote, rcnt, flags) };
        }
    }
    let mut kept: Vec<libc::iovec> = Vec::with_capacity(iov.len());
    for raw in &iov {
        let base = u64::from_ne_bytes(raw[..8].try_into().unwrap_or_default()) as usize;
        let len = u64::from_ne_bytes(raw[8..].try_into().unwrap_or_default()) as usize;
        let stop = shim
            .emulated()
            .tracked_in(base, len)
            .first()
            .map(|&(s, _)| s);
        match stop {
            None => kept.push(libc::iovec {
                iov_base: base as *mut c_void,
                iov_len: len,
            }),
            Some(s) => {
                if s > base {
                    kept.push(libc::iovec {
                        iov_base: base as *mut c_void,
                        iov_len: s - base,
                    });
                }
                break;
            }
        }
    }
    if kept.iter().all(|v| v.iov_len == 0) && iov.iter().any(|raw| raw[8..] != [0; 8]) {
        return fail(Errno::EFAULT);
    }
    // SAFETY: the caller's local vector and a prefix of its remote one.
    unsafe {
        call(
            pid,
            local,
            lcnt,
            kept.as_ptr(),
            kept.len() as c_ulong,
            flags,
        )
    }
}

macro_rules! process_vm_hooks {
    ($( $name:ident; )*) => {$(
        #[doc = concat!("`", stringify!($name), "`: stops at this process's own vEPC mappings.")]
        ///
        /// # Safety
        /// As the C function.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            pid: libc::pid_t,
            local: *const libc::iovec,
            lcnt: c_ulong,
            remote: *const libc::iovec,
            rcnt: c_ulong,
            flags: c_ulong,
        ) -> isize {
            // SAFETY: the caller's contract.
            unsafe { process_vm(real::$name, pid, local, lcnt, remote, rcnt, flags) }
        }
    )*};
}

process_vm_hooks! {
    process_vm_readv;
    process_vm_writev;
}
