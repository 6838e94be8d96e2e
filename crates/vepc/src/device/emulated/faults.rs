//! The fault thread: each first touch of an exactly served range, answered as
//! `sgx_vepc_fault` answers it.

use std::os::fd::AsFd;
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use rustix::fs::MemfdFlags;

use super::{Emulated, PAGE};
use crate::abi::Errno;
use crate::sys::kept::Kept;
use crate::sys::mm;
use crate::sys::uffd::Userfaultfd;

/// Answers each first touch until the device goes.
///
/// After each fault it keeps reading for 200 µs before it sleeps: a program touching
/// page after page faults again within microseconds, and waking an idle CPU for every
/// fault costs more than the fault itself. Before it sleeps it checks that its
/// descriptor is still the userfaultfd: a program that closed it behind the device's
/// back would otherwise turn every later first touch into an ordinary one, silently.
pub(super) fn serve(uffd: &Userfaultfd, device: &Weak<Emulated>) {
    const SPIN: Duration = Duration::from_micros(200);
    let mut idle_since: Option<Instant> = None;
    loop {
        match uffd.next_fault() {
            Ok(Some(page)) => {
                idle_since = None;
                match device.upgrade() {
                    Some(d) => {
                        // A bug in serving must not leave the toucher asleep for ever
                        // with nobody to wake it: the device says it is lost, and the
                        // thread goes on serving.
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            d.serve_fault(uffd, page);
                        }));
                        if served.is_err() {
                            d.lose(format!(
                                "the fault thread panicked serving the page at {page:#x}: \
                                 a bug of the emulated device"
                            ));
                            uffd.wake(page);
                        }
                    }
                    None => uffd.wake(page),
                }
            }
            Ok(None) => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SPIN {
                    std::hint::spin_loop();
                    continue;
                }
                if !uffd.still_ours() {
                    lost(uffd, device, "it is another file now");
                    return;
                }
                match uffd.wait() {
                    Ok(true) => idle_since = None,
                    Ok(false) => return,
                    Err(()) => {
                        lost(uffd, device, "it is no longer the userfaultfd");
                        return;
                    }
                }
            }
            Err(e) => {
                lost(uffd, device, &format!("reading it answered {e}"));
                return;
            }
        }
    }
}

fn lost(uffd: &Userfaultfd, device: &Weak<Emulated>, why: &str) {
    if let Some(d) = device.upgrade() {
        d.lose(format!(
            "the device's userfaultfd (descriptor {}) was closed or replaced behind its \
             back ({why}): first touches can no longer reach the model",
            uffd.raw()
        ));
    }
}

/// Makes `[addr, addr + len)` answer every access with `SIGBUS`, as a vEPC page whose
/// fault found no free EPC does: it maps an empty file there, and a shared mapping
/// past the end of its file faults with `SIGBUS` (`BUS_ADRERR`) at the address, as
/// `VM_FAULT_SIGBUS` does; KVM's access to it fails with `EFAULT`.
///
/// # Safety
///
/// The range must lie in a vEPC mapping the device tracks, and the caller must hold
/// the device's lock, so that it is still that mapping.
pub(super) unsafe fn sigbus_pages(addr: usize, len: usize, prot: i32) -> Result<(), Errno> {
    static EMPTY: OnceLock<Option<Kept>> = OnceLock::new();
    let fd = EMPTY
        .get_or_init(|| {
            rustix::fs::memfd_create("sgx_vepc_sigbus", MemfdFlags::CLOEXEC)
                .ok()
                .map(Kept::new)
        })
        .as_ref()
        .ok_or(Errno::ENOMEM)?;
    // SAFETY: the caller vouches the range is vEPC memory, which no Rust reference
    // points into; replacing it leaves what the kernel's fault path would: no memory.
    unsafe { mm::map_fixed_shared(addr, fd.as_fd(), len, prot, 0, false) }?;
    let _ = mm::advise_as_vepc(addr, len);
    Ok(())
}

/// Pages, for the eager way's `SIGBUS` ranges.
pub(super) const fn pages(n: u64) -> usize {
    n as usize * PAGE
}
