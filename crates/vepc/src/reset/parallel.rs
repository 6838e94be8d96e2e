//! The parallel first round: one thread per instance, all calls at once.

use super::Call;
use crate::abi::Errno;
use crate::device::{VepcError, VepcInstance};

/// Calls REMOVE_ALL on every instance at once; records the calls in `calls` and
/// returns each instance's answer. Instances whose SECS and children are split
/// between sections conflict here (a `#GP` in the kernel, `EBUSY` here): the caller
/// retries those one by one.
pub(super) fn round1<I: VepcInstance + Sync>(
    instances: &[I],
    calls: &mut Vec<Call>,
) -> Vec<Result<u64, VepcError>> {
    let answered: Vec<(Call, Option<VepcError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = instances
            .iter()
            .enumerate()
            .map(|(instance, inst)| s.spawn(move || Call::make(inst, instance, 1)))
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(instance, h)| {
                h.join().unwrap_or_else(|_| {
                    // A panicking implementation: treat like a conflict, retried serially.
                    let busy = Call {
                        instance,
                        round: 1,
                        answer: Err(Errno::EBUSY),
                        elapsed: std::time::Duration::ZERO,
                    };
                    (busy, Some(VepcError::remove_all(Errno::EBUSY)))
                })
            })
            .collect()
    });
    answered
        .into_iter()
        .map(|(call, error)| {
            let answer = match error {
                Some(e) => Err(e),
                None => call.answer.map_err(VepcError::remove_all),
            };
            calls.push(call);
            answer
        })
        .collect()
}
