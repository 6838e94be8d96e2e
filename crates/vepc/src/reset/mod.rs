//! The guest-reboot reset protocol of `Documentation/arch/x86/sgx.rst`
//! (docs/SEMANTICS.md §4), written once against [`VepcInstance`], which every guest
//! section implements: [`crate::device::VepcSection`] on the host's device or the
//! emulated one, and [`crate::device::ModelSection`] on the model without memory.
//!
//! 1. Round 1: REMOVE_ALL on every instance of the guest. Children go; SECS pages
//!    whose children live elsewhere (or later in index order) are counted.
//! 2. Round 2: REMOVE_ALL again on the instances that answered non-zero. Every child
//!    is gone by now, so a non-zero answer is a bug in the kernel or the caller.
//!
//! `EBUSY` (a vCPU inside an enclave, or a conflicting EREMOVE) makes the protocol
//! call the VMM's quiesce hook and retry that instance, a bounded number of times.
//! `ENOTTY` (a kernel before 5.16) makes it recreate every instance in place instead.
//!
//! # Serialization
//!
//! One reset runs at a time per device ([`ResetLock`]: the emulated device's, or the
//! host node's), so resets of unrelated VMs on different devices run side by side; a
//! quiesce hook that resets the same device again gets [`ResetError::Nested`], not a
//! deadlock. The `&mut` borrow of the instances keeps this process's code from
//! closing or replacing them meanwhile.
//! The VMM must not close a vEPC fd of the guest by other means (a raw `close` on a
//! duplicated fd, another process holding it) during a reset: a close runs the
//! kernel's release, whose EREMOVEs conflict with REMOVE_ALL's.

mod lock;
mod parallel;

pub use lock::ResetLock;

use std::time::{Duration, Instant};

use crate::abi::Errno;
use crate::device::{VepcError, VepcInstance};

/// How often the ENOTTY fallback opens again after an open's `EAGAIN` (EUPDATESVN found
/// no entropy; the kernel itself already tried ten times).
pub const RECREATE_EAGAIN_RETRIES: u32 = 3;

/// How REMOVE_ALL's first round is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Strategy {
    /// One call after another, in the order given (the documented protocol).
    #[default]
    Serial,
    /// Round 1 on all instances at once (one thread each), then every instance that
    /// answered `EBUSY` again, one by one; round 2 serially. For guests with an EPC
    /// section per NUMA node. Ends in the same state as [`Strategy::Serial`].
    Parallel,
}

/// Knobs of [`reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetOptions {
    /// How many times an instance answering `EBUSY` is retried (after calling the
    /// quiesce hook) before the reset fails.
    pub busy_retries: u32,
    /// Whether `ENOTTY` makes the reset recreate the instances instead of failing.
    pub recreate_on_enotty: bool,
    /// Serial or parallel first round.
    pub strategy: Strategy,
}

impl Default for ResetOptions {
    fn default() -> Self {
        Self {
            busy_retries: 3,
            recreate_on_enotty: true,
            strategy: Strategy::Serial,
        }
    }
}

/// One REMOVE_ALL call and what it answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Call {
    /// Position of the instance in the list given to [`reset`].
    pub instance: usize,
    /// 1 or 2.
    pub round: u8,
    /// The count of SECS pages left, or the errno's name.
    #[serde(serialize_with = "answer_str")]
    pub answer: Result<u64, Errno>,
    /// How long the call took.
    pub elapsed: Duration,
}

impl Call {
    /// Makes call `round` on `instance`, timing it.
    fn make<I: VepcInstance>(inst: &I, instance: usize, round: u8) -> (Self, Option<VepcError>) {
        let t = Instant::now();
        let answer = inst.remove_all();
        let call = Self {
            instance,
            round,
            answer: answer.as_ref().map(|&n| n).map_err(VepcError::errno),
            elapsed: t.elapsed(),
        };
        (call, answer.err())
    }
}

fn answer_str<S: serde::Serializer>(a: &Result<u64, Errno>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Ok(n) => s.serialize_str(&n.to_string()),
        Err(e) => s.serialize_str(&e.to_string()),
    }
}

/// What a reset did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ResetReport {
    /// Every REMOVE_ALL call, in the order they returned.
    pub calls: Vec<Call>,
    /// How many times the quiesce hook was called.
    pub quiesced: u32,
    /// Instances recreated because the kernel has no REMOVE_ALL (`None`: no fallback).
    pub recreated: Option<usize>,
    /// The strategy used.
    pub strategy: Strategy,
    /// Wall time of the whole reset.
    pub elapsed: Duration,
}

impl ResetReport {
    /// The final answer of each of the first `instances` instances in a round
    /// (`None`: not called then).
    pub fn round(&self, round: u8, instances: usize) -> Vec<Option<Result<u64, Errno>>> {
        let mut v = vec![None; instances];
        for c in self.calls.iter().filter(|c| c.round == round) {
            if let Some(slot) = v.get_mut(c.instance) {
                *slot = Some(c.answer);
            }
        }
        v
    }
}

/// Why a reset did not bring every page back to uninitialized. Each says what to do,
/// in the words of the [`VepcError`] the device answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetError {
    /// An instance kept answering `EBUSY`.
    #[error("instance {instance} still failed after {attempts} attempt(s): {error}")]
    Busy {
        /// Position of the instance.
        instance: usize,
        /// Calls made.
        attempts: u32,
        /// The last answer (`EBUSY`).
        error: VepcError,
    },
    /// A REMOVE_ALL failed with something else.
    #[error("REMOVE_ALL on instance {instance} in round {round}: {error}")]
    Ioctl {
        /// Position of the instance.
        instance: usize,
        /// 1 or 2.
        round: u8,
        /// What it answered.
        error: VepcError,
    },
    /// Round 2 still found SECS pages with children.
    #[error(
        "instance {instance} still has {count} SECS page(s) with children after round 2: a \
         child lives in an instance that was not part of the reset, or the kernel is buggy"
    )]
    SecsLeft {
        /// Position of the instance.
        instance: usize,
        /// What round 2 answered.
        count: u64,
    },
    /// Recreating an instance (the pre-5.16 fallback) failed.
    #[error("recreating instance {instance} (kernel without REMOVE_ALL): {error}")]
    Recreate {
        /// Position of the instance.
        instance: usize,
        /// What failed.
        error: VepcError,
    },
    /// The VMM's quiesce hook failed.
    #[error("the quiesce hook failed: {0}")]
    Quiesce(#[source] QuiesceError),
    /// A reset of these instances' device is already running in this thread: a
    /// quiesce hook that resets again. Nothing was called.
    #[error(
        "a reset of this device is already running in this thread (a quiesce hook that \
         resets again?): a reset cannot wait for itself"
    )]
    Nested,
}

/// Why the VMM's quiesce hook could not stop its vCPUs: any error, kept with its
/// sources (`From` a `String`, a `&str`, an `io::Error` or a [`VepcError`], or
/// [`QuiesceError::new`] for another).
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct QuiesceError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl QuiesceError {
    /// The hook's error `e`.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(std::sync::Arc::from(e.into()))
    }
}

impl PartialEq for QuiesceError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for QuiesceError {}

impl From<String> for QuiesceError {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&str> for QuiesceError {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<std::io::Error> for QuiesceError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e)
    }
}

impl From<VepcError> for QuiesceError {
    fn from(e: VepcError) -> Self {
        Self::new(e)
    }
}

impl ResetError {
    /// The errno behind the failure, if the device answered with one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Busy { error, .. } | Self::Ioctl { error, .. } | Self::Recreate { error, .. } => {
                Some(error.errno())
            }
            Self::SecsLeft { .. } | Self::Quiesce(_) | Self::Nested => None,
        }
    }
}

/// A failed reset: why, and what had been done until then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ResetFailed {
    /// Why it stopped.
    pub error: ResetError,
    /// The calls made until then (boxed: the error is what a caller matches on).
    pub report: Box<ResetReport>,
}

/// Called with an instance's position when it answered `EBUSY`: stop the vCPUs.
pub type Quiesce<'a> = &'a mut dyn FnMut(usize) -> Result<(), QuiesceError>;

/// Brings every page of the guest's instances back to uninitialized.
///
/// # Examples
///
/// A guest with an enclave whose SECS is in one section and whose children are in the
/// other, on the model: round 1 keeps the SECS, round 2 removes it.
///
/// ```
/// use vepc::abi::KernelVersion;
/// use vepc::device::ModelSection;
/// use vepc::driver::Device;
/// use vepc::model::{AddType, Epc};
/// use vepc::reset::{ResetOptions, reset};
///
/// let device = Device::new(Epc::new(&[64 * 4096])?, KernelVersion::DEFAULT);
/// let mut guest = vec![
///     ModelSection::open(&device, 8 * 4096)?,
///     ModelSection::open(&device, 8 * 4096)?,
/// ];
/// // The guest's ENCLS, on the model: SECS in section 0, a TCS in section 1.
/// let secs = guest[0].maps[0].touch(0)?;
/// device.epc().ecreate(secs)?;
/// device.epc().eadd(guest[1].maps[0].touch(0)?, secs, AddType::Tcs)?;
///
/// let report = reset(&mut guest, &ResetOptions::default(), None)?;
/// assert_eq!(report.round(1, 2), [Some(Ok(1)), Some(Ok(0))]);
/// assert_eq!(report.round(2, 2), [Some(Ok(0)), None]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn reset<I: VepcInstance + Sync>(
    instances: &mut [I],
    opts: &ResetOptions,
    quiesce: Option<Quiesce<'_>>,
) -> Result<ResetReport, ResetFailed> {
    let started = Instant::now();
    let _serialized = match lock::hold_all(instances.iter().filter_map(|i| i.reset_lock())) {
        Ok(held) => held,
        Err(lock::Nested) => {
            return Err(ResetFailed {
                error: ResetError::Nested,
                report: Box::default(),
            });
        }
    };
    let mut run = Run {
        opts,
        quiesce,
        report: ResetReport {
            strategy: opts.strategy,
            ..ResetReport::default()
        },
    };
    let outcome = run.protocol(instances);
    run.report.elapsed = started.elapsed();
    match outcome {
        Ok(()) => Ok(run.report),
        Err(error) => Err(ResetFailed {
            error,
            report: Box::new(run.report),
        }),
    }
}

struct Run<'o, 'q> {
    opts: &'o ResetOptions,
    quiesce: Option<Quiesce<'q>>,
    report: ResetReport,
}

/// Round 1 found a kernel without REMOVE_ALL.
struct NoRemoveAll;

/// Why an instance's calls stopped without an answer.
enum Stop {
    Device(VepcError),
    Quiesce(QuiesceError),
}

impl Run<'_, '_> {
    fn protocol<I: VepcInstance + Sync>(&mut self, instances: &mut [I]) -> Result<(), ResetError> {
        let round1 = match self.round1(instances)? {
            Ok(counts) => counts,
            Err(NoRemoveAll) => return self.recreate_all(instances),
        };
        for (i, left) in round1.into_iter().enumerate() {
            if left != 0 {
                match self.call_busy_aware(&instances[i], i, 2) {
                    Ok(0) => {}
                    Ok(count) => return Err(ResetError::SecsLeft { instance: i, count }),
                    Err(stop) => return Err(self.failure(i, 2, stop)),
                }
            }
        }
        Ok(())
    }

    fn round1<I: VepcInstance + Sync>(
        &mut self,
        instances: &[I],
    ) -> Result<Result<Vec<u64>, NoRemoveAll>, ResetError> {
        let first: Vec<Option<Result<u64, VepcError>>> = match self.opts.strategy {
            Strategy::Serial => (0..instances.len()).map(|_| None).collect(),
            Strategy::Parallel => parallel::round1(instances, &mut self.report.calls)
                .into_iter()
                .map(|a| match a {
                    // Conflicts between the concurrent calls: retried one by one below.
                    Err(e) if e.errno() == Errno::EBUSY => None,
                    other => Some(other),
                })
                .collect(),
        };
        let mut counts = Vec::with_capacity(instances.len());
        for (i, done) in first.into_iter().enumerate() {
            let answer = match done {
                Some(a) => a.map_err(Stop::Device),
                None => self.call_busy_aware(&instances[i], i, 1),
            };
            match answer {
                Ok(n) => counts.push(n),
                Err(Stop::Device(e))
                    if e.errno() == Errno::ENOTTY && self.opts.recreate_on_enotty =>
                {
                    return Ok(Err(NoRemoveAll));
                }
                Err(stop) => return Err(self.failure(i, 1, stop)),
            }
        }
        Ok(Ok(counts))
    }

    /// Calls REMOVE_ALL; on `EBUSY` calls the quiesce hook and retries, at most
    /// `busy_retries` times.
    fn call_busy_aware<I: VepcInstance>(
        &mut self,
        inst: &I,
        i: usize,
        round: u8,
    ) -> Result<u64, Stop> {
        let mut retries = 0;
        loop {
            let answer = self.call(inst, i, round);
            let busy = matches!(&answer, Err(e) if e.errno() == Errno::EBUSY);
            if !busy || retries == self.opts.busy_retries {
                return answer.map_err(Stop::Device);
            }
            retries += 1;
            if let Some(q) = self.quiesce.as_mut() {
                self.report.quiesced += 1;
                q(i).map_err(Stop::Quiesce)?;
            }
        }
    }

    fn call<I: VepcInstance>(&mut self, inst: &I, i: usize, round: u8) -> Result<u64, VepcError> {
        let (call, error) = Call::make(inst, i, round);
        let answer = call.answer;
        self.report.calls.push(call);
        match error {
            Some(e) => Err(e),
            None => answer.map_err(VepcError::remove_all),
        }
    }

    fn failure(&self, instance: usize, round: u8, stop: Stop) -> ResetError {
        match stop {
            Stop::Quiesce(why) => ResetError::Quiesce(why),
            Stop::Device(error) if error.errno() == Errno::EBUSY => ResetError::Busy {
                instance,
                attempts: self
                    .report
                    .calls
                    .iter()
                    .filter(|c| c.instance == instance && c.round == round)
                    .count() as u32,
                error,
            },
            Stop::Device(error) => ResetError::Ioctl {
                instance,
                round,
                error,
            },
        }
    }

    fn recreate_all<I: VepcInstance>(&mut self, instances: &mut [I]) -> Result<(), ResetError> {
        for (i, inst) in instances.iter_mut().enumerate() {
            // `recreate` opens the new instance before it drops the old, so the SGX
            // usage count never falls to 0 here and no EUPDATESVN runs (Linux 6.19): an
            // EAGAIN should not happen. Should one come (another process's open racing
            // the count), it is what sgx.c says it is, transient: try again, a few times.
            let mut tries = 0;
            loop {
                match inst.recreate() {
                    Err(VepcError::SvnUpdateRetry { .. }) if tries < RECREATE_EAGAIN_RETRIES => {
                        tries += 1;
                    }
                    done => break done,
                }
            }
            .map_err(|error| ResetError::Recreate { instance: i, error })?;
        }
        self.report.recreated = Some(instances.len());
        Ok(())
    }
}
