//! The free pages of one EPC section: a bitmap (1 = free) with a rotating cursor.
//!
//! A bitmap costs 1/8 byte per page where a free list of page numbers would cost 4,
//! and the cursor keeps allocation amortized O(1) for the common patterns (fill up,
//! then free everything).

use super::epcm::EpcPage;

#[derive(Debug)]
pub(crate) struct FreePool {
    first: u32,
    words: Vec<u64>,
    cursor: usize,
    free: u32,
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

    /// Returns a page taken by [`alloc`](Self::alloc).
    pub(crate) fn release(&mut self, p: EpcPage) {
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

    pub(crate) fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
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
}
