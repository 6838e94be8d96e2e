//! The ENCLS/ENCLU leaves a guest uses to build and run enclaves, with the SDM's
//! checks. The model keeps no page contents, measurements or keys: only what decides
//! whether EREMOVE can succeed (types, owners, children, initialization, threads).
//!
//! EREMOVE itself lives in [`super::eremove`].

use super::epc::Epc;
use super::epcm::{Entry, EpcPage, MAX_THREADS, PageType};
use super::eremove::Sweep;
use crate::abi::EnclsError;

/// The page types EADD can create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddType {
    /// `PT_REG`.
    Reg,
    /// `PT_TCS`.
    Tcs,
}

impl From<AddType> for PageType {
    fn from(t: AddType) -> Self {
        match t {
            AddType::Reg => PageType::Reg,
            AddType::Tcs => PageType::Tcs,
        }
    }
}

impl Epc {
    /// EWB's effect on the EPCM, as the host driver's reclaimer uses it on host
    /// enclaves' pages: the page is written out to regular memory and becomes invalid;
    /// a child's SECS loses a child. The model folds in the EBLOCK and ETRACK that come
    /// first and keeps no contents or version: what it keeps is what decides EREMOVE.
    /// `#PF` if the page is not valid or is a VA page (the kernel never evicts those),
    /// `SGX_CHILD_PRESENT` for a SECS that still has children, `SGX_NOT_TRACKED` for a
    /// child of an enclave a thread is inside, `#GP` on a conflict.
    pub fn ewb(&self, page: EpcPage) -> Result<(), EnclsError> {
        Sweep::new(self).ewb(page)
    }

    /// ECREATE: `page` becomes the SECS of a new, uninitialized enclave.
    /// `#GP` if another leaf is on the page, `#PF` if it is already valid.
    pub fn ecreate(&self, page: EpcPage) -> Result<(), EnclsError> {
        self.claim_invalid(page)?;
        self.unlock(page, Entry::secs());
        Ok(())
    }

    /// EPA: `page` becomes a version-array page (it belongs to no enclave).
    pub fn epa(&self, page: EpcPage) -> Result<(), EnclsError> {
        self.claim_invalid(page)?;
        self.unlock(page, Entry::va());
        Ok(())
    }

    /// EADD: `page` becomes a REG or TCS page of the enclave whose SECS is `secs`.
    /// `#PF` if the target is valid or `secs` is not a valid SECS; `#GP` if the
    /// enclave is already initialized or another leaf holds either page.
    pub fn eadd(&self, page: EpcPage, secs: EpcPage, ty: AddType) -> Result<(), EnclsError> {
        self.claim_invalid(page)?;
        // The target is uninitialized, so as the SECS operand it is no SECS. (Locking it
        // again would meet this very leaf's own lock and fault as a conflict.)
        if secs == page {
            self.unlock(page, Entry::INVALID);
            return Err(EnclsError::PF);
        }
        let s = match self.lock_secs(secs) {
            Ok(s) => s,
            Err(e) => {
                self.unlock(page, Entry::INVALID);
                return Err(e);
            }
        };
        if s.initialized() || s.children() == u32::MAX {
            self.unlock(secs, s);
            self.unlock(page, Entry::INVALID);
            return Err(EnclsError::GP);
        }
        self.unlock(page, Entry::child(ty.into(), secs));
        self.unlock(secs, s.with_children(s.children() + 1));
        Ok(())
    }

    /// A run of EADDs into one enclave, as a guest loading it issues them: answers as
    /// `eadd` would for each page in turn, stopping at the first failure (its position
    /// and error). Holds the SECS across the run, as [`crate::model::Sweep`] does for
    /// EREMOVE, so each page costs one compare-and-swap.
    pub fn eadd_batch(
        &self,
        pages: &[EpcPage],
        secs: EpcPage,
        ty: AddType,
    ) -> Result<(), (usize, EnclsError)> {
        let Some(&first) = pages.first() else {
            return Ok(());
        };
        // The first page goes through the one-page path, which orders its checks as
        // EADD does; after it the SECS is known to be a valid, uninitialized SECS.
        self.eadd(first, secs, ty).map_err(|e| (0, e))?;
        let s = self.lock_secs(secs).map_err(|e| (1, e))?;
        if s.initialized() {
            self.unlock(secs, s);
            return Err((1, EnclsError::GP));
        }
        let child = Entry::child(ty.into(), secs);
        let mut added = 0u32;
        let mut failed = None;
        for (i, &p) in pages.iter().enumerate().skip(1) {
            if p == secs || added == u32::MAX - s.children() {
                failed = Some((
                    i,
                    if p == secs {
                        EnclsError::PF
                    } else {
                        EnclsError::GP
                    },
                ));
                break;
            }
            // Claim and fill in one step: only an uninitialized page nobody holds
            // becomes our child (rule 1 of `epc`'s module comment).
            if !self.cas(p, Entry::INVALID, child) {
                let e = self.entry(p);
                failed = Some((
                    i,
                    if e.in_use() {
                        EnclsError::GP
                    } else {
                        EnclsError::PF
                    },
                ));
                break;
            }
            added += 1;
        }
        self.unlock(secs, s.with_children(s.children() + added));
        failed.map_or(Ok(()), Err)
    }

    /// EINIT: the enclave is initialized and can be entered. The model checks no
    /// SIGSTRUCT or token. `#PF` if `secs` is not a SECS, `#GP` if already initialized.
    pub fn einit(&self, secs: EpcPage) -> Result<(), EnclsError> {
        let s = self.lock_secs(secs)?;
        if s.initialized() {
            self.unlock(secs, s);
            return Err(EnclsError::GP);
        }
        self.unlock(secs, s.with_flag6(true));
        Ok(())
    }

    /// EENTER through the TCS at `tcs`: a thread is now inside its enclave.
    /// `#PF` if `tcs` is not a TCS; `#GP` if the enclave is not initialized, the TCS
    /// already has a thread, or one of the enclave's pages is being removed (or
    /// otherwise operated on) at this moment.
    pub fn eenter(&self, tcs: EpcPage) -> Result<(), EnclsError> {
        loop {
            let t = self.entry(tcs);
            if !t.is(PageType::Tcs) {
                return Err(EnclsError::PF);
            }
            let Some(s) = self.lock_owner(tcs, t, false)? else {
                continue;
            };
            let secs = t.owner();
            if !s.initialized() || t.tcs_busy() || s.threads() == MAX_THREADS {
                self.unlock(secs, s);
                return Err(EnclsError::GP);
            }
            self.store(tcs, t.with_flag6(true));
            self.unlock(secs, s.with_threads(s.threads() + 1));
            return Ok(());
        }
    }

    /// EEXIT of the thread that entered through `tcs`. `#UD` if no thread is inside
    /// through it (EEXIT outside enclave mode).
    pub fn eexit(&self, tcs: EpcPage) -> Result<(), EnclsError> {
        loop {
            let t = self.entry(tcs);
            if !t.is(PageType::Tcs) || !t.tcs_busy() {
                return Err(EnclsError::UD);
            }
            // EEXIT is the thread's own way out: it waits for the SECS rather than
            // faulting. A TCS whose SECS is no SECS: outside enclave mode, #UD.
            let s = match self.lock_owner(tcs, t, true) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(_) => return Err(EnclsError::UD),
            };
            let secs = t.owner();
            self.store(tcs, t.with_flag6(false));
            self.unlock(secs, s.with_threads(s.threads() - 1));
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epc() -> Epc {
        Epc::new(&[16 * 4096]).expect("valid EPC")
    }

    #[test]
    fn build_enter_and_leave_an_enclave() {
        let epc = epc();
        let (secs, tcs, reg) = (EpcPage(0), EpcPage(1), EpcPage(2));
        epc.ecreate(secs).expect("ecreate");
        epc.eadd(tcs, secs, AddType::Tcs).expect("eadd tcs");
        epc.eadd(reg, secs, AddType::Reg).expect("eadd reg");
        assert_eq!(epc.entry(secs).children(), 2);
        assert_eq!(epc.eenter(tcs), Err(EnclsError::GP), "not initialized yet");
        epc.einit(secs).expect("einit");
        assert_eq!(epc.einit(secs), Err(EnclsError::GP), "EINIT twice");
        assert_eq!(
            epc.eadd(EpcPage(3), secs, AddType::Reg),
            Err(EnclsError::GP)
        );
        assert!(!epc.entry(EpcPage(3)).valid() && !epc.entry(EpcPage(3)).in_use());
        epc.eenter(tcs).expect("eenter");
        assert_eq!(epc.eenter(tcs), Err(EnclsError::GP), "one thread per TCS");
        assert_eq!(epc.entry(secs).threads(), 1);
        epc.eexit(tcs).expect("eexit");
        assert_eq!(epc.eexit(tcs), Err(EnclsError::UD), "nobody inside");
        assert_eq!(epc.entry(secs).threads(), 0);
    }

    #[test]
    fn targets_must_be_free_and_operands_of_the_right_type() {
        let epc = epc();
        epc.ecreate(EpcPage(0)).expect("ecreate");
        assert_eq!(epc.ecreate(EpcPage(0)), Err(EnclsError::PF));
        assert_eq!(epc.epa(EpcPage(0)), Err(EnclsError::PF));
        epc.epa(EpcPage(1)).expect("epa");
        // The SECS operand must be a SECS.
        assert_eq!(
            epc.eadd(EpcPage(2), EpcPage(1), AddType::Reg),
            Err(EnclsError::PF)
        );
        assert_eq!(
            epc.eadd(EpcPage(2), EpcPage(5), AddType::Reg),
            Err(EnclsError::PF)
        );
        assert_eq!(epc.einit(EpcPage(1)), Err(EnclsError::PF));
        assert_eq!(
            epc.eenter(EpcPage(0)),
            Err(EnclsError::PF),
            "a SECS is not a TCS"
        );
        assert!(
            !epc.entry(EpcPage(2)).valid(),
            "a failed EADD leaves the target free"
        );
    }

    #[test]
    fn a_leaf_meeting_another_on_its_page_takes_gp() {
        let epc = epc();
        epc.ecreate(EpcPage(0)).expect("ecreate");
        let locked = epc.lock_secs(EpcPage(0)).expect("lock");
        assert_eq!(
            epc.eadd(EpcPage(1), EpcPage(0), AddType::Tcs),
            Err(EnclsError::GP)
        );
        assert_eq!(epc.einit(EpcPage(0)), Err(EnclsError::GP));
        epc.unlock(EpcPage(0), locked);
        assert!(epc.claim_invalid(EpcPage(1)).is_ok());
        assert_eq!(epc.ecreate(EpcPage(1)), Err(EnclsError::GP));
    }
}
