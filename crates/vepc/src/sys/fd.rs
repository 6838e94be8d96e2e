//! Opening device nodes, and the one shape of ioctl the crate issues to them: an `_IO`
//! request with an explicit 0 as the third argument.

use std::ffi::c_void;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

use crate::abi::Errno;

/// `open(path, O_RDWR | O_CLOEXEC)`.
pub(crate) fn open_rdwr(path: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(super::errno)
}

/// `ioctl(fd, request, 0)` for an `_IO` request (no data either way): the return value.
///
/// A variadic `ioctl()` called without a third argument hands the kernel whatever is
/// in the register; drivers that insist on 0 (SGX_IOC_VEPC_REMOVE_ALL) then fail with
/// `EINVAL`. This passes 0 on purpose.
pub(crate) fn ioctl_io(fd: impl AsFd, request: u32) -> Result<i32, Errno> {
    // SAFETY: `NoArg` builds `_IO` requests only, so the kernel reads and writes no
    // memory through the argument, which is a null pointer (the explicit 0).
    unsafe { rustix::ioctl::ioctl(fd, NoArg(request)) }.map_err(super::errno)
}

/// `ioctl(fd, request, 0)`, answering the return value.
struct NoArg(u32);

// SAFETY: only `_IO` requests go through it (no data transferred in either direction);
// the argument is a null pointer; the output is the syscall's return value and reads
// no memory.
unsafe impl Ioctl for NoArg {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        self.0 as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}
