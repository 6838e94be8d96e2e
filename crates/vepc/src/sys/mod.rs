//! The operating system underneath the library: the system calls that need `unsafe`,
//! and CPUID, each behind a function that keeps the errno.
//!
//! Everything above it (the host device, the emulated device, the probe) calls down
//! into this module and never the other way. Each `unsafe` block here says why it is
//! sound; a function stays `unsafe` where only its caller can know (a `MAP_FIXED`
//! mapping over an address range, say).

pub mod caps;
pub mod cpu;
pub(crate) mod fd;
pub mod kept;
pub(crate) mod mm;
pub(crate) mod uffd;
pub(crate) mod users;

use crate::abi::Errno;

/// rustix's errno as ours.
pub(crate) fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}
