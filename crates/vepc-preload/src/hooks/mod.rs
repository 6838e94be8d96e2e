//! The exported entry points: each has glibc's name and C prototype, so with
//! `LD_PRELOAD` the dynamic linker binds the program's calls here first. A call that
//! is not about `/dev/sgx_vepc` or one of the shim's descriptors goes straight on to
//! glibc ([`crate::sys::real`]) with its arguments unchanged.
//!
//! By what the calls act on: [`paths`] (open, stat, access, truncate, fopen of the
//! node), [`fds`] (descriptor calls: close, dup, ioctl, read, write, seek, truncate,
//! fallocate), [`memory`] (mmap, munmap, mremap, madvise, mlock, process_vm_*). What
//! each answers is the library's table, [`vepc::driver::surface`], and its VFS table,
//! [`vepc::driver::vfs`].
//!
//! Variadic prototypes (`open`'s mode, `ioctl`'s and `fcntl`'s argument, `mremap`'s
//! new address) are declared with the argument as a fixed one: on x86-64 a caller
//! passes it in the same register either way, and reading it is what the kernel does
//! too. That is how `arg` in the log shows whatever a caller that passed no third
//! argument left in `rdx`.

pub mod fds;
pub mod memory;
pub mod paths;

use vepc::abi::Errno;

use crate::sys::{Failure, set_errno};

/// Fails a hooked call the way its C function does: `errno` set, the failure value.
fn fail<T: Failure>(e: Errno) -> T {
    set_errno(e);
    T::failure()
}
