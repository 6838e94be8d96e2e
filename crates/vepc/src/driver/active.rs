//! `sgx_active_page_list`: the reclaimable pages of host enclaves, oldest first.
//!
//! The kernel's is a linked list with `list_del` from anywhere. Here it is a queue in
//! the order pages were added, and a map from each listed page to its place: a page
//! taken off out of turn (its enclave released, or poisoned while in use) leaves a
//! stale entry in the queue, which the map no longer names and the scan skips. So
//! the scan that ksgxd does at every wake-up costs a pop per page instead of a tree
//! walk, and a million host pages written back cost tens of milliseconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::reclaim::HostEnclaveId;
use crate::model::EpcPage;

/// Hashes EPC page numbers: small integers the model itself hands out, so a
/// multiply spreads them well and SipHash's defence against chosen keys buys nothing.
#[derive(Debug, Default)]
pub(super) struct PageHasher(u64);

impl Hasher for PageHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by EPC page.
pub(super) type PageMap<V> = HashMap<EpcPage, V, BuildHasherDefault<PageHasher>>;

/// A set of EPC pages.
pub(super) type PageSet = HashSet<EpcPage, BuildHasherDefault<PageHasher>>;

/// The active list.
#[derive(Debug, Default)]
pub(super) struct ActiveList {
    /// `(sequence number, page)` in the order the pages were added; some stale.
    order: VecDeque<(u64, EpcPage)>,
    /// Each listed page: its sequence number (which entry of `order` is live) and
    /// its enclave.
    listed: PageMap<(u64, HostEnclaveId)>,
    next_seq: u64,
}

impl ActiveList {
    /// `list_add_tail`: `page` of enclave `id` becomes the newest.
    pub(super) fn push(&mut self, page: EpcPage, id: HostEnclaveId) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, page));
        self.listed.insert(page, (seq, id));
    }

    /// `list_del`: takes `page` off wherever it is; its enclave if it was listed.
    pub(super) fn remove(&mut self, page: EpcPage) -> Option<HostEnclaveId> {
        let (_, id) = self.listed.remove(&page)?;
        // Stale entries are skipped by the scan; when they outnumber the live ones
        // (an enclave released), the queue is rebuilt so it stays the list's size.
        if self.order.len() > 2 * self.listed.len() + 1024 {
            let listed = &self.listed;
            self.order
                .retain(|(seq, p)| listed.get(p).is_some_and(|(s, _)| s == seq));
        }
        Some(id)
    }

    /// The oldest `n` pages, taken off the list (fewer if it has fewer), into `out`.
    pub(super) fn take_oldest(&mut self, n: usize, out: &mut Vec<(EpcPage, HostEnclaveId)>) {
        let mut taken = 0;
        while taken < n {
            let Some((seq, page)) = self.order.pop_front() else {
                break;
            };
            if let std::collections::hash_map::Entry::Occupied(e) = self.listed.entry(page)
                && e.get().0 == seq
            {
                out.push((page, e.remove().1));
                taken += 1;
            }
        }
    }

    /// Pages on the list.
    pub(super) fn len(&self) -> usize {
        self.listed.len()
    }

    /// `list_empty`.
    pub(super) fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The listed pages, oldest first.
    pub(super) fn pages(&self) -> Vec<EpcPage> {
        self.order
            .iter()
            .filter(|(seq, p)| self.listed.get(p).is_some_and(|(s, _)| s == seq))
            .map(|&(_, p)| p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: HostEnclaveId = HostEnclaveId(0);

    #[test]
    fn pages_leave_oldest_first_and_a_page_taken_off_early_is_skipped() {
        let mut a = ActiveList::default();
        for p in 0..10 {
            a.push(EpcPage(p), E);
        }
        assert_eq!(a.remove(EpcPage(1)), Some(E));
        assert_eq!(a.remove(EpcPage(1)), None, "already off");
        let mut out = Vec::new();
        a.take_oldest(3, &mut out);
        let got: Vec<u32> = out.iter().map(|(p, _)| p.0).collect();
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
        a.push(EpcPage(7), E);
        a.push(EpcPage(8), E);
        a.remove(EpcPage(7));
        a.push(EpcPage(7), E);
        let mut out = Vec::new();
        a.take_oldest(16, &mut out);
        let got: Vec<u32> = out.iter().map(|(p, _)| p.0).collect();
        assert_eq!(got, [8, 7]);
        assert!(a.is_empty());
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut a = ActiveList::default();
        for round in 0..10u32 {
            for p in 0..2000 {
                a.push(EpcPage(p), HostEnclaveId(u64::from(round)));
            }
            for p in 0..2000 {
                a.remove(EpcPage(p));
            }
        }
        assert!(a.order.len() <= 1024 + 1, "{}", a.order.len());
    }
}
