//! Just enough of `/dev/kvm` to tell whether KVM works on this host.

use rustix::fs::{Mode, OFlags};

use super::io::NoArg;
use crate::abi::{Errno, io};

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
pub const KVM_GET_API_VERSION: u32 = io(0xAE, 0x00);
/// The only API version Linux has ever answered.
pub const KVM_API_VERSION: i32 = 12;

/// Opens `/dev/kvm` and asks its API version: `Ok(12)` when KVM works.
pub fn api_version() -> Result<i32, Errno> {
    let fd = rustix::fs::open("/dev/kvm", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Errno::from_raw(e.raw_os_error()))?;
    // SAFETY: KVM_GET_API_VERSION reads and writes no memory.
    unsafe { rustix::ioctl::ioctl(&fd, NoArg(KVM_GET_API_VERSION)) }
        .map_err(|e| Errno::from_raw(e.raw_os_error()))
}
