//! Which descriptors are opens of the device, and what closing and duplicating them
//! does to the instance behind them.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use vepc::abi::Errno;
use vepc::device::EmulatedFile;

use super::{Open, Shim, lock};

impl Shim {
    /// `open("/dev/sgx_vepc", flags)`: a new instance, before the hooks make the
    /// descriptor for it.
    pub fn open(&self, flags: c_int) -> Result<Arc<EmulatedFile>, Errno> {
        if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 {
            return Err(Errno::EEXIST);
        }
        if flags & libc::O_DIRECTORY != 0 {
            return Err(Errno::ENOTDIR);
        }
        self.emulated.open(0)
    }

    /// The hooks made descriptor `fd` for `file`.
    pub fn opened(&self, fd: c_int, file: Arc<EmulatedFile>, flags: c_int) {
        let open = Arc::new(Open {
            file,
            writable: flags & libc::O_ACCMODE != libc::O_RDONLY,
            number: OnceLock::new(),
            first_map: OnceLock::new(),
            remove_alls: AtomicU64::new(0),
        });
        self.track_fd(fd, open);
    }

    fn track_fd(&self, fd: c_int, open: Arc<Open>) {
        let old = {
            let mut fds = lock(&self.fds);
            let old = fds.insert(fd, open);
            if old.is_none() {
                self.marks.set(fd);
            }
            old
        };
        // Outside the lock: dropping the last reference releases the instance.
        drop(old);
    }

    /// The open behind `fd`, if it is one of the shim's. Every `ioctl` of the program
    /// (a vCPU's `KVM_RUN` among them) asks, so a descriptor that is not the shim's is
    /// answered from a bitmap without the lock.
    pub fn fd(&self, fd: c_int) -> Option<Arc<Open>> {
        if !self.marks.maybe(fd) {
            return None;
        }
        lock(&self.fds).get(&fd).cloned()
    }

    /// Forgets `fd` before it is closed, so a new descriptor given the same number
    /// meanwhile is not mistaken for it. Drop the result after the close: if it was
    /// the last reference, that releases the instance.
    pub fn take_fd(&self, fd: c_int) -> Option<Arc<Open>> {
        if !self.marks.maybe(fd) {
            return None;
        }
        let mut fds = lock(&self.fds);
        let old = fds.remove(&fd);
        if old.is_some() {
            self.marks.clear(fd);
        }
        old
    }

    /// `fd` was closed (by `dup2` onto it, or `close_range`).
    pub fn closed(&self, fd: c_int) {
        drop(self.take_fd(fd));
    }

    /// Every descriptor in `first..=last` was closed (`close_range`).
    pub fn closed_range(&self, first: c_int, last: c_int) {
        let gone: Vec<c_int> = lock(&self.fds)
            .keys()
            .copied()
            .filter(|fd| (first..=last).contains(fd))
            .collect();
        for fd in gone {
            self.closed(fd);
        }
    }

    /// `new` is a duplicate of `old` (`dup`, `dup2`, `fcntl(F_DUPFD)`).
    pub fn duplicated(&self, old: c_int, new: c_int) {
        match self.fd(old) {
            Some(open) => self.track_fd(new, open),
            // `new` was closed first if it was one of ours.
            None => self.closed(new),
        }
    }
}

/// Which descriptors may be the shim's, readable without a lock: one bit per
/// descriptor below [`FdMarks::BITS`], and a count of the shim's descriptors above it.
/// Written only with the descriptor table's lock held, so it never says no for a
/// descriptor the table has.
#[derive(Debug)]
pub(super) struct FdMarks {
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
