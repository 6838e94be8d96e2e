//! [`VepcInstance`]: what the reset protocol ([`crate::reset`]) needs of one guest EPC
//! section, on whichever device it was opened.

use std::sync::Arc;

use super::VepcError;
#[cfg(doc)]
use super::{ModelSection, VepcSection};
use crate::reset::ResetLock;

/// What the protocol needs of one guest EPC section: an open vEPC instance and its
/// mapping ([`VepcSection`] on either device,
/// [`ModelSection`] on the model without memory).
pub trait VepcInstance {
    /// `ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL, 0)`: the count of SECS pages left.
    fn remove_all(&self) -> Result<u64, VepcError>;

    /// Replaces the instance with a new one mapped over the same address range, then
    /// drops the old one (the only reset on kernels before 5.16).
    fn recreate(&mut self) -> Result<(), VepcError>;

    /// The lock that serializes resets of this instance's device
    /// ([`crate::reset::reset`] holds it); `None`: the caller serializes.
    fn reset_lock(&self) -> Option<&Arc<ResetLock>> {
        None
    }
}
