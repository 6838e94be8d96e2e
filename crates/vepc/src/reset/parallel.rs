//! The parallel first round: one thread per instance, all calls at once.

use std::time::Instant;

use super::{Call, VepcInstance};
use crate::abi::Errno;

/// Calls REMOVE_ALL on every instance at once; records the calls in `calls` and
/// returns each instance's answer. Instances whose SECS and children are split
/// between sections conflict here (a `#GP` in the kernel, `EBUSY` here): the caller
/// retries those one by one.
pub(super) fn round1<I: VepcInstance + Sync>(
    instances: &[I],
    calls: &mut Vec<Call>,
) -> Vec<Result<u64, Errno>> {
    let answered: Vec<Call> = std::thread::scope(|s| {
        let handles: Vec<_> = instances
            .iter()
            .enumerate()
            .map(|(instance, inst)| {
                s.spawn(move || {
                    let t = Instant::now();
                    let answer = inst.remove_all();
                    Call {
                        instance,
                        round: 1,
                        answer,
                        elapsed: t.elapsed(),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(instance, h)| {
                h.join().unwrap_or(Call {
                    instance,
                    round: 1,
                    // A panicking implementation: treat like a conflict, retried serially.
                    answer: Err(Errno::EBUSY),
                    elapsed: std::time::Duration::ZERO,
                })
            })
            .collect()
    });
    let answers = answered.iter().map(|c| c.answer).collect();
    calls.extend(answered);
    answers
}
