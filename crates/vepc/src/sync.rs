//! The synchronization the model uses: std's, or shuttle's for exploring thread
//! schedules. Arc and Weak are std's in every build, so the public API does not change.
//!
//! Three builds:
//! - default: std.
//! - `shuttle`: every lock and every atomic is shuttle's, so each access is a schedule
//!   point (`tests/concurrency.rs`, random and PCT schedules). The model, the emulated
//!   device's table and the reset lock all run on them.
//! - `explore` (wins over `shuttle`): the schedule points are only the ones the
//!   kernel's own code has, so shuttle's DFS can enumerate every interleaving at small
//!   scope (`tests/explore.rs`): a `point()` before each ENCLS leaf and one while it
//!   holds its EPCM lock (the window in which another logical processor meets it), and
//!   the `PointMutex`es, the kernel mutexes held across a leaf (the zombie list,
//!   `sgx_svn_lock`). Every other lock and atomic is std's and has no point inside:
//!   between two points a thread's steps are one atomic step, as one EREMOVE or one
//!   spinlocked list update is in the kernel. A std lock held across a point would
//!   deadlock the explorer, so any lock that is, must be a `PointMutex`.
//!
//! [`unpoisoned`] is for std's mutexes that stay std's (the kept descriptors, the
//! `LD_PRELOAD` shim).

#[cfg(not(all(feature = "shuttle", not(feature = "explore"))))]
pub(crate) use std::sync::Condvar;
#[cfg(not(all(feature = "shuttle", not(feature = "explore"))))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(all(feature = "shuttle", not(feature = "explore"))))]
pub(crate) use std::sync::{Mutex, MutexGuard, RwLock};
#[cfg(not(any(feature = "shuttle", feature = "explore")))]
pub(crate) use std::thread::{ThreadId, current as current_thread, yield_now};

#[cfg(all(feature = "shuttle", not(feature = "explore")))]
pub(crate) use shuttle::sync::Condvar;
#[cfg(all(feature = "shuttle", not(feature = "explore")))]
pub(crate) use shuttle::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(all(feature = "shuttle", not(feature = "explore")))]
pub(crate) use shuttle::sync::{Mutex, MutexGuard, RwLock};
#[cfg(any(feature = "shuttle", feature = "explore"))]
pub(crate) use shuttle::thread::{ThreadId, current as current_thread, yield_now};

/// A mutex the kernel holds across an ENCLS leaf: a schedule point under `explore`,
/// the crate's [`Mutex`] otherwise.
#[cfg(feature = "explore")]
pub(crate) use shuttle::sync::{Mutex as PointMutex, MutexGuard as PointMutexGuard};
/// A mutex the kernel holds across an ENCLS leaf: a schedule point under `explore`,
/// the crate's [`Mutex`] otherwise.
#[cfg(not(feature = "explore"))]
pub(crate) use {Mutex as PointMutex, MutexGuard as PointMutexGuard};

/// A schedule point of the `explore` build (see the module comment); nothing in the
/// others, where the locks and atomics are the points or there are none.
#[inline(always)]
pub(crate) fn point() {
    #[cfg(feature = "explore")]
    shuttle::thread::yield_now();
}

/// Takes a [`PointMutex`], as [`lock`] takes a [`Mutex`].
pub(crate) fn lock_point<T>(m: &PointMutex<T>) -> PointMutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
