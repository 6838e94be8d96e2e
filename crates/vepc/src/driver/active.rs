//! `sgx_active_page_list`: the reclaimable pages of host enclaves, oldest first.
//!
//! The kernel's is a linked list with `list_del` from anywhere. Here it is a queue in
//! the order pages were added, and beside it one sequence number per EPC page naming
//! the queue entry that is live (0: not listed). A page taken off out of turn (its
//! enclave released, or poisoned while in use) leaves a stale entry in the queue,
//! which no longer matches its page's number and the scan skips. Both are plain
//! arrays read in the order the pages were allocated, so the scan that ksgxd does at
//! every wake-up costs a pop and a look-up in memory the previous page brought into
//! the cache, and eight million host pages written back cost well under a second.
//!
//! Which enclave a listed page belongs to is not kept here: the EPCM says
//! (`EPCM.ENCLAVESECS`), as it does for the kernel's `sgx_epc_page.owner`.

use std::collections::VecDeque;

use crate::model::EpcPage;

/// The active list.
#[derive(Debug, Default)]
pub(super) struct ActiveList {
    /// `(sequence number, page)` in the order the pages were added; some stale.
    order: VecDeque<(u32, EpcPage)>,
    /// By EPC page: the sequence number of its live entry in `order`, 0 when the
    /// page is not listed. Allocated zeroed at the first `push`, so the memory it
    /// costs is the part host enclave pages touch.
    seq: Vec<u32>,
    /// Pages listed.
    len: usize,
    /// The next sequence number; never 0.
    next_seq: u32,
}

impl ActiveList {
    /// `list_add_tail`: `page` becomes the newest. `epc_pages` is the EPC's size,
    /// for the first push.
    pub(super) fn push(&mut self, page: EpcPage, epc_pages: u32) {
        if self.seq.len() <= page.idx() {
            self.grow(epc_pages.max(page.0.saturating_add(1)));
        }
        if self.seq[page.idx()] != 0 {
            return; // already listed: list_add of a listed page is a kernel bug
        }
        if self.next_seq == u32::MAX || self.next_seq == 0 {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, page));
        self.seq[page.idx()] = seq;
        self.len += 1;
    }

    fn grow(&mut self, pages: u32) {
        let mut seq = vec![0u32; pages as usize];
        seq[..self.seq.len()].copy_from_slice(&self.seq);
        self.seq = seq;
    }

    /// Drops stale entries and numbers the live ones again from 1, in order.
    fn renumber(&mut self) {
        let seq = &mut self.seq;
        self.order
            .retain(|&(s, p)| seq.get(p.idx()).is_some_and(|&live| live == s));
        for (n, (s, p)) in (1u32..).zip(self.order.iter_mut()) {
            *s = n;
            seq[p.idx()] = n;
        }
        self.next_seq = self.order.len() as u32 + 1;
    }

    /// `list_del`: takes `page` off wherever it is. Whether it was listed.
    pub(super) fn remove(&mut self, page: EpcPage) -> bool {
        match self.seq.get_mut(page.idx()) {
            Some(s) if *s != 0 => *s = 0,
            _ => return false,
        }
        self.len -= 1;
        // Stale entries are skipped by the scan; when they outnumber the live ones
        // (an enclave released), the queue is rebuilt so it stays the list's size.
        if self.order.len() > 2 * self.len + 1024 {
            self.renumber();
        }
        true
    }

    /// The oldest `n` pages, taken off the list (fewer if it has fewer), into `out`.
    pub(super) fn take_oldest(&mut self, n: usize, out: &mut Vec<EpcPage>) {
        let mut taken = 0;
        while taken < n {
            let Some((s, page)) = self.order.pop_front() else {
                break;
            };
            let live = &mut self.seq[page.idx()];
            if *live == s {
                *live = 0;
                out.push(page);
                taken += 1;
            }
        }
        self.len -= taken;
    }

    /// Pages on the list.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `list_empty`.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The listed pages, oldest first.
    pub(super) fn pages(&self) -> Vec<EpcPage> {
        self.order
            .iter()
            .filter(|&&(s, p)| self.seq[p.idx()] == s)
            .map(|&(_, p)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPC: u32 = 4096;

    #[test]
    fn pages_leave_oldest_first_and_a_page_taken_off_early_is_skipped() {
        let mut a = ActiveList::default();
        for p in 0..10 {
            a.push(EpcPage(p), EPC);
        }
        assert!(a.remove(EpcPage(1)));
        assert!(!a.remove(EpcPage(1)), "already off");
        let mut out = Vec::new();
        a.take_oldest(3, &mut out);
        let got: Vec<u32> = out.iter().map(|p| p.0).collect();
        assert_eq!(got, [0, 2, 3]);
        assert_eq!(a.len(), 6);
        assert_eq!(
            a.pages().iter().map(|p| p.0).collect::<Vec<_>>(),
            [4, 5, 6, 7, 8, 9]
        );
    }

    #[test]
    fn a_page_added_again_is_newest_and_its_old_entry_stale() {
        let mut a = ActiveList::default();
        a.push(EpcPage(7), EPC);
        a.push(EpcPage(8), EPC);
        a.remove(EpcPage(7));
        a.push(EpcPage(7), EPC);
        let mut out = Vec::new();
        a.take_oldest(16, &mut out);
        let got: Vec<u32> = out.iter().map(|p| p.0).collect();
        assert_eq!(got, [8, 7]);
        assert!(a.is_empty());
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut a = ActiveList::default();
        for _ in 0..10 {
            for p in 0..2000 {
                a.push(EpcPage(p), EPC);
            }
            for p in 0..2000 {
                a.remove(EpcPage(p));
            }
        }
        assert!(a.order.len() <= 1024 + 1, "{}", a.order.len());
    }

    #[test]
    fn sequence_numbers_run_out_and_start_again_in_order() {
        let mut a = ActiveList {
            next_seq: u32::MAX - 3,
            ..ActiveList::default()
        };
        for p in 0..8 {
            a.push(EpcPage(p), EPC);
        }
        a.remove(EpcPage(2));
        a.push(EpcPage(2), EPC);
        let mut out = Vec::new();
        a.take_oldest(16, &mut out);
        let got: Vec<u32> = out.iter().map(|p| p.0).collect();
        assert_eq!(got, [0, 1, 3, 4, 5, 6, 7, 2]);
    }

    #[test]
    fn a_page_beyond_the_size_given_still_fits() {
        let mut a = ActiveList::default();
        a.push(EpcPage(EPC + 10), EPC);
        assert_eq!(a.pages(), [EpcPage(EPC + 10)]);
    }
}
