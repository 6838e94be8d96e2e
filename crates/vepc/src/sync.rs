//! The synchronization the model uses, from std, or from shuttle when the `shuttle`
//! feature explores thread schedules (`tests/concurrency.rs`). Arc and Weak are std's
//! either way, so the public API does not change.
//!
//! The model, the emulated device's table and the reset lock use these, so shuttle
//! explores them all. [`unpoisoned`] is for std's mutexes that stay std's (the kept
//! descriptors, the `LD_PRELOAD` shim).

#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::Condvar;
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{Mutex, MutexGuard, RwLock};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::thread::{ThreadId, current as current_thread, yield_now};

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::Condvar;
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{Mutex, MutexGuard, RwLock};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::thread::{ThreadId, current as current_thread, yield_now};

use std::sync::PoisonError;

/// Takes a mutex even if a panicking thread poisoned it: every structure the model
/// guards stays consistent between statements, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes a std mutex even if a panicking thread poisoned it, for state that stays
/// consistent between statements, as everything this workspace guards does.
pub fn unpoisoned<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
