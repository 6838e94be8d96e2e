//! The one shape of ioctl this crate issues: an `_IO` request, an explicit 0 as the
//! third argument, and the syscall's return value as the answer.

use std::ffi::c_void;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

/// `ioctl(fd, request, 0)`, answering the return value.
pub(super) struct NoArg(pub(super) u32);

// SAFETY: only `_IO` requests are built (no data transferred in either direction);
// the argument is a null pointer, i.e. the explicit 0 that SGX_IOC_VEPC_REMOVE_ALL
// insists on; the output is the syscall's return value and reads no memory.
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
