//! The free pages of one EPC section: a bitmap (1 = free) with a rotating cursor, and
//! the section's poison list.
//!
//! A bitmap costs 1/8 byte per page where a free list of page numbers would cost 4,
//! and the cursor keeps allocation amortized O(1) for the common patterns (fill up,
//! then free everything). Poisoned pages are rare, so they are kept in sets.

use std::collections::BTreeSet;

use super::epcm::EpcPage;

#[derive(Debug)]
pub(crate) struct FreePool {
    first: u32,
    words: Vec<u64>,
    cursor: usize,
    free: u32,
    /// Pages with the kernel's `page->poison` set, free or in use.
    poisoned: BTreeSet<u32>,
    /// Of those, the ones on the node's `sgx_poison_page_list`: out of service.
    poison_list: BTreeSet<u32>,
}

/// What marking a page poisoned did (`arch_memory_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poisoning {
    /// It was poisoned already: nothing more to do.
    Already,
    /// It was free: it moved to the poison list and is never handed out again.
    WasFree,
    /// It is in use: it stays with its owner, and goes to the poison list when freed.
    InUse,
}

impl FreePool {
    /// All `pages` pages starting at `first` are free.
    pub(crate) fn new(first: u32, pages: u32) -> Self {
        let n = (pages as usize).div_ceil(64);
        let mut words = vec![u64::MAX; n];
        let tail = pages % 64;
        if tail != 0
            && let Some(last) = words.last_mut()
        {
            *last = (1u64 << tail) - 1;
        }
        Self {
            first,
            words,
            cursor: 0,
            free: pages,
            poisoned: BTreeSet::new(),
            poison_list: BTreeSet::new(),
        }
    }

    pub(crate) fn free_count(&self) -> u32 {
        self.free
    }

    pub(crate) fn is_free(&self, p: EpcPage) -> bool {
        let i = (p.0 - self.first) as usize;
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Takes a free page, lowest first from the cursor on.
    pub(crate) fn alloc(&mut self) -> Option<EpcPage> {
        if self.free == 0 {
            return None;
        }
        let n = self.words.len();
        for step in 0..n {
            let w = (self.cursor + step) % n;
            let word = self.words[w];
            if word != 0 {
                let bit = word.trailing_zeros();
                self.words[w] = word & !(1 << bit);
                self.cursor = w;
                self.free -= 1;
                return Some(EpcPage(self.first + (w as u32) * 64 + bit));
            }
        }
        None
    }

    /// Takes up to `max` free pages into `out`, lowest first from the cursor on,
    /// a whole bitmap word at a time where it can.
    pub(crate) fn alloc_batch(&mut self, max: usize, out: &mut Vec<EpcPage>) {
        let n = self.words.len();
        let mut want = max.min(self.free as usize);
        let mut step = 0;
        while want > 0 && step < n {
            let w = (self.cursor + step) % n;
            let mut word = self.words[w];
            // A whole free word, the common case of a fresh pool: 64 pages at once.
            if word == u64::MAX && want >= 64 {
                let base = self.first + (w as u32) * 64;
                out.extend((base..base + 64).map(EpcPage));
                want -= 64;
                self.free -= 64;
                word = 0;
            }
            while word != 0 && want > 0 {
                let bit = word.trailing_zeros();
                word &= word - 1;
                out.push(EpcPage(self.first + (w as u32) * 64 + bit));
                want -= 1;
                self.free -= 1;
            }
            self.words[w] = word;
            if word == 0 {
                step += 1;
            } else {
                self.cursor = w;
                return;
            }
        }
        self.cursor = (self.cursor + step) % n.max(1);
    }

    /// Returns a page taken by [`alloc`](Self::alloc), as `sgx_free_epc_page` does: to
    /// the free pages, or to the poison list if it is poisoned.
    pub(crate) fn release(&mut self, p: EpcPage) {
        if self.poisoned.contains(&p.0) {
            self.poison_list.insert(p.0);
            return;
        }
        let i = (p.0 - self.first) as usize;
        let bit = 1 << (i % 64);
        debug_assert!(
            self.words[i / 64] & bit == 0,
            "double free of EPC page {}",
            p.0
        );
        self.words[i / 64] |= bit;
        self.free += 1;
    }

    /// [`release`](Self::release) of the `len` pages from `first` on, all of this
    /// section: whole bitmap words at once.
    pub(crate) fn release_run(&mut self, first: EpcPage, len: u32) {
        if !self.poisoned.is_empty() {
            (first.0..first.0 + len).for_each(|p| self.release(EpcPage(p)));
            return;
        }
        let mut i = (first.0 - self.first) as usize;
        let end = i + len as usize;
        while i < end {
            let (word, bit) = (i / 64, i % 64);
            let n = (64 - bit).min(end - i);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.set_free(word, mask);
            i += n;
        }
    }

    fn set_free(&mut self, word: usize, bits: u64) {
        if let Some(w) = self.words.get_mut(word) {
            debug_assert!(*w & bits == 0, "double free in bitmap word {word}");
            *w |= bits;
            self.free += bits.count_ones();
        }
    }

    /// Sets `page->poison`: a free page leaves the free pages for the poison list.
    pub(crate) fn poison(&mut self, p: EpcPage) -> Poisoning {
        if !self.poisoned.insert(p.0) {
            return Poisoning::Already;
        }
        if !self.is_free(p) {
            return Poisoning::InUse;
        }
        let i = (p.0 - self.first) as usize;
        self.words[i / 64] &= !(1 << (i % 64));
        self.free -= 1;
        self.poison_list.insert(p.0);
        Poisoning::WasFree
    }

    /// Whether `page->poison` is set.
    pub(crate) fn is_poisoned(&self, p: EpcPage) -> bool {
        self.poisoned.contains(&p.0)
    }

    /// Whether the page is on the poison list.
    pub(crate) fn is_on_poison_list(&self, p: EpcPage) -> bool {
        self.poison_list.contains(&p.0)
    }

    /// How many pages are on the poison list.
    pub(crate) fn poison_list_len(&self) -> u32 {
        self.poison_list.len() as u32
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        // A B-tree node holds up to 11 keys: about 8 bytes a key, all told.
        self.words.capacity() * 8 + (self.poisoned.len() + self.poison_list.len()) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_every_page_once_and_takes_them_back() {
        let mut pool = FreePool::new(100, 130);
        let mut got: Vec<u32> = std::iter::from_fn(|| pool.alloc()).map(|p| p.0).collect();
        assert_eq!(got.len(), 130);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got, (100..230).collect::<Vec<_>>());
        assert_eq!((pool.free_count(), pool.alloc()), (0, None));
        pool.release(EpcPage(229));
        assert!(pool.is_free(EpcPage(229)) && !pool.is_free(EpcPage(100)));
        assert_eq!(pool.alloc(), Some(EpcPage(229)));
    }

    #[test]
    fn poisoned_pages_leave_service_free_or_at_release() {
        let mut pool = FreePool::new(0, 4);
        assert_eq!(pool.poison(EpcPage(0)), Poisoning::WasFree);
        assert_eq!(pool.poison(EpcPage(0)), Poisoning::Already);
        assert_eq!((pool.free_count(), pool.poison_list_len()), (3, 1));
        let taken: Vec<u32> = std::iter::from_fn(|| pool.alloc()).map(|p| p.0).collect();
        assert_eq!(taken, [1, 2, 3], "a poisoned free page is never handed out");
        assert_eq!(pool.poison(EpcPage(2)), Poisoning::InUse);
        assert!(pool.is_poisoned(EpcPage(2)) && !pool.is_on_poison_list(EpcPage(2)));
        pool.release(EpcPage(2));
        pool.release(EpcPage(3));
        assert!(pool.is_on_poison_list(EpcPage(2)) && !pool.is_free(EpcPage(2)));
        assert_eq!((pool.free_count(), pool.poison_list_len()), (1, 2));
        assert_eq!(pool.alloc(), Some(EpcPage(3)));
        assert_eq!(pool.alloc(), None);
    }

    /// A pool of 1000 pages, an eighth of its first half taken and kept at
    /// pseudo-random: scattered holes, then whole free words, then a partial one.
    fn holed() -> FreePool {
        let mut pool = FreePool::new(40, 1000);
        let mut taken = Vec::new();
        let mut x = 7u32;
        while let Some(p) = pool.alloc() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if p.0 >= 540 || x >> 29 != 0 {
                taken.push(p);
            }
        }
        taken.iter().for_each(|&p| pool.release(p));
        pool
    }

    #[test]
    fn a_batch_takes_the_pages_one_by_one_would_take_in_their_order() {
        for want in [1, 63, 64, 65, 200, 5000] {
            let (mut one, mut batch) = (holed(), holed());
            let singles: Vec<EpcPage> = (0..want).map_while(|_| one.alloc()).collect();
            let mut got = Vec::new();
            batch.alloc_batch(want, &mut got);
            assert_eq!(got, singles, "{want} pages");
            assert_eq!(batch.free_count(), one.free_count());
            // And the next page after it too: the cursor ended in the same place.
            assert_eq!(batch.alloc(), one.alloc(), "{want} pages");
        }
    }

    #[test]
    fn a_run_released_is_a_release_of_each_page() {
        for (from, len) in [(40, 1), (45, 100), (100, 64), (103, 900), (1039, 1)] {
            let (mut one, mut run) = (FreePool::new(40, 1000), FreePool::new(40, 1000));
            while one.alloc().is_some() {}
            while run.alloc().is_some() {}
            (from..from + len).for_each(|p| one.release(EpcPage(p)));
            run.release_run(EpcPage(from), len);
            assert_eq!(run.words, one.words, "{len} pages from {from}");
            assert_eq!(run.free_count(), one.free_count());
        }
    }
}
