//! First touches through userfaultfd (`linux/userfaultfd.h`): every mapping of an
//! instance is registered for missing-page faults, and one thread answers each fault
//! as `sgx_vepc_fault` would: a zero page once the model has given the index an EPC
//! page, SIGBUS when it has none left.
//!
//! A missing-page fault on a shared file mapping fires only when the file has no page
//! at that offset yet, so a second mapping of a page already touched costs nothing,
//! as a second mapping of an index the driver's xarray already holds does.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vepc::abi::{Errno, IOC_READ, io, ioc, iowr};

use crate::sys::{errno, real};

const UFFDIO: u8 = 0xAA;
const UFFD_API: u64 = 0xAA;
const UFFDIO_API: u32 = iowr(UFFDIO, 0x3F, 24);
const UFFDIO_REGISTER: u32 = iowr(UFFDIO, 0x00, 32);
const UFFDIO_WAKE: u32 = ioc(IOC_READ, UFFDIO, 0x02, 16);
const UFFDIO_COPY: u32 = iowr(UFFDIO, 0x03, 40);
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `/dev/userfaultfd`'s one ioctl (Linux 6.1): a new userfaultfd, for hosts where the
/// system call is refused to unprivileged processes but the node is open to them.
const USERFAULTFD_IOC_NEW: u32 = io(UFFDIO, 0x00);
/// `_UFFDIO_COPY` in the `ioctls` mask a registration answers with.
const UFFDIO_COPY_BIT: u64 = 1 << 3;

const PAGE: usize = 4096;

/// How long the fault thread stays awake after a fault (see [`Userfaultfd::serve`]).
const SPIN: std::time::Duration = std::time::Duration::from_micros(200);

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

/// `struct uffd_msg` as far as a page fault needs it.
#[repr(C)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    flags: u64,
    address: u64,
    _feat: u64,
}

#[repr(C, align(4096))]
struct ZeroPage([u8; PAGE]);

/// What a page's first touch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The model backed it: the toucher gets a page.
    Backed,
    /// No EPC left: the toucher gets SIGBUS. The page is mapped with this protection.
    Sigbus {
        /// `PROT_*` of the mapping.
        prot: i32,
    },
    /// Not a tracked page (unmapped meanwhile): the toucher just retries.
    Unknown,
}

/// An open userfaultfd.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
}

impl Userfaultfd {
    /// Opens one with the system call, or through `/dev/userfaultfd` where the call is
    /// refused, and does the API handshake.
    pub fn open() -> Result<Self, String> {
        // SAFETY: userfaultfd(2) with valid flags; it returns a new descriptor or -1.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) }
                as i32;
        let fd = if raw >= 0 {
            // SAFETY: the descriptor was just created and is owned by nothing else.
            unsafe { OwnedFd::from_raw_fd(raw) }
        } else {
            let why = errno();
            Self::from_node().map_err(|node| {
                format!("userfaultfd(2) answered {why} and /dev/userfaultfd {node}")
            })?
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
        if unsafe { uffd_ioctl(&fd, UFFDIO_API, &mut api) } != 0 {
            return Err(format!("UFFDIO_API answered {}", errno()));
        }
        Ok(Self { fd })
    }

    fn from_node() -> Result<OwnedFd, Errno> {
        // SAFETY: a NUL-terminated path; `open` returns a new descriptor or -1.
        let node = unsafe {
            real::open(
                c"/dev/userfaultfd".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC,
                0,
            )
        };
        if node < 0 {
            return Err(errno());
        }
        // SAFETY: just opened, owned by nothing else.
        let node = unsafe { OwnedFd::from_raw_fd(node) };
        // SAFETY: USERFAULTFD_IOC_NEW takes the new descriptor's flags as its argument.
        let raw = unsafe {
            real::ioctl(
                node.as_raw_fd(),
                USERFAULTFD_IOC_NEW.into(),
                (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_ulong,
            )
        };
        if raw < 0 {
            return Err(errno());
        }
        // SAFETY: the ioctl returned a new descriptor owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Registers `[start, start + len)` for missing-page faults.
    pub fn register(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`.
        if unsafe { uffd_ioctl(&self.fd, UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(errno());
        }
        if reg.ioctls & UFFDIO_COPY_BIT == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Answers faults until the descriptor fails: `resolve(page address)` decides.
    ///
    /// After each fault the thread keeps reading for 200 µs before it sleeps in
    /// `poll`: a program touching page after page (QEMU's `prealloc`) faults again
    /// within microseconds, and on a virtual machine waking an idle vCPU for every
    /// fault costs more than the fault itself.
    pub fn serve(&self, resolve: impl Fn(usize) -> Answer) {
        static ZERO: ZeroPage = ZeroPage([0; PAGE]);
        let mut idle_since: Option<std::time::Instant> = None;
        loop {
            let mut msg = UffdMsg {
                event: 0,
                _reserved: [0; 7],
                flags: 0,
                address: 0,
                _feat: 0,
            };
            // SAFETY: reads at most one `struct uffd_msg` into `msg`.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&raw mut msg).cast::<c_void>(),
                    size_of::<UffdMsg>(),
                )
            };
            if n < 0 {
                match errno() {
                    Errno::EINTR => continue,
                    Errno::EAGAIN => {
                        let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() < SPIN {
                            std::hint::spin_loop();
                        } else {
                            self.wait();
                            idle_since = None;
                        }
                        continue;
                    }
                    _ => return,
                }
            }
            idle_since = None;
            if n as usize != size_of::<UffdMsg>() || msg.event != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let page = (msg.address as usize) & !(PAGE - 1);
            match resolve(page) {
                Answer::Backed => {
                    let mut copy = UffdioCopy {
                        dst: page as u64,
                        src: (&raw const ZERO) as u64,
                        len: PAGE as u64,
                        mode: 0,
                        copy: 0,
                    };
                    // SAFETY: UFFDIO_COPY reads a zero page from our static and fills
                    // the faulting page, which lies in a range we registered.
                    let r = unsafe { uffd_ioctl(&self.fd, UFFDIO_COPY, &mut copy) };
                    // EEXIST: another mapping of the same page filled it first; the
                    // toucher only needs waking.
                    if r != 0 {
                        self.wake(page);
                    }
                }
                Answer::Sigbus { prot } => {
                    // Even if the remap failed, wake the toucher: it retries and
                    // faults again, and is answered again.
                    let _ = crate::sys::map_sigbus(page, PAGE, prot);
                    self.wake(page);
                }
                Answer::Unknown => self.wake(page),
            }
        }
    }

    /// Sleeps until a message is there.
    fn wait(&self) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, no timeout.
        unsafe { libc::poll(&raw mut pfd, 1, -1) };
    }

    fn wake(&self, page: usize) {
        let mut range = UffdioRange {
            start: page as u64,
            len: PAGE as u64,
        };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range`.
        unsafe { uffd_ioctl(&self.fd, UFFDIO_WAKE, &mut range) };
    }
}

/// One userfaultfd request whose argument is a struct the kernel reads (and may write).
///
/// # Safety
/// `T` must be the struct `request` takes, laid out as `linux/userfaultfd.h` has it.
unsafe fn uffd_ioctl<T>(fd: &OwnedFd, request: u32, arg: &mut T) -> libc::c_int {
    // SAFETY: `arg` is a live, exclusive `T`, and the caller vouches that `T` is what
    // `request` reads and writes.
    unsafe {
        real::ioctl(
            fd.as_raw_fd(),
            request.into(),
            std::ptr::from_mut(arg) as libc::c_ulong,
        )
    }
}
