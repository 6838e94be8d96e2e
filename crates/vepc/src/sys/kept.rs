//! Descriptors the library keeps for itself (an instance's memory, userfaultfd and its
//! eventfd, the log of the `LD_PRELOAD` shim), and keeping them out of a program's way.
//!
//! A program that runs on the shim must see the descriptor numbers the kernel would
//! give it, and nothing it does with descriptors it never opened (`close`,
//! `close_range`, `dup2` over a number, a `/proc/self/fd` sweep) may reach the shim's.
//! With [`hide_descriptors`] on, every [`Kept`] descriptor is moved at once to a number
//! at or above the process's soft `RLIMIT_NOFILE`: the kernel gives the program only
//! numbers below it, `dup2`/`dup3`/`F_DUPFD` onto one answer `EBADF` (the target is
//! past the limit), and a loop closing every number up to `sysconf(_SC_OPEN_MAX)`
//! stops short of them. The shim's hooks refuse `close` of them and skip them in
//! `close_range` and `closefrom` ([`is_kept`], [`kept_in`]). Where the soft limit
//! already equals the hard one, they go just below it instead, and the hooks refuse
//! `dup2` onto them as well.
//!
//! Off (the default, for a Rust VMM using the library in-process), a [`Kept`] is an
//! ordinary descriptor.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

static HIDE: AtomicBool = AtomicBool::new(false);
/// The lowest kept number, `i32::MAX` with none: the hooks' fast answer.
static LOWEST: AtomicI32 = AtomicI32::new(i32::MAX);
/// Every kept number; also serializes the moves (the soft limit is raised briefly).
static KEPT: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

/// How many numbers below the soft limit are used when it cannot be raised.
const BELOW_LIMIT: u64 = 64;

/// From now on, every [`Kept`] descriptor made in this process is moved out of the
/// program's way (the module's documentation says how). For the `LD_PRELOAD` shim.
pub fn hide_descriptors() {
    HIDE.store(true, Ordering::Release);
}

/// Whether `fd` is one of the library's kept descriptors (always `false` unless
/// [`hide_descriptors`] is on). Cheap for a program's own descriptors.
pub fn is_kept(fd: RawFd) -> bool {
    if fd < LOWEST.load(Ordering::Acquire) {
        return false;
    }
    crate::sync::unpoisoned(&KEPT).contains(&fd)
}

/// The kept descriptors in `first..=last`, in order.
pub fn kept_in(first: RawFd, last: RawFd) -> Vec<RawFd> {
    if last < LOWEST.load(Ordering::Acquire) || first > last {
        return Vec::new();
    }
    crate::sync::unpoisoned(&KEPT)
        .range(first..=last)
        .copied()
        .collect()
}

/// A descriptor the library keeps for itself. Closed on drop.
#[derive(Debug)]
pub struct Kept {
    fd: OwnedFd,
    registered: bool,
}

impl Kept {
    /// Keeps `fd`, moved out of the program's way if [`hide_descriptors`] is on. A
    /// move that fails leaves it where it is (the descriptor still works).
    pub fn new(fd: OwnedFd) -> Self {
        if !HIDE.load(Ordering::Acquire) {
            return Self {
                fd,
                registered: false,
            };
        }
        let mut kept = crate::sync::unpoisoned(&KEPT);
        let fd = move_high(fd);
        let raw = fd.as_raw_fd();
        kept.insert(raw);
        LOWEST.fetch_min(raw, Ordering::AcqRel);
        Self {
            fd,
            registered: true,
        }
    }
}

/// `fd` duplicated to a number at or above the soft `RLIMIT_NOFILE` (raised to the
/// hard limit for the moment of the `F_DUPFD_CLOEXEC`), or just below the soft limit
/// where it cannot be raised; the original is closed. Called with `KEPT` locked, which
/// serializes the changes of the limit.
fn move_high(fd: OwnedFd) -> OwnedFd {
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return fd;
    };
    let hard = hard.unwrap_or(u64::MAX);
    let moved = if hard > soft {
        let raised = Rlimit {
            current: Some(hard.min(soft + 4096)),
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_err() {
            return fd;
        }
        let moved = rustix::io::fcntl_dupfd_cloexec(&fd, soft as RawFd);
        let _ = setrlimit(Resource::Nofile, limit);
        moved
    } else {
        let base = soft.saturating_sub(BELOW_LIMIT.min(soft / 4)).max(3);
        rustix::io::fcntl_dupfd_cloexec(&fd, base as RawFd)
    };
    moved.unwrap_or(fd)
}

impl AsFd for Kept {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if self.registered {
            let raw = self.fd.as_raw_fd();
            let mut kept = crate::sync::unpoisoned(&KEPT);
            kept.remove(&raw);
            LOWEST.store(kept.first().copied().unwrap_or(i32::MAX), Ordering::Release);
        }
        // The OwnedFd closes it after this.
    }
}
