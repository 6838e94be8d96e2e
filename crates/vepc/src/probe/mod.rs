//! `vepc probe`: can this host run SGX guests, with reboot support? What an operator
//! runs before starting them.
//!
//! - [`cpuid`]: decoding the CPU's SGX leaves (pure, tested on recorded registers);
//! - [`host`]: device nodes, kernel, sysfs, `/dev/kvm`;
//! - [`holders`]: which processes hold an SGX file open (and so block 6.19's EUPDATESVN);
//! - [`verdict`]: the answer, with every reason it is no.

pub mod cpuid;
pub mod holders;
pub mod host;

use crate::abi::{Errno, KernelVersion};
use crate::device::{SGX_VEPC_PATH, VepcError};
pub use host::{HostFacts, gather};

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Whether SGX guests can run here and be rebooted with REMOVE_ALL.
    pub ok: bool,
    /// Why not, most fundamental first (empty when `ok`).
    pub reasons: Vec<String>,
}

/// Judges the facts. Every missing piece is a reason, so an operator sees them all.
pub fn verdict(f: &HostFacts) -> Verdict {
    let mut reasons = Vec::new();
    match &f.cpu {
        None => reasons.push("not an x86-64 CPU: no SGX".to_string()),
        Some(c) if !c.sgx => reasons.push("the CPU has no SGX (CPUID.7.0:EBX[2] is 0)".into()),
        Some(c) if !c.sgx1 || c.sections.is_empty() => reasons.push(
            "the CPU has SGX but it is off: enable SGX in the firmware and give it EPC (PRMRR)"
                .into(),
        ),
        Some(c) if !c.sgx_lc => reasons.push(
            "the CPU lacks SGX launch control (FLC, CPUID.7.0:ECX[30]): KVM cannot give SGX \
             to guests"
                .into(),
        ),
        Some(_) => {}
    }
    if let Some(vepc) = f.devices.iter().find(|d| d.path == SGX_VEPC_PATH) {
        // What to do about the node is the device error's to say, as a VMM would hear it.
        let path = std::path::PathBuf::from(SGX_VEPC_PATH);
        match (&vepc.exists, &vepc.open_error) {
            (false, _) => reasons.push(
                VepcError::NoDevice {
                    path,
                    errno: Errno::ENOENT,
                }
                .to_string(),
            ),
            (true, Some(e)) => {
                let errno = Errno::from_name(e).unwrap_or(Errno::EACCES);
                let error = match errno {
                    Errno::EACCES | Errno::EPERM => VepcError::PermissionDenied {
                        path,
                        errno,
                        group: vepc.group.clone(),
                    },
                    _ => VepcError::open(path, errno),
                };
                reasons.push(format!("this user cannot open it: {error}"));
            }
            (true, None) => {}
        }
    }
    match f.kernel {
        Some(v) if !v.has_remove_all() => reasons.push(format!(
            "kernel {v} is older than {}: no SGX_IOC_VEPC_REMOVE_ALL, so a guest reboot needs \
             a VMM that recreates its vEPC instances",
            KernelVersion::REMOVE_ALL
        )),
        Some(_) => {}
        None => reasons.push(format!(
            "cannot read the kernel version from '{}'",
            f.kernel_release
        )),
    }
    if let Err(e) = &f.kvm {
        reasons.push(format!("KVM does not work: {e}"));
    }
    Verdict {
        ok: reasons.is_empty(),
        reasons,
    }
}
