//! Which descriptors are opens of the device.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{OpenFile, lock};

/// The program's descriptors that are opens of the device. Several may share one
/// open (`dup`); the instance is released when the last reference goes.
#[derive(Debug, Default)]
pub(super) struct Descriptors {
    table: Mutex<HashMap<c_int, Arc<OpenFile>>>,
    marks: FdMarks,
}

impl Descriptors {
    /// `fd` is now `open`. Returns what `fd` was before, to be dropped by the caller
    /// (outside any lock: dropping the last reference releases an instance).
    pub(super) fn insert(&self, fd: c_int, open: Arc<OpenFile>) -> Option<Arc<OpenFile>> {
        let mut table = lock(&self.table);
        let old = table.insert(fd, open);
        if old.is_none() {
            self.marks.set(fd);
        }
        old
    }

    /// The open behind `fd`, if it is one of the shim's. Every `ioctl` of the program
    /// (a vCPU's `KVM_RUN` among them) asks, so a descriptor that is not the shim's is
    /// answered from a bitmap without the lock.
    pub(super) fn get(&self, fd: c_int) -> Option<Arc<OpenFile>> {
        if !self.marks.maybe(fd) {
            return None;
        }
        lock(&self.table).get(&fd).cloned()
    }

    /// Forgets `fd`, returning its open.
    pub(super) fn take(&self, fd: c_int) -> Option<Arc<OpenFile>> {
        if !self.marks.maybe(fd) {
            return None;
        }
        let mut table = lock(&self.table);
        let old = table.remove(&fd);
        if old.is_some() {
            self.marks.clear(fd);
        }
        old
    }

    /// The shim's descriptors in `first..=last`.
    pub(super) fn in_range(&self, first: c_int, last: c_int) -> Vec<c_int> {
        lock(&self.table)
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect()
    }
}

/// Which descriptors may be the shim's, readable without a lock: one bit per
/// descriptor below [`FdMarks::BITS`], and a count of the shim's descriptors above it.
/// Written only with the descriptor table's lock held, so it never says no for a
/// descriptor the table has.
#[derive(Debug)]
struct FdMarks {
    bits: Vec<AtomicU64>,
    high: AtomicUsize,
}

impl Default for FdMarks {
    fn default() -> Self {
        Self {
            bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            high: AtomicUsize::new(0),
        }
    }
}

impl FdMarks {
    const BITS: usize = 4096;

    fn slot(fd: c_int) -> Option<(usize, u64)> {
        let fd = usize::try_from(fd).ok().filter(|&f| f < Self::BITS)?;
        Some((fd / 64, 1 << (fd % 64)))
    }

    fn maybe(&self, fd: c_int) -> bool {
        match Self::slot(fd) {
            Some((w, bit)) => self.bits[w].load(Ordering::Acquire) & bit != 0,
            None => fd >= 0 && self.high.load(Ordering::Acquire) > 0,
        }
    }

    fn set(&self, fd: c_int) {
        match Self::slot(fd) {
            Some((w, bit)) => {
                self.bits[w].fetch_or(bit, Ordering::Release);
            }
            None => {
                self.high.fetch_add(1, Ordering::Release);
            }
        }
    }

    fn clear(&self, fd: c_int) {
        match Self::slot(fd) {
            Some((w, bit)) => {
                self.bits[w].fetch_and(!bit, Ordering::Release);
            }
            None => {
                self.high.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FdMarks;

    #[test]
    fn marks_say_no_only_for_descriptors_never_set() {
        let m = FdMarks::default();
        assert!(!m.maybe(3) && !m.maybe(5000) && !m.maybe(-1));
        m.set(3);
        m.set(4095);
        m.set(5000);
        assert!(m.maybe(3) && m.maybe(4095) && m.maybe(5000));
        assert!(!m.maybe(4) && !m.maybe(-1));
        // Above the bitmap any descriptor may be ours while one is.
        assert!(m.maybe(6000));
        m.clear(3);
        m.clear(5000);
        assert!(!m.maybe(3) && !m.maybe(6000) && m.maybe(4095));
    }
}
