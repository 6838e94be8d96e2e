//! # vepc-preload — the model as `/dev/sgx_vepc` for unmodified programs
//!
//! Built as `libvepc_preload.so`. Loaded with `LD_PRELOAD`, it gives a program that
//! opens `/dev/sgx_vepc` (QEMU, a VMM in C, a test tool) the vepc model instead of the
//! kernel's driver, without changing a line of the program:
//!
//! - `open`/`openat` of the path (with their 64-bit and fortified `__open_2` forms)
//!   open a model instance and return a descriptor for it (a memfd, so the program's
//!   mappings are real shared memory); `stat`/`access` of the path find a character
//!   device;
//! - `mmap` of that descriptor maps the instance (shared only, as the driver allows),
//!   and each page's first touch takes an EPC page from the model, as the library's
//!   emulated device ([`vepc::device::Emulated`]) serves it; with no EPC left the
//!   toucher gets SIGBUS;
//! - `ioctl` goes to the model's `sgx_vepc_ioctl`; `close` (and the last `munmap`)
//!   release the instance as the kernel would;
//! - everything else goes on to glibc untouched.
//!
//! Configuration is by environment ([`config`]); `VEPC_LOG` records every intercepted
//! call as a JSON line ([`log`]).
//!
//! Only the hooks and the system-call layer use `unsafe`; each block says why it is
//! sound. The decisions are in [`state`], in safe code; memory and first touches are
//! the library's, the same code a Rust VMM uses in-process.

pub mod config;
pub mod inject;
pub mod log;
pub mod path;
pub mod state;

#[allow(unsafe_code)]
pub mod sys;

// Not in unit tests: the test binary would replace its own open() and mmap().
#[cfg(not(test))]
#[allow(unsafe_code)]
pub mod hooks;
