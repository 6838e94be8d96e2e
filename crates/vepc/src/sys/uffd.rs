//! userfaultfd (`linux/userfaultfd.h`): a thread is told of first touches of a range
//! and decides what each one gets.
//!
//! Only missing-page mode on shared file mappings is used: a fault fires when the file
//! has no page at that offset yet, so a page already there (touched through another
//! mapping, or before the range was registered) costs nothing.

use std::ffi::c_void;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

use super::kept::Kept;
use crate::abi::{Errno, IOC_READ, io, ioc, iowr};

const UFFDIO: u8 = 0xAA;
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u32 = iowr(UFFDIO, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u32 = iowr(UFFDIO, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u32 = ioc(IOC_READ, UFFDIO, 0x01, size_of::<UffdioRange>());
const UFFDIO_WAKE: u32 = ioc(IOC_READ, UFFDIO, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: u32 = iowr(UFFDIO, 0x03, size_of::<UffdioCopy>());
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `/dev/userfaultfd`'s one ioctl (Linux 6.1): a new userfaultfd, for hosts where the
/// system call is refused to unprivileged processes but the node is open to them.
const USERFAULTFD_IOC_NEW: u32 = io(UFFDIO, 0x00);
/// `_UFFDIO_COPY` in the `ioctls` mask a registration answers with.
const UFFDIO_COPY_BIT: u64 = 1 << 3;
/// `sizeof(struct uffd_msg)`.
const MSG_LEN: usize = 32;

const PAGE: usize = crate::abi::PAGE_SIZE as usize;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A request whose argument is a `T` the kernel reads and may write back.
struct WithStruct<'a, T>(u32, &'a mut T);

// SAFETY: each request built with it (the UFFDIO_* above) takes exactly the `repr(C)`
// struct it is given, laid out as `linux/userfaultfd.h` has it; the pointer is to a
// live, exclusively borrowed value for the call's duration.
unsafe impl<T> Ioctl for WithStruct<'_, T> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.0 as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::from_mut(self.1).cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

fn call<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: see `WithStruct`: callers pass the struct `request` takes.
    unsafe { rustix::ioctl::ioctl(fd, WithStruct(request, arg)) }.map_err(super::errno)
}

/// `USERFAULTFD_IOC_NEW`, whose argument is the new descriptor's flags.
struct NewFromNode(u32);

// SAFETY: the argument is an integer (the flags), not a pointer; the output is the
// new descriptor number, which the caller takes ownership of.
unsafe impl Ioctl for NewFromNode {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        USERFAULTFD_IOC_NEW as Opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        self.0 as usize as *mut c_void
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// What the thread reads: a first touch of the page at this address.
pub(crate) type Fault = usize;

/// An open userfaultfd, and an eventfd that stops its reader.
#[derive(Debug)]
pub(crate) struct Userfaultfd {
    fd: Kept,
    stop: Kept,
}

impl Userfaultfd {
    /// Opens one with the system call, or through `/dev/userfaultfd` where the call is
    /// refused, and does the API handshake. The error says why neither worked.
    pub(crate) fn open() -> Result<Self, String> {
        let flags = rustix::mm::UserfaultfdFlags::CLOEXEC | rustix::mm::UserfaultfdFlags::NONBLOCK;
        // SAFETY: userfaultfd(2) only creates a descriptor; nothing is registered yet.
        let fd = match unsafe { rustix::mm::userfaultfd(flags) } {
            Ok(fd) => fd,
            Err(call) => Self::from_node(flags.bits()).map_err(|node| {
                format!(
                    "userfaultfd(2) answered {} and /dev/userfaultfd {node}",
                    super::errno(call)
                )
            })?,
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        call(fd.as_fd(), UFFDIO_API, &mut api).map_err(|e| format!("UFFDIO_API answered {e}"))?;
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| format!("eventfd: {}", super::errno(e)))?;
        Ok(Self {
            fd: Kept::new(fd),
            stop: Kept::new(stop),
        })
    }

    fn from_node(flags: u32) -> Result<OwnedFd, Errno> {
        let node = super::fd::open_rdwr(std::path::Path::new("/dev/userfaultfd"))?;
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a
        // new descriptor.
        let raw =
            unsafe { rustix::ioctl::ioctl(&node, NewFromNode(flags)) }.map_err(super::errno)?;
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
    }

    /// Registers `[start, start + len)` for missing-page faults.
    pub(crate) fn register(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        call(self.fd.as_fd(), UFFDIO_REGISTER, &mut reg)?;
        if reg.ioctls & UFFDIO_COPY_BIT == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Takes `[start, start + len)` out of userfaultfd: first touches there become
    /// ordinary page faults again. Threads waiting on a fault in the range are woken
    /// and touch again (`userfaultfd_unregister()` wakes them).
    pub(crate) fn unregister(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        call(self.fd.as_fd(), UFFDIO_UNREGISTER, &mut range)
    }

    /// Fills the missing page at `page` with zeroes and wakes its toucher. `EEXIST`
    /// (another mapping of the same file page filled it first) only wakes.
    pub(crate) fn zero_page(&self, page: usize) {
        #[repr(C, align(4096))]
        struct ZeroPage([u8; PAGE]);
        static ZERO: ZeroPage = ZeroPage([0; PAGE]);
        let mut copy = UffdioCopy {
            dst: page as u64,
            src: (&raw const ZERO) as u64,
            len: PAGE as u64,
            mode: 0,
            copy: 0,
        };
        // The kernel copies only into a page that is missing in a registered range:
        // no data anybody wrote is overwritten.
        if call(self.fd.as_fd(), UFFDIO_COPY, &mut copy).is_err() {
            self.wake(page);
        }
    }

    /// Wakes the toucher of `page` without filling it: it touches again.
    pub(crate) fn wake(&self, page: usize) {
        let mut range = UffdioRange {
            start: page as u64,
            len: PAGE as u64,
        };
        let _ = call(self.fd.as_fd(), UFFDIO_WAKE, &mut range);
    }

    /// The next first touch, or `None` when nothing is pending (`EAGAIN`). `Err` when
    /// the descriptor is done for.
    pub(crate) fn next_fault(&self) -> Result<Option<Fault>, Errno> {
        let mut msg = [0u8; MSG_LEN];
        loop {
            match rustix::io::read(&self.fd, &mut msg) {
                Ok(MSG_LEN) => {
                    if msg[0] != UFFD_EVENT_PAGEFAULT {
                        continue;
                    }
                    let mut addr = [0u8; 8];
                    addr.copy_from_slice(&msg[16..24]);
                    return Ok(Some(u64::from_ne_bytes(addr) as usize & !(PAGE - 1)));
                }
                Ok(_) => continue,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(super::errno(e)),
            }
        }
    }

    /// Whether the descriptor is still this userfaultfd (a raw `close` or `dup2` by
    /// the program may have replaced it): `/proc/self/fd` names its kind.
    pub(crate) fn still_ours(&self) -> bool {
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd())
        );
        std::fs::read_link(path).map_or(true, |p| p.to_string_lossy() == "anon_inode:[userfaultfd]")
    }

    /// The descriptor's number, for messages.
    pub(crate) fn raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd())
    }

    /// Sleeps until a fault is pending; `false` once [`stop`](Self::stop) was called.
    ///
    /// It wakes at least once a second and checks that its descriptor is still the
    /// userfaultfd: a descriptor closed behind its back wakes no `poll` (Linux does
    /// not), and first touches would then silently be ordinary ones. `Err` then.
    pub(crate) fn wait(&self) -> Result<bool, ()> {
        let second = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        loop {
            let mut fds = [
                PollFd::new(&self.fd, PollFlags::IN),
                PollFd::new(&self.stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, Some(&second)) {
                Ok(_) if !fds[1].revents().is_empty() => return Ok(false),
                Ok(0) if !self.still_ours() => return Err(()),
                Ok(0) => continue,
                Ok(_) if fds[0].revents().contains(PollFlags::NVAL) => return Err(()),
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return Err(()),
            }
        }
    }

    /// Makes [`wait`](Self::wait) return `false`, now and from then on.
    pub(crate) fn stop(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
    }
}
