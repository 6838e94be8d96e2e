//! EREMOVE, with the SDM's checks in the SDM's order (docs/SEMANTICS.md §3):
//!
//! 1. operand not 4 KiB aligned → `#GP`; not an EPC page → `#PF` ([`Epc::eremove_at`]);
//! 2. another leaf is on the page (for a child: on its SECS) → `#GP`;
//! 3. page not valid, or a TRIM page not MODIFIED → success, nothing to do;
//! 4. VA page → invalid;
//! 5. SECS with children → `SGX_CHILD_PRESENT`, else invalid;
//! 6. child of an enclave with a thread inside → `SGX_ENCLAVE_ACT`;
//! 7. else invalid, and the SECS loses a child.
//!
//! [`Sweep`] runs EREMOVE over a sequence of pages, as REMOVE_ALL and release do. It
//! keeps the SECS of a run of sibling pages locked between their EREMOVEs instead of
//! locking it once per page. Every answer it gives is one the hardware could give for
//! the same EREMOVEs issued back to back: holding the SECS a little longer only widens
//! the window in which a concurrent leaf on that enclave meets it and takes `#GP`.

use std::time::{Duration, Instant};

use super::epc::Epc;
use super::epcm::{Entry, EpcPage, PageType};
use crate::abi::EnclsError;

/// How many sibling pages a [`Sweep`] removes under one hold of their SECS before it
/// lets go, so a huge enclave does not lock out its neighbours for long.
const RUN_MAX: u32 = 64;

impl Epc {
    /// EREMOVE on the page at physical address `addr`.
    pub fn eremove_at(&self, addr: u64) -> Result<(), EnclsError> {
        self.eremove(self.page_at(addr)?)
    }

    /// EREMOVE on `page`.
    pub fn eremove(&self, page: EpcPage) -> Result<(), EnclsError> {
        Sweep::new(self).eremove(page)
    }
}

/// A run of EREMOVEs, one page after another, on one logical processor.
#[derive(Debug)]
pub struct Sweep<'e> {
    epc: &'e Epc,
    held: Option<Held>,
    cost: Duration,
}

/// A SECS the sweep holds locked, and how many of its children it has removed since.
#[derive(Debug)]
struct Held {
    secs: EpcPage,
    entry: Entry,
    removed: u32,
}

impl<'e> Sweep<'e> {
    /// A sweep over `epc`.
    pub fn new(epc: &'e Epc) -> Self {
        Self {
            epc,
            held: None,
            cost: epc.eremove_cost(),
        }
    }

    /// EREMOVE on `page`: answers exactly as [`Epc::eremove`] would.
    #[inline]
    pub fn eremove(&mut self, page: EpcPage) -> Result<(), EnclsError> {
        crate::sync::point();
        if !self.cost.is_zero() {
            burn(self.cost);
        }
        if let Some(h) = &mut self.held {
            let e = self.epc.entry(page);
            // A sibling of the held run: its SECS is locked by us, so the enclave has
            // no thread inside (checked when the run began) and nobody else can touch
            // this page (rule 2 of `epc`'s module comment).
            if e.is_child() && e.owner() == h.secs && !e.in_use() && !trim_unmodified(e) {
                self.epc.store(page, Entry::INVALID);
                h.removed += 1;
                if h.removed == RUN_MAX {
                    self.let_go();
                }
                return Ok(());
            }
            self.let_go();
        } else {
            // Rules 2 and 3 for the page most often met by a second walk (release
            // after a reset): already uninitialized, nothing to do, no call made.
            let e = self.epc.entry(page);
            if !e.valid() && !e.in_use() {
                return Ok(());
            }
        }
        self.eremove_one(page)
    }

    /// EWB on `page` ([`Epc::ewb`]), the next in this run: the reclaimer writes a
    /// scan's pages back one after another, and siblings go under one hold of their
    /// SECS as EREMOVE's do.
    pub fn ewb(&mut self, page: EpcPage) -> Result<(), EnclsError> {
        let e = self.epc.entry(page);
        if !e.valid() || e.is(PageType::Va) {
            return Err(EnclsError::PF);
        }
        // A held SECS's word keeps its thread count while it is locked.
        if e.is_child() && self.epc.entry(e.owner()).threads() > 0 {
            return Err(EnclsError::Code(crate::abi::SgxCode::NotTracked));
        }
        // Without a thread inside, EWB changes the EPCM as EREMOVE does.
        self.eremove(page)
    }

    /// Lets go of the SECS held, if any, so that its child count can be read.
    pub fn finish(&mut self) {
        self.let_go();
    }

    /// Unlocks the held SECS, if any, writing back its child count.
    fn let_go(&mut self) {
        if let Some(h) = self.held.take() {
            let left = h.entry.children() - h.removed;
            self.epc.unlock(h.secs, h.entry.with_children(left));
        }
    }

    fn eremove_one(&mut self, page: EpcPage) -> Result<(), EnclsError> {
        let epc = self.epc;
        loop {
            let e = epc.entry(page);
            if e.in_use() {
                return Err(EnclsError::GP);
            }
            if !e.valid() || trim_unmodified(e) {
                return Ok(());
            }
            match e.page_type() {
                PageType::Va => {
                    if epc.lock_from(page, e) {
                        epc.unlock(page, Entry::INVALID);
                        return Ok(());
                    }
                }
                PageType::Secs => {
                    if !epc.lock_from(page, e) {
                        continue;
                    }
                    if e.children() > 0 {
                        epc.unlock(page, e);
                        return Err(EnclsError::CHILD_PRESENT);
                    }
                    epc.unlock(page, Entry::INVALID);
                    return Ok(());
                }
                _child => {
                    // A child whose SECS is no SECS (#PF) means the EPCM contradicts
                    // itself: only a bug gets there; answer as broken hardware would.
                    let Some(s) = epc.lock_owner(page, e, false)? else {
                        continue;
                    };
                    let secs = e.owner();
                    if s.threads() > 0 {
                        epc.unlock(secs, s);
                        return Err(EnclsError::ENCLAVE_ACT);
                    }
                    epc.store(page, Entry::INVALID);
                    self.held = Some(Held {
                        secs,
                        entry: s,
                        removed: 1,
                    });
                    return Ok(());
                }
            }
        }
    }
}

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// Keeps this CPU busy for `d`, as a slow instruction would.
#[cold]
fn burn(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Step 3's second half: the SDM's EREMOVE goes straight to DONE, leaving the page as
/// it is, for a TRIM page whose MODIFIED bit is clear (docs/SEMANTICS.md §3).
fn trim_unmodified(e: Entry) -> bool {
    e.is(PageType::Trim) && !e.modified()
}

#[cfg(test)]
mod tests {
    use super::super::encls::AddType;
    use super::super::epc::EPC_PHYS_BASE as EPC_TEST_BASE;
    use super::*;

    fn epc() -> Epc {
        Epc::new(&[128 * 4096]).expect("valid EPC")
    }

    fn enclave(epc: &Epc, secs: u32, children: &[(u32, AddType)]) {
        epc.ecreate(EpcPage(secs)).expect("ecreate");
        for &(p, ty) in children {
            epc.eadd(EpcPage(p), EpcPage(secs), ty).expect("eadd");
        }
    }

    #[test]
    fn rule1_operand_must_be_an_aligned_epc_page() {
        let epc = epc();
        assert_eq!(epc.eremove_at(EPC_TEST_BASE + 8), Err(EnclsError::GP));
        assert_eq!(
            epc.eremove_at(EPC_TEST_BASE + 128 * 4096),
            Err(EnclsError::PF)
        );
        assert_eq!(epc.eremove_at(EPC_TEST_BASE + 4096), Ok(()));
    }

    #[test]
    fn rule2_a_page_in_use_by_another_leaf_gives_gp() {
        let epc = epc();
        enclave(&epc, 0, &[(1, AddType::Tcs)]);
        let held = epc.lock_secs(EpcPage(0)).expect("lock");
        assert_eq!(
            epc.eremove(EpcPage(1)),
            Err(EnclsError::GP),
            "child: through its SECS"
        );
        assert_eq!(
            epc.eremove(EpcPage(0)),
            Err(EnclsError::GP),
            "the SECS itself"
        );
        epc.unlock(EpcPage(0), held);
        epc.claim_invalid(EpcPage(9)).expect("claim");
        assert_eq!(
            epc.eremove(EpcPage(9)),
            Err(EnclsError::GP),
            "an invalid page in use"
        );
        assert!(epc.entry(EpcPage(1)).is_child(), "nothing changed");
    }

    #[test]
    fn rule3_invalid_and_unmodified_trim_pages_need_nothing() {
        let epc = epc();
        assert_eq!(epc.eremove(EpcPage(5)), Ok(()));
        enclave(&epc, 0, &[(1, AddType::Reg), (2, AddType::Reg)]);
        let trim = Entry::child(PageType::Trim, EpcPage(0));
        epc.store(EpcPage(1), trim);
        epc.store(EpcPage(2), trim.with_modified(true));
        assert_eq!(epc.eremove(EpcPage(1)), Ok(()));
        assert_eq!(epc.entry(EpcPage(1)), trim, "left as it was");
        assert_eq!(epc.eremove(EpcPage(2)), Ok(()));
        assert!(
            !epc.entry(EpcPage(2)).valid(),
            "a MODIFIED TRIM page is removed"
        );
        assert_eq!(epc.entry(EpcPage(0)).children(), 1);
    }

    #[test]
    fn rule4_va_pages_go_at_once() {
        let epc = epc();
        epc.epa(EpcPage(3)).expect("epa");
        assert_eq!(epc.eremove(EpcPage(3)), Ok(()));
        assert!(!epc.entry(EpcPage(3)).valid());
    }

    #[test]
    fn rule5_a_secs_goes_only_after_its_children() {
        let epc = epc();
        enclave(&epc, 0, &[(1, AddType::Tcs), (2, AddType::Reg)]);
        epc.einit(EpcPage(0)).expect("einit");
        epc.eenter(EpcPage(1)).expect("eenter");
        // A thread is inside, yet the SECS answers CHILD_PRESENT: that check is first.
        assert_eq!(epc.eremove(EpcPage(0)), Err(EnclsError::CHILD_PRESENT));
        epc.eexit(EpcPage(1)).expect("eexit");
        assert_eq!(epc.eremove(EpcPage(1)), Ok(()));
        assert_eq!(epc.eremove(EpcPage(0)), Err(EnclsError::CHILD_PRESENT));
        assert_eq!(epc.eremove(EpcPage(2)), Ok(()));
        assert_eq!(epc.entry(EpcPage(0)).children(), 0);
        assert_eq!(epc.eremove(EpcPage(0)), Ok(()));
        assert!(!epc.entry(EpcPage(0)).valid());
    }

    #[test]
    fn rule6_children_of_an_active_enclave_stay() {
        let epc = epc();
        enclave(&epc, 0, &[(1, AddType::Tcs), (2, AddType::Reg)]);
        epc.einit(EpcPage(0)).expect("einit");
        epc.eenter(EpcPage(1)).expect("eenter");
        assert_eq!(epc.eremove(EpcPage(2)), Err(EnclsError::ENCLAVE_ACT));
        assert_eq!(epc.eremove(EpcPage(1)), Err(EnclsError::ENCLAVE_ACT));
        assert_eq!(epc.entry(EpcPage(0)).children(), 2);
    }

    #[test]
    fn a_sweep_answers_as_single_eremoves_do() {
        let epc = epc();
        enclave(
            &epc,
            10,
            &(0..10).map(|p| (p, AddType::Reg)).collect::<Vec<_>>(),
        );
        enclave(&epc, 20, &[(11, AddType::Tcs)]);
        epc.epa(EpcPage(12)).expect("epa");
        let mut sweep = Sweep::new(&epc);
        let got: Vec<_> = (0..=20).map(|p| sweep.eremove(EpcPage(p))).collect();
        drop(sweep);
        // Children first, then their SECS (10 and 20) in index order: all succeed.
        assert_eq!(got, vec![Ok(()); 21]);
        assert!((0..=20).all(|p| !epc.entry(EpcPage(p)).valid()));
        assert!(
            (0..=20).all(|p| !epc.entry(EpcPage(p)).in_use()),
            "all locks let go"
        );
    }

    #[test]
    fn a_sweep_lets_go_of_its_secs_before_removing_it_and_after_a_run() {
        let epc = epc();
        let kids: Vec<_> = (1..=(RUN_MAX + 5)).map(|p| (p, AddType::Reg)).collect();
        enclave(&epc, 0, &kids);
        let mut sweep = Sweep::new(&epc);
        for p in 1..=RUN_MAX {
            sweep.eremove(EpcPage(p)).expect("child");
        }
        // After RUN_MAX siblings the SECS is free for others for a moment.
        assert!(!epc.entry(EpcPage(0)).in_use());
        sweep.eremove(EpcPage(RUN_MAX + 1)).expect("child");
        assert!(epc.entry(EpcPage(0)).in_use(), "held again");
        assert_eq!(sweep.eremove(EpcPage(0)), Err(EnclsError::CHILD_PRESENT));
        for p in RUN_MAX + 2..=RUN_MAX + 5 {
            sweep.eremove(EpcPage(p)).expect("child");
        }
        assert_eq!(sweep.eremove(EpcPage(0)), Ok(()));
        drop(sweep);
        assert_eq!(epc.entry(EpcPage(0)), Entry::INVALID);
    }

    #[test]
    fn a_held_run_makes_a_concurrent_leaf_on_the_enclave_conflict() {
        let epc = epc();
        enclave(&epc, 0, &[(1, AddType::Reg), (2, AddType::Tcs)]);
        epc.einit(EpcPage(0)).expect("einit");
        let mut sweep = Sweep::new(&epc);
        sweep.eremove(EpcPage(1)).expect("child");
        // Another logical processor, meanwhile:
        assert_eq!(epc.eremove(EpcPage(2)), Err(EnclsError::GP));
        assert_eq!(
            epc.eenter(EpcPage(2)),
            Err(EnclsError::GP),
            "no entry during removal"
        );
        drop(sweep);
        assert_eq!(epc.eenter(EpcPage(2)), Ok(()));
    }
}
