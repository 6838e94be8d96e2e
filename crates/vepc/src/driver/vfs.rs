//! The ioctls the VFS answers before any driver sees them: `do_vfs_ioctl()` in
//! `fs/ioctl.c` (Linux 6.18), as it answers them for `/dev/sgx_vepc`, a character
//! device on devtmpfs whose driver has `unlocked_ioctl` (REMOVE_ALL) and no `fasync`.
//!
//! One table for everything that answers ioctls: the model's scripts and the
//! `LD_PRELOAD` shim both call [`do_vfs_ioctl`], each with its own [`Caller`] (the
//! process's memory, descriptor and privileges). A request the VFS leaves alone
//! ([`Vfs::Driver`]) goes on to `sgx_vepc_ioctl`.
//!
//! | request | what the VFS does on this device |
//! | --- | --- |
//! | `FIOCLEX`, `FIONCLEX` | set, clear close-on-exec; 0 (the argument is not read) |
//! | `FIONBIO` | reads an `int` (`EFAULT`), sets or clears `O_NONBLOCK`; 0 |
//! | `FIOASYNC` | reads an `int` (`EFAULT`); changing `FASYNC` needs the driver's `fasync`, which vEPC lacks: `ENOTTY`; no change: 0 |
//! | `FIOQSIZE` | not a file, directory or link: `ENOTTY` |
//! | `FIFREEZE` | without `CAP_SYS_ADMIN` `EPERM`; devtmpfs cannot freeze: `EOPNOTSUPP` |
//! | `FITHAW` | without `CAP_SYS_ADMIN` `EPERM`; devtmpfs is not frozen: `EINVAL` |
//! | `FS_IOC_FIEMAP` | the inode has no `fiemap`: `EOPNOTSUPP` (the argument is not read) |
//! | `FIGETBSZ` | writes the block size, 4096, as an `int` (`EFAULT`); 0 |
//! | `FICLONE` | the argument is a source fd: not open `EBADF`; on another filesystem than devtmpfs `EXDEV`; a directory `EISDIR`; else (not a regular file) `EINVAL` |
//! | `FICLONERANGE` | reads a `struct file_clone_range` (`EFAULT`), then as `FICLONE` with its `src_fd` |
//! | `FIDEDUPERANGE` | reads `dest_count` (`EFAULT`); more than a page of ranges `ENOMEM`; reads them (`EFAULT`); the source is not a regular file: `EINVAL` |
//! | `FIONREAD` | not a regular file: the driver answers |
//! | `FS_IOC_GETFLAGS`, `FS_IOC_FSGETXATTR` | the inode has no `fileattr_get`: the driver answers |
//! | `FS_IOC_SETFLAGS` | reads an `int` (`EFAULT`); no `fileattr_set`: the driver answers |
//! | `FS_IOC_FSSETXATTR` | reads a `struct fsxattr` (`EFAULT`); no `fileattr_set`: the driver answers |
//! | `FS_IOC_GETFSUUID` | devtmpfs has a UUID: writes a `struct fsuuid2` (`EFAULT`); 0 |
//! | `FS_IOC_GETFSSYSFSPATH` | devtmpfs has no sysfs name: `ENOTTY` |
//! | anything else | the driver answers (`FIBMAP` and the `RESVSP` family are for regular files only) |
//!
//! The answers were checked against this project's machines' kernel on `/dev/null`,
//! a devtmpfs character device with no ioctls of its own, which answers like
//! `/dev/sgx_vepc` for every request but REMOVE_ALL (`vepc-preload`'s tests compare the
//! shim, `vepc sim` and `/dev/null` for every entry).

use crate::abi::Errno;

/// The requests `do_vfs_ioctl` handles, as x86-64 numbers them.
pub mod request {
    use crate::abi::{IOC_READ, IOC_WRITE, io, ioc};

    /// `FIOCLEX` (`asm-generic/ioctls.h`).
    pub const FIOCLEX: u32 = 0x5451;
    /// `FIONCLEX`.
    pub const FIONCLEX: u32 = 0x5450;
    /// `FIONBIO`.
    pub const FIONBIO: u32 = 0x5421;
    /// `FIOASYNC`.
    pub const FIOASYNC: u32 = 0x5452;
    /// `FIOQSIZE`.
    pub const FIOQSIZE: u32 = 0x5460;
    /// `FIONREAD`.
    pub const FIONREAD: u32 = 0x541B;
    /// `FIFREEZE`, `_IOWR('X', 119, int)`.
    pub const FIFREEZE: u32 = ioc(IOC_READ | IOC_WRITE, b'X', 119, 4);
    /// `FITHAW`, `_IOWR('X', 120, int)`.
    pub const FITHAW: u32 = ioc(IOC_READ | IOC_WRITE, b'X', 120, 4);
    /// `FS_IOC_FIEMAP`, `_IOWR('f', 11, struct fiemap)`.
    pub const FS_IOC_FIEMAP: u32 = ioc(IOC_READ | IOC_WRITE, b'f', 11, 32);
    /// `FIGETBSZ`, `_IO(0x00, 2)`.
    pub const FIGETBSZ: u32 = io(0, 2);
    /// `FICLONE`, `_IOW(0x94, 9, int)`.
    pub const FICLONE: u32 = ioc(IOC_WRITE, 0x94, 9, 4);
    /// `FICLONERANGE`, `_IOW(0x94, 13, struct file_clone_range)`.
    pub const FICLONERANGE: u32 = ioc(IOC_WRITE, 0x94, 13, 32);
    /// `FIDEDUPERANGE`, `_IOWR(0x94, 54, struct file_dedupe_range)`.
    pub const FIDEDUPERANGE: u32 = ioc(IOC_READ | IOC_WRITE, 0x94, 54, 24);
    /// `FS_IOC_GETFLAGS`, `_IOR('f', 1, long)`.
    pub const FS_IOC_GETFLAGS: u32 = ioc(IOC_READ, b'f', 1, 8);
    /// `FS_IOC_SETFLAGS`, `_IOW('f', 2, long)`.
    pub const FS_IOC_SETFLAGS: u32 = ioc(IOC_WRITE, b'f', 2, 8);
    /// `FS_IOC_FSGETXATTR`, `_IOR('X', 31, struct fsxattr)`.
    pub const FS_IOC_FSGETXATTR: u32 = ioc(IOC_READ, b'X', 31, 28);
    /// `FS_IOC_FSSETXATTR`, `_IOW('X', 32, struct fsxattr)`.
    pub const FS_IOC_FSSETXATTR: u32 = ioc(IOC_WRITE, b'X', 32, 28);
    /// `FS_IOC_GETFSUUID`, `_IOR(0x15, 0, struct fsuuid2)`.
    pub const FS_IOC_GETFSUUID: u32 = ioc(IOC_READ, 0x15, 0, 17);
    /// `FS_IOC_GETFSSYSFSPATH`, `_IOR(0x15, 1, struct fs_sysfs_path)`.
    pub const FS_IOC_GETFSSYSFSPATH: u32 = ioc(IOC_READ, 0x15, 1, 129);
}

use request::*;

/// Every request `do_vfs_ioctl` handles, by name: the table's rows.
pub const VFS_REQUESTS: [(&str, u32); 19] = [
    ("FIOCLEX", FIOCLEX),
    ("FIONCLEX", FIONCLEX),
    ("FIONBIO", FIONBIO),
    ("FIOASYNC", FIOASYNC),
    ("FIOQSIZE", FIOQSIZE),
    ("FIFREEZE", FIFREEZE),
    ("FITHAW", FITHAW),
    ("FS_IOC_FIEMAP", FS_IOC_FIEMAP),
    ("FIGETBSZ", FIGETBSZ),
    ("FICLONE", FICLONE),
    ("FICLONERANGE", FICLONERANGE),
    ("FIDEDUPERANGE", FIDEDUPERANGE),
    ("FIONREAD", FIONREAD),
    ("FS_IOC_GETFLAGS", FS_IOC_GETFLAGS),
    ("FS_IOC_SETFLAGS", FS_IOC_SETFLAGS),
    ("FS_IOC_FSGETXATTR", FS_IOC_FSGETXATTR),
    ("FS_IOC_FSSETXATTR", FS_IOC_FSSETXATTR),
    ("FS_IOC_GETFSUUID", FS_IOC_GETFSUUID),
    ("FS_IOC_GETFSSYSFSPATH", FS_IOC_GETFSSYSFSPATH),
];

/// devtmpfs's block size (`PAGE_SIZE`).
const BLOCK_SIZE: i32 = 4096;

/// The UUID the model's devtmpfs answers `FS_IOC_GETFSUUID` with. The kernel makes a
/// random one at boot; this one is made up and stable, as the device number is.
pub const DEVTMPFS_UUID: [u8; 16] = *b"vepc-devtmpfs-id";

/// What a descriptor given as `FICLONE`'s source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Not an open descriptor.
    NotOpen,
    /// A file on another filesystem than devtmpfs (`/dev`).
    OtherFilesystem,
    /// A directory on devtmpfs.
    Directory,
    /// Anything else on devtmpfs (a device node, `/dev/sgx_vepc` itself).
    OnDevtmpfs,
}

/// The calling process as the VFS sees it: its memory, its descriptor and open file,
/// its privileges.
pub trait Caller {
    /// Copies `buf.len()` bytes from user address `addr` (`copy_from_user`).
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Copies `buf` to user address `addr` (`copy_to_user`).
    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), Errno>;
    /// Sets or clears close-on-exec on the descriptor.
    fn set_cloexec(&mut self, on: bool);
    /// Sets or clears `O_NONBLOCK` on the open file.
    fn set_nonblock(&mut self, on: bool);
    /// Whether `O_ASYNC` (`FASYNC`) is set on the open file.
    fn fasync(&self) -> bool;
    /// Whether the caller has `CAP_SYS_ADMIN` (over devtmpfs's user namespace).
    fn cap_sys_admin(&self) -> bool;
    /// What descriptor `fd` is.
    fn source(&self, fd: i64) -> Source;
}

/// What the VFS did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vfs {
    /// It answered: the driver never sees the request.
    Answered(Result<u64, Errno>),
    /// Not the VFS's (or it handed it on, `-ENOIOCTLCMD`): the driver answers.
    Driver,
}

fn read_int(c: &mut dyn Caller, addr: u64) -> Result<i32, Errno> {
    let mut b = [0u8; 4];
    c.read(addr, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

fn answered(r: Result<(), Errno>) -> Vfs {
    Vfs::Answered(r.map(|()| 0))
}

/// `do_vfs_ioctl(filp, fd, request, arg)` for `/dev/sgx_vepc`.
pub fn do_vfs_ioctl(request: u32, arg: u64, c: &mut dyn Caller) -> Vfs {
    match request {
        FIOCLEX | FIONCLEX => {
            c.set_cloexec(request == FIOCLEX);
            Vfs::Answered(Ok(0))
        }
        FIONBIO => answered(read_int(c, arg).map(|on| c.set_nonblock(on != 0))),
        // FASYNC changes only through the driver's fasync, which vEPC has not.
        FIOASYNC => answered(read_int(c, arg).and_then(|on| {
            if (on != 0) != c.fasync() {
                Err(Errno::ENOTTY)
            } else {
                Ok(())
            }
        })),
        FIOQSIZE | FS_IOC_GETFSSYSFSPATH => Vfs::Answered(Err(Errno::ENOTTY)),
        FIFREEZE | FITHAW if !c.cap_sys_admin() => Vfs::Answered(Err(Errno::EPERM)),
        FIFREEZE | FS_IOC_FIEMAP => Vfs::Answered(Err(Errno::EOPNOTSUPP)),
        FITHAW => Vfs::Answered(Err(Errno::EINVAL)),
        FIGETBSZ => answered(c.write(arg, &BLOCK_SIZE.to_ne_bytes())),
        FICLONE => answered(clone_from(c.source(arg as i64))),
        FICLONERANGE => {
            // struct file_clone_range { __s64 src_fd; __u64 src_offset, src_length,
            // dest_offset; }
            let mut range = [0u8; 32];
            answered(c.read(arg, &mut range).and_then(|()| {
                let mut fd = [0u8; 8];
                fd.copy_from_slice(&range[..8]);
                clone_from(c.source(i64::from_ne_bytes(fd)))
            }))
        }
        FIDEDUPERANGE => answered(dedupe(c, arg)),
        FS_IOC_SETFLAGS => match read_int(c, arg) {
            Err(e) => Vfs::Answered(Err(e)),
            Ok(_) => Vfs::Driver,
        },
        FS_IOC_FSSETXATTR => match c.read(arg, &mut [0u8; 28]) {
            Err(e) => Vfs::Answered(Err(e)),
            Ok(()) => Vfs::Driver,
        },
        FS_IOC_GETFSUUID => {
            let mut u = [0u8; 17];
            u[0] = DEVTMPFS_UUID.len() as u8;
            u[1..].copy_from_slice(&DEVTMPFS_UUID);
            answered(c.write(arg, &u))
        }
        _ => Vfs::Driver,
    }
}

/// `vfs_clone_file_range(src, …, /dev/sgx_vepc, …)`: the superblocks first, then
/// `generic_file_rw_checks`.
fn clone_from(src: Source) -> Result<(), Errno> {
    Err(match src {
        Source::NotOpen => Errno::EBADF,
        Source::OtherFilesystem => Errno::EXDEV,
        Source::Directory => Errno::EISDIR,
        Source::OnDevtmpfs => Errno::EINVAL,
    })
}

/// `ioctl_file_dedupe_range`, up to `vfs_dedupe_file_range` refusing a source that is
/// not a regular file.
fn dedupe(c: &mut dyn Caller, arg: u64) -> Result<(), Errno> {
    // struct file_dedupe_range { __u64 src_offset, src_length; __u16 dest_count;
    // __u16 reserved1; __u32 reserved2; struct file_dedupe_range_info info[]; }
    let mut count = [0u8; 2];
    c.read(arg.wrapping_add(16), &mut count)?;
    let size = 24 + 32 * usize::from(u16::from_ne_bytes(count));
    if size > 4096 {
        return Err(Errno::ENOMEM);
    }
    c.read(arg, &mut vec![0u8; size])?;
    Err(Errno::EINVAL)
}

/// A caller with no memory but at non-zero addresses, no other descriptors and no
/// privileges: how `vepc sim` runs a script's `ioctl FD REQ ARG` (ARG is the pointer;
/// 0 is NULL, any other value points at readable, writable zeroes).
#[derive(Debug, Default, Clone, Copy)]
pub struct ScriptCaller {
    /// `O_NONBLOCK` on the open file.
    pub nonblock: bool,
    /// Close-on-exec on the descriptor.
    pub cloexec: bool,
}

/// A script's memory: NULL faults, every other address holds zeroes and takes writes.
fn script_memory(addr: u64) -> Result<(), Errno> {
    if addr == 0 {
        Err(Errno::EFAULT)
    } else {
        Ok(())
    }
}

impl Caller for ScriptCaller {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        script_memory(addr).map(|()| buf.fill(0))
    }

    fn write(&mut self, addr: u64, _: &[u8]) -> Result<(), Errno> {
        script_memory(addr)
    }

    fn set_cloexec(&mut self, on: bool) {
        self.cloexec = on;
    }

    fn set_nonblock(&mut self, on: bool) {
        self.nonblock = on;
    }

    fn fasync(&self) -> bool {
        false
    }

    fn cap_sys_admin(&self) -> bool {
        false
    }

    fn source(&self, _: i64) -> Source {
        Source::NotOpen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernel_headers() {
        assert_eq!(FIFREEZE, 0xC004_5877);
        assert_eq!(FITHAW, 0xC004_5878);
        assert_eq!(FS_IOC_FIEMAP, 0xC020_660B);
        assert_eq!(FIGETBSZ, 2);
        assert_eq!(FICLONE, 0x4004_9409);
        assert_eq!(FICLONERANGE, 0x4020_940D);
        assert_eq!(FIDEDUPERANGE, 0xC018_9436);
        assert_eq!(FS_IOC_GETFLAGS, 0x8008_6601);
        assert_eq!(FS_IOC_SETFLAGS, 0x4008_6602);
        assert_eq!(FS_IOC_FSGETXATTR, 0x801C_581F);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401C_5820);
        assert_eq!(FS_IOC_GETFSUUID, 0x8011_1500);
        assert_eq!(FS_IOC_GETFSSYSFSPATH, 0x8081_1501);
    }

    #[test]
    fn a_script_caller_faults_only_on_null() {
        let mut c = ScriptCaller::default();
        let ask = |c: &mut ScriptCaller, r, a| do_vfs_ioctl(r, a, c);
        assert_eq!(ask(&mut c, FIONBIO, 0), Vfs::Answered(Err(Errno::EFAULT)));
        assert_eq!(ask(&mut c, FIONBIO, 8), Vfs::Answered(Ok(0)));
        assert_eq!(
            ask(&mut c, FIOASYNC, 8),
            Vfs::Answered(Ok(0)),
            "0 read: no change"
        );
        assert_eq!(ask(&mut c, FIFREEZE, 0), Vfs::Answered(Err(Errno::EPERM)));
        assert_eq!(ask(&mut c, FS_IOC_SETFLAGS, 8), Vfs::Driver);
        assert_eq!(
            ask(&mut c, FIDEDUPERANGE, 8),
            Vfs::Answered(Err(Errno::EINVAL))
        );
        assert_eq!(ask(&mut c, 0xA404, 0), Vfs::Driver);
        assert!(!c.cloexec);
        assert_eq!(ask(&mut c, FIOCLEX, 0), Vfs::Answered(Ok(0)));
        assert!(c.cloexec);
    }
}
