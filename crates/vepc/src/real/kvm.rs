//! Just enough of `/dev/kvm` to tell whether KVM works on this host.

use std::ffi::c_void;

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

use crate::abi::{Errno, io};

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
pub const KVM_GET_API_VERSION: u32 = io(0xAE, 0x00);
/// The only API version Linux has ever answered.
pub const KVM_API_VERSION: i32 = 12;

struct GetApiVersion;

// SAFETY: `_IO` request with no argument (0); the output is the return value.
unsafe impl Ioctl for GetApiVersion {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        KVM_GET_API_VERSION as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Opens `/dev/kvm` and asks its API version: `Ok(12)` when KVM works.
pub fn api_version() -> Result<i32, Errno> {
    let fd = rustix::fs::open("/dev/kvm", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
    // SAFETY: KVM_GET_API_VERSION reads and writes no memory.
    unsafe { rustix::ioctl::ioctl(&fd, GetApiVersion) }
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}
