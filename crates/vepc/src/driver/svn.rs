//! SGX users and EUPDATESVN (arch/x86/kernel/cpu/sgx/main.c, `sgx_inc_usage_count`,
//! `sgx_update_svn`; queued for Linux 6.19).
//!
//! After a late microcode update the SGX security version (CPUSVN) is only raised by
//! EUPDATESVN, which needs every EPC page unused. The kernel counts SGX users (each
//! open `/dev/sgx_vepc`, each host enclave) under `sgx_svn_lock` and runs
//! EUPDATESVN when the count goes from 0 to 1, on the reasoning that "EPC is
//! guaranteed to be empty when there are no users". It retries
//! `SGX_INSUFFICIENT_ENTROPY` `RDRAND_RETRY_LOOPS` times, then fails the open with
//! `EAGAIN`; any answer but success or `SGX_NO_UPDATE` is a kernel warning and `EIO`.
//! A failed open does not count, so the next open tries again.
//!
//! The guarantee does not hold for zombie SECS pages: they outlive every fd, and only
//! a vEPC release drains the zombie list. A zombie still listed when the count drops
//! to 0 makes EUPDATESVN answer `SGX_EPC_NOT_READY` at every later first open, and no
//! vEPC can be opened to release it: `EIO` for every SGX user until reboot.
//!
//! The model's choice where the source is silent: EUPDATESVN checks that the EPC is
//! empty first, then entropy, then the SVN (the patch's cover letter says that with
//! nothing to update the operation still succeeds and regenerates the SGX
//! cryptographic assets, which needs the same empty EPC).

use super::Device;
use crate::abi::{EnclsError, Errno, SgxCode};
use crate::sync::lock_point;

/// `RDRAND_RETRY_LOOPS`: EUPDATESVN attempts before `EAGAIN`.
pub const RDRAND_RETRY_LOOPS: u32 = 10;

/// The SGX security version and its users, as the model's host has them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Svn {
    /// CPUSVN: the version enclaves attest to.
    pub cpusvn: u32,
    /// The loaded microcode's SVN: CPUSVN catches up at the next EUPDATESVN.
    pub microcode: u32,
    /// `sgx_usage_count`: open vEPC instances and live host enclaves.
    pub users: u64,
}

impl std::fmt::Display for Svn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpusvn={} microcode={} users={}",
            self.cpusvn, self.microcode, self.users
        )
    }
}

/// `sgx_svn_lock` and what it guards, with the CPU's side.
#[derive(Debug)]
pub(super) struct SvnState {
    /// `X86_FEATURE_SGX_EUPDATESVN` (CPUID.(EAX=12H,ECX=0):EAX[10]).
    eupdatesvn: bool,
    svn: Svn,
    /// The next this many EUPDATESVN executions find no entropy.
    entropy_failures: u32,
}

impl Default for SvnState {
    fn default() -> Self {
        Self {
            eupdatesvn: false,
            svn: Svn {
                cpusvn: 1,
                microcode: 1,
                users: 0,
            },
            entropy_failures: 0,
        }
    }
}

impl Device {
    /// Gives the CPU EUPDATESVN (or takes it away). Without it, `sgx_update_svn`
    /// returns 0 at once and only the count changes.
    pub fn set_eupdatesvn(&self, on: bool) {
        lock_point(&self.svn).eupdatesvn = on;
    }

    /// A late microcode load raises the loaded SVN to `svn` (never lowers it).
    pub fn load_microcode(&self, svn: u32) {
        let mut s = lock_point(&self.svn);
        s.svn.microcode = s.svn.microcode.max(svn);
    }

    /// The next `n` EUPDATESVN executions answer `SGX_INSUFFICIENT_ENTROPY`.
    pub fn fail_entropy(&self, n: u32) {
        lock_point(&self.svn).entropy_failures = n;
    }

    /// CPUSVN, the loaded SVN and the users now.
    pub fn svn(&self) -> Svn {
        lock_point(&self.svn).svn
    }

    /// `sgx_inc_usage_count` (Linux 6.19+; before, opens are not counted).
    pub(super) fn inc_usage(&self) -> Result<(), Errno> {
        if !self.kernel.counts_sgx_users() {
            return Ok(());
        }
        let mut s = lock_point(&self.svn);
        if s.svn.users == 0 {
            self.drain_zombies();
            self.update_svn(&mut s)?;
        }
        s.svn.users += 1;
        Ok(())
    }

    /// `sgx_dec_usage_count`.
    pub(super) fn dec_usage(&self) {
        if self.kernel.counts_sgx_users() {
            let mut s = lock_point(&self.svn);
            s.svn.users = s.svn.users.saturating_sub(1);
        }
    }

    /// `sgx_update_svn`, under `sgx_svn_lock` with no users.
    fn update_svn(&self, s: &mut SvnState) -> Result<(), Errno> {
        if !s.eupdatesvn {
            return Ok(());
        }
        let mut ret = Ok(());
        for _ in 0..RDRAND_RETRY_LOOPS {
            ret = self.eupdatesvn(s);
            if ret != Err(SgxCode::InsufficientEntropy) {
                break;
            }
        }
        match ret {
            Ok(()) | Err(SgxCode::NoUpdate) => Ok(()),
            Err(SgxCode::InsufficientEntropy) => Err(Errno::EAGAIN),
            Err(code) => {
                self.warn_once(super::WarnSite::Eupdatesvn, || {
                    format!(
                        "EUPDATESVN returned {} ({}) at the first open of an SGX file: every SGX \
                     open fails with EIO until the EPC is empty",
                        code as i32,
                        EnclsError::Code(code)
                    )
                });
                Err(Errno::EIO)
            }
        }
    }

    /// ENCLS[EUPDATESVN]: the EPC must be empty; then it needs entropy for the new
    /// cryptographic assets; then CPUSVN takes the loaded microcode's SVN, if newer.
    fn eupdatesvn(&self, s: &mut SvnState) -> Result<(), SgxCode> {
        if self.epc.any_valid() {
            return Err(SgxCode::EpcNotReady);
        }
        if s.entropy_failures > 0 {
            s.entropy_failures -= 1;
            return Err(SgxCode::InsufficientEntropy);
        }
        if s.svn.microcode > s.svn.cpusvn {
            s.svn.cpusvn = s.svn.microcode;
            Ok(())
        } else {
            Err(SgxCode::NoUpdate)
        }
    }
}
