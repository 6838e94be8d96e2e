//! [`ResetLock`]: one reset at a time per device, and a nested one refused.

use std::sync::Arc;

use crate::sync::{Condvar, Mutex, ThreadId};

/// Serializes the resets of one device's instances (docs/SEMANTICS.md §4.2: the
/// ioctls of a guest's instances must not run beside each other). It knows which
/// thread holds it, so a reset started again from inside a quiesce hook is refused
/// instead of waiting for itself.
#[derive(Debug)]
pub struct ResetLock {
    owner: Mutex<Option<ThreadId>>,
    freed: Condvar,
}

/// The current thread holds a lock already.
#[derive(Debug)]
pub(super) struct Nested;

/// Locks held for one reset; released on drop.
#[derive(Debug)]
pub(super) struct Held(Vec<Arc<ResetLock>>);

impl Drop for Held {
    fn drop(&mut self) {
        for l in &self.0 {
            *crate::sync::lock(&l.owner) = None;
            l.freed.notify_one();
        }
    }
}

impl ResetLock {
    /// A new lock, for a new device.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            owner: Mutex::new(None),
            freed: Condvar::new(),
        })
    }

    fn take(&self) -> Result<(), Nested> {
        let me = crate::sync::current_thread().id();
        let mut owner = crate::sync::lock(&self.owner);
        loop {
            match *owner {
                None => {
                    *owner = Some(me);
                    return Ok(());
                }
                Some(t) if t == me => return Err(Nested),
                Some(_) => {
                    owner = self
                        .freed
                        .wait(owner)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
        }
    }
}

/// Takes every distinct lock of `locks`, in one order (by address) so that two
/// resets over overlapping devices never wait for each other in a circle.
pub(super) fn hold_all<'a>(
    locks: impl Iterator<Item = &'a Arc<ResetLock>>,
) -> Result<Held, Nested> {
    let mut all: Vec<Arc<ResetLock>> = locks.cloned().collect();
    all.sort_by_key(|l| Arc::as_ptr(l) as usize);
    all.dedup_by(|a, b| Arc::ptr_eq(a, b));
    let mut held = Held(Vec::with_capacity(all.len()));
    for l in all {
        l.take()?;
        held.0.push(l);
    }
    Ok(held)
}
