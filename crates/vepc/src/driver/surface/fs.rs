//! The file calls on `/dev/sgx_vepc` that the VFS answers for the driver: `open`'s
//! flags, `read`/`write` and their variants, `lseek`, `truncate`, `fallocate`.

use super::Access;
use super::flags::{O_CREAT, O_DIRECTORY, O_EXCL, O_PATH};
use crate::abi::{Errno, KernelVersion};

/// What an `open` of the node makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// `O_PATH`: a descriptor for the node only; the driver's `open` never runs.
    Path,
    /// An instance: the driver's `sgx_vepc_open` runs (and may still fail, from 6.19,
    /// with EUPDATESVN's `EAGAIN` or `EIO`).
    Instance(Access),
}

/// `open("/dev/sgx_vepc", flags)` up to the driver: the path walk and the VFS's checks
/// for an existing character device (`fs/namei.c` `do_open`).
///
/// # Examples
///
/// ```
/// use vepc::abi::{Errno, KernelVersion};
/// use vepc::driver::surface::{Access, fs::{Opened, open}};
///
/// let k = KernelVersion::DEFAULT;
/// assert_eq!(open(k, 0o2), Ok(Opened::Instance(Access::READ_WRITE)));
/// assert_eq!(open(k, 0o10000000), Ok(Opened::Path), "O_PATH: no instance");
/// assert_eq!(open(k, 0o300), Err(Errno::EEXIST), "O_CREAT|O_EXCL");
/// assert_eq!(open(KernelVersion::new(5, 12), 0o2), Err(Errno::ENOENT));
/// ```
pub fn open(kernel: KernelVersion, flags: i32) -> Result<Opened, Errno> {
    if !kernel.has_vepc() {
        return Err(Errno::ENOENT);
    }
    // O_PATH keeps only O_DIRECTORY, O_NOFOLLOW and O_CLOEXEC (build_open_flags).
    if flags & O_PATH != 0 {
        return if flags & O_DIRECTORY != 0 {
            Err(Errno::ENOTDIR)
        } else {
            Ok(Opened::Path)
        };
    }
    if flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL {
        return Err(Errno::EEXIST);
    }
    // O_TMPFILE includes O_DIRECTORY: the node is not a directory either way.
    if flags & O_DIRECTORY != 0 {
        return Err(Errno::ENOTDIR);
    }
    Ok(Opened::Instance(Access::from_flags(flags)))
}

/// Which way a `read`- or `write`-like call moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `read`, `readv`, `pread64`, `preadv`, `preadv2`.
    Read,
    /// `write`, `writev`, `pwrite64`, `pwritev`, `pwritev2`.
    Write,
}

/// `read`/`write` and their variants on an open with `access`; `pos` is the explicit
/// position of the `p*` variants (`None` for the others). The driver has neither a
/// `read` nor a `write` operation, so `FMODE_CAN_READ`/`FMODE_CAN_WRITE` are never set:
/// with the access, `EINVAL` (`fs/read_write.c` `vfs_read`, `vfs_write`).
pub fn transfer(access: Access, direction: Direction, pos: Option<i64>) -> Errno {
    if pos.is_some_and(|p| p < 0) {
        return Errno::EINVAL;
    }
    let allowed = match direction {
        Direction::Read => access.read,
        Direction::Write => access.write,
    };
    if allowed { Errno::EINVAL } else { Errno::EBADF }
}

/// `lseek`: the driver has no `llseek`, so the file is not seekable: `ESPIPE`.
pub fn lseek() -> Errno {
    Errno::ESPIPE
}

/// `ftruncate(fd, length)` and `truncate(path, length)`: only regular files have a
/// length (`do_ftruncate`, `vfs_truncate`).
pub fn truncate(_length: i64) -> Errno {
    Errno::EINVAL
}

/// `FALLOC_FL_*` values `vfs_fallocate` knows (`include/uapi/linux/falloc.h`).
pub mod falloc {
    #![allow(missing_docs)]
    pub const KEEP_SIZE: i32 = 0x01;
    pub const PUNCH_HOLE: i32 = 0x02;
    pub const COLLAPSE_RANGE: i32 = 0x08;
    pub const ZERO_RANGE: i32 = 0x10;
    pub const INSERT_RANGE: i32 = 0x20;
    pub const UNSHARE_RANGE: i32 = 0x40;
    pub const WRITE_ZEROES: i32 = 0x80;
    /// `FALLOC_FL_MODE_MASK`: the operations, one at a time (none is "allocate").
    pub const MODE_MASK: i32 =
        PUNCH_HOLE | COLLAPSE_RANGE | ZERO_RANGE | INSERT_RANGE | UNSHARE_RANGE | WRITE_ZEROES;
}

/// `fallocate(fd, mode, offset, len)` in 6.18's `vfs_fallocate` order: the range, the
/// mode (one operation, and `KEEP_SIZE` where it belongs), write access, then the file
/// type: a character device is neither a regular file nor a block device, `ENODEV`.
pub fn fallocate(access: Access, mode: i32, offset: i64, len: i64) -> Errno {
    use falloc::*;
    if offset < 0 || len <= 0 {
        return Errno::EINVAL;
    }
    if mode & !(MODE_MASK | KEEP_SIZE) != 0 {
        return Errno::EOPNOTSUPP;
    }
    let keep_size = mode & KEEP_SIZE != 0;
    match mode & MODE_MASK {
        0 | UNSHARE_RANGE | ZERO_RANGE => {}
        PUNCH_HOLE if keep_size => {}
        COLLAPSE_RANGE | INSERT_RANGE | WRITE_ZEROES if !keep_size => {}
        _ => return Errno::EOPNOTSUPP,
    }
    if !access.write {
        return Errno::EBADF;
    }
    Errno::ENODEV
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Access = Access::READ_WRITE;
    const RO: Access = Access {
        read: true,
        write: false,
    };

    #[test]
    fn reads_and_writes_answer_by_access_then_einval() {
        assert_eq!(transfer(RW, Direction::Read, None), Errno::EINVAL);
        assert_eq!(transfer(RO, Direction::Write, None), Errno::EBADF);
        assert_eq!(transfer(RO, Direction::Read, Some(-1)), Errno::EINVAL);
        let none = Access::from_flags(3);
        assert_eq!(transfer(none, Direction::Read, Some(0)), Errno::EBADF);
    }

    #[test]
    fn the_access_mode_is_open_fmode() {
        assert_eq!(Access::from_flags(0), RO);
        assert_eq!(
            Access::from_flags(1),
            Access {
                read: false,
                write: true
            }
        );
        assert_eq!(Access::from_flags(2), RW);
        assert_eq!(
            Access::from_flags(3),
            Access {
                read: false,
                write: false
            }
        );
    }

    #[test]
    fn fallocate_checks_in_vfs_fallocate_order() {
        assert_eq!(fallocate(RW, 0, 0, 0), Errno::EINVAL);
        assert_eq!(fallocate(RW, 0x1000, 0, 1), Errno::EOPNOTSUPP);
        assert_eq!(
            fallocate(RW, falloc::PUNCH_HOLE, 0, 1),
            Errno::EOPNOTSUPP,
            "a hole needs KEEP_SIZE"
        );
        assert_eq!(fallocate(RO, 0, 0, 1), Errno::EBADF);
        assert_eq!(fallocate(RW, 0, 0, 1), Errno::ENODEV);
        assert_eq!(
            fallocate(RW, falloc::PUNCH_HOLE | falloc::KEEP_SIZE, 0, 1),
            Errno::ENODEV
        );
    }

    #[test]
    fn open_flags_up_to_the_driver() {
        let k = KernelVersion::DEFAULT;
        assert_eq!(open(k, O_DIRECTORY), Err(Errno::ENOTDIR));
        assert_eq!(open(k, O_PATH | O_DIRECTORY), Err(Errno::ENOTDIR));
        assert_eq!(open(k, O_CREAT), Ok(Opened::Instance(RO)));
        assert_eq!(open(k, 3), Ok(Opened::Instance(Access::from_flags(3))));
    }
}
