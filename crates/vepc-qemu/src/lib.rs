//! # vepc-qemu — QEMU, the real client, on the vepc model
//!
//! QEMU's SGX reset (`sgx_epc_reset` in `hw/i386/sgx.c`) is the most used caller of
//! `SGX_IOC_VEPC_REMOVE_ALL`. This crate runs a QEMU binary, unmodified, on the model
//! through the `LD_PRELOAD` shim (`crates/vepc-preload`) and tells what its reset did:
//!
//! - [`run`]: start QEMU with vEPC sections on the shim, reset the machine over QMP as
//!   many times as asked, quit, and read the shim's log, reset by reset;
//! - [`qmp`]: the few QMP commands that takes;
//! - [`log`]: the shim's log of REMOVE_ALL calls, grouped into resets and rounds;
//! - [`check`]: the cases a correct reset must handle (a transient and a persistent
//!   `EBUSY`, `ENOTTY`, `EINVAL`, the third argument), each judged from the log and
//!   QEMU's stderr, naming the bug when it shows one: what `vepc qemu-check` runs;
//! - [`bounded`]: every child process with a time limit and a cap on its output;
//! - [`disasm`]: whether the binary passes REMOVE_ALL's third argument on purpose,
//!   read from its machine code.
//!
//! The patch that fixes what the checks find in Debian's QEMU 7.2 is
//! `contrib/qemu/0001-*.patch`, built by `contrib/qemu/build`.

pub mod bounded;
pub mod check;
pub mod disasm;
pub mod log;
pub mod qmp;
pub mod run;
