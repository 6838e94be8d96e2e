//! Memory errors in EPC pages: what `mm/memory-failure.c` hands to
//! `arch_memory_failure` (arch/x86/kernel/cpu/sgx/main.c, Linux 5.17 onward), and what
//! the kernels before it did.
//!
//! An error is reported either asynchronously (patrol scrub, a corrected-error
//! interrupt: no task is involved) or synchronously, by the machine check of the task
//! that read the poisoned data (`MF_ACTION_REQUIRED`). Only an enclave access reads
//! EPC data: an access from outside an enclave gets abort-page semantics (Intel SDM
//! Vol. 3D §38.5.1), so a VMM's own accesses to its vEPC mapping never consume
//! poison. Since 5.17 the page gets `page->poison`: a free page moves to its node's
//! poison list at once, a page in use stays with its owner (and, since 6.16, leaves the reclaimer's list)
//! and goes to the poison list when it is freed, at release or from the zombie list.
//! A synchronous error ends in `force_sig(SIGBUS)`: `si_code` `SI_KERNEL`, no
//! address. Before 5.17,
//! `memory_failure` finds no `struct page` for EPC and answers `-ENXIO` ("memory
//! outside kernel control"): the page stays in service and is handed out again, and a
//! synchronous error still kills with `force_sig(SIGBUS)` (`kill_me_now`).
//!
//! What EREMOVE does on a poisoned page, the source does not say. The model's choice:
//! it answers as on any page (EREMOVE changes the EPCM, not the page's data), so a
//! poisoned page still leaves a guest's reset and a release like any other.

use super::Device;
use crate::abi::{Errno, Signal};
use crate::model::{EpcPage, Poisoning};

/// What a memory error did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryFailure {
    /// What `memory_failure` answered: how the page was isolated, or `ENXIO`
    /// (not an EPC page, or a kernel before 5.17).
    pub handled: Result<Poisoning, Errno>,
    /// The signal the consuming task gets (synchronous errors only).
    pub signal: Option<Signal>,
}

impl Device {
    /// An uncorrected memory error in the EPC page at physical address `paddr`.
    /// `consumed`: a task read the poisoned data (`MF_ACTION_REQUIRED`); otherwise
    /// the error was found asynchronously. The page's memory stays bad either way.
    pub fn memory_failure(&self, paddr: u64, consumed: bool) -> MemoryFailure {
        let Ok(page) = self.epc.page_at(paddr) else {
            return MemoryFailure {
                handled: Err(Errno::ENXIO),
                signal: None,
            };
        };
        self.epc.fail_memory(page);
        let signal = consumed.then_some(Signal::SigbusKernel);
        if !self.kernel.isolates_poison() {
            return MemoryFailure {
                handled: Err(Errno::ENXIO),
                signal,
            };
        }
        let handled = self.epc.poison(page);
        if handled == Poisoning::InUse && self.kernel.unmarks_poisoned() {
            self.unmark_reclaimable(page);
        }
        MemoryFailure {
            handled: Ok(handled),
            signal,
        }
    }

    /// A memory error in the EPC page at `paddr` reported before ksgxd's boot
    /// sanitize pass reached it (after a kexec, or early in boot): `page->poison` is
    /// set while the page is still on the dirty list, and `__sgx_sanitize_pages`
    /// then moves it to the poison list with `list_move`, without
    /// `sgx_free_epc_page`, so it is never counted in `sgx_nr_free_pages`. The
    /// model's EPC starts sanitized, so this is for before the first SGX user.
    pub fn memory_failure_at_boot(&self, paddr: u64) -> MemoryFailure {
        let failure = self.memory_failure(paddr, false);
        if failure.handled == Ok(Poisoning::WasFree) {
            self.count_boot_poisoned();
        }
        failure
    }

    /// A task reads the data of `page`, which it holds: `SIGBUS` (`SI_KERNEL`) if its
    /// memory is bad, after the kernel has handled the machine check.
    pub(super) fn consume(&self, page: EpcPage) -> Result<(), Signal> {
        if !self.epc.is_bad(page) {
            return Ok(());
        }
        let paddr = self.epc.page_addr(page);
        match self.memory_failure(paddr, true).signal {
            Some(signal) => Err(signal),
            None => Ok(()),
        }
    }
}
