//! The guest-reboot reset protocol of `Documentation/arch/x86/sgx.rst` (SEMANTICS.md
//! §4), written once against [`RemoveAll`] so the same code drives the model and,
//! later, the real device.
//!
//! Round 1 runs `SGX_IOC_VEPC_REMOVE_ALL` on every instance: children go, and SECS
//! pages whose children live in other instances are counted. Round 2 runs it again on
//! the instances that answered non-zero; by then every child is gone, so a non-zero
//! answer there is a bug in the kernel or in the caller.
//!
//! Not yet here (issue 3): the quiesce hook and bounded retries on `EBUSY`, the
//! recreate-in-place fallback for pre-5.16 kernels, and the per-call timings.

use crate::abi::Errno;
use crate::driver::VepcFile;

/// Something `SGX_IOC_VEPC_REMOVE_ALL` can be called on.
pub trait RemoveAll {
    /// `ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL, 0)`: the count of SECS pages left, or the
    /// errno.
    fn remove_all(&self) -> Result<u64, Errno>;
}

impl RemoveAll for VepcFile {
    fn remove_all(&self) -> Result<u64, Errno> {
        VepcFile::remove_all(self)
    }
}

/// Why a reset did not bring every page back to uninitialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    /// An instance's REMOVE_ALL failed.
    #[error(
        "REMOVE_ALL on instance {instance} in round {round} failed with {errno}{}",
        hint(*.errno)
    )]
    Ioctl {
        /// Position of the instance in the list given to [`reset`].
        instance: usize,
        /// 1 or 2.
        round: u8,
        /// What the ioctl answered.
        errno: Errno,
    },
    /// Round 2 still found SECS pages with children.
    #[error(
        "instance {instance} still has {count} SECS page(s) with children after round 2: \
         a child lives in an instance that was not part of the reset"
    )]
    SecsLeft {
        /// Position of the instance.
        instance: usize,
        /// What round 2 answered.
        count: u64,
    },
}

fn hint(errno: Errno) -> &'static str {
    match errno {
        Errno::EBUSY => {
            ": stop every vCPU that maps the guest's EPC, and serialize \
                         REMOVE_ALL with close() of vEPC fds, then retry"
        }
        Errno::ENOTTY => ": the kernel is older than 5.16; recreate the instance instead",
        Errno::EINVAL => ": the ioctl's argument must be 0",
        _ => "",
    }
}

/// What the rounds answered, per instance (`None`: not called in that round).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetReport {
    /// Round 1's answer for each instance.
    pub round1: Vec<u64>,
    /// Round 2's answer for each instance that needed it.
    pub round2: Vec<Option<u64>>,
}

/// Runs the two rounds over all of a guest's instances, in order. The caller must have
/// stopped the vCPUs and must not close any of these files meanwhile.
pub fn reset<I: RemoveAll>(instances: &[I]) -> Result<ResetReport, ResetError> {
    let call = |instance: usize, round: u8| {
        instances[instance]
            .remove_all()
            .map_err(|errno| ResetError::Ioctl {
                instance,
                round,
                errno,
            })
    };
    let round1 = (0..instances.len())
        .map(|i| call(i, 1))
        .collect::<Result<Vec<_>, _>>()?;
    let mut round2 = vec![None; instances.len()];
    for (i, &left) in round1.iter().enumerate() {
        if left != 0 {
            let again = call(i, 2)?;
            if again != 0 {
                return Err(ResetError::SecsLeft {
                    instance: i,
                    count: again,
                });
            }
            round2[i] = Some(again);
        }
    }
    Ok(ResetReport { round1, round2 })
}
