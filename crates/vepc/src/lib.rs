//! # vepc — SGX virtual EPC, modelled
//!
//! Linux gives a VMM SGX memory for its guests through `/dev/sgx_vepc`. When a guest
//! reboots, every EPC page must be uninitialized again; the `SGX_IOC_VEPC_REMOVE_ALL`
//! ioctl (Linux 5.16) does that with EREMOVE, in a two-round protocol because a SECS
//! page cannot go while its children live.
//!
//! This crate is a faithful software model of both halves, usable without SGX:
//! - [`model`]: the EPC and EPCM as the processor keeps them, and the ENCLS leaves a
//!   guest runs (with the SDM's checks, `#GP` on concurrent conflicts included);
//! - [`driver`]: Linux's `/dev/sgx_vepc` (`arch/x86/kernel/cpu/sgx/virt.c`) on top of
//!   it: open, shared-only mmap, fault, `REMOVE_ALL`, release and the zombie list;
//! - [`script`]: the scenario language of `vepc sim` (`docs/SCRIPT.md`);
//! - [`device`]: `/dev/sgx_vepc` for VMMs, one API over the host's device and the
//!   emulated one (the model with real memory a VMM can hand to KVM);
//! - [`reset`]: the guest-reboot reset protocol, written once for every instance;
//! - [`probe`]: what a host operator needs to know before starting SGX guests;
//! - [`abi`]: request numbers, return codes and errno values, as the kernel has them;
//! - [`number`]: numbers and sizes as scripts and the tools' options write them;
//! - [`sys`]: the system calls underneath, the only place besides [`device`] allowed
//!   `unsafe`.
//!
//! The reference the model is held to is the repository's `docs/SEMANTICS.md` (and the
//! scenario language's, `docs/SCRIPT.md`), kept current with what the code does.

pub mod abi;
#[allow(unsafe_code)]
pub mod device;
pub mod driver;
pub mod model;
pub mod number;
pub mod probe;
pub mod reset;
pub mod script;
pub mod sync;
#[allow(unsafe_code)]
pub mod sys;

/// The README's library example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
