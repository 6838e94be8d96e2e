//! An instance's page index → EPC page map (the kernel's `vepc->page_array` xarray).
//!
//! Sparse by chunks of 512 entries, 4 bytes each: a densely populated instance costs
//! 4 bytes per page, and a huge mapping with few pages touched costs one 2 KiB chunk per
//! touched region, not memory in proportion to the mapping.
//!
//! Entries are only ever added while the instance is alive (faults never replace a page
//! and nothing but release removes one), so readers need no lock on the entries: a
//! walk may run beside faults, as `xa_for_each` in REMOVE_ALL does.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use crate::model::EpcPage;
use crate::sync::{AtomicU32, AtomicU64, Ordering, RwLock};

const CHUNK_SHIFT: u32 = 9;
const CHUNK: usize = 1 << CHUNK_SHIFT;

/// 512 entries; 0 is "no page", else the EPC page number plus one.
type Chunk = [AtomicU32; CHUNK];

#[derive(Debug, Default)]
pub(crate) struct PageMap {
    chunks: RwLock<BTreeMap<u64, Arc<Chunk>>>,
    present: AtomicU64,
}

fn split(index: u64) -> (u64, usize) {
    (index >> CHUNK_SHIFT, (index as usize) & (CHUNK - 1))
}

fn decode(raw: u32) -> Option<EpcPage> {
    raw.checked_sub(1).map(EpcPage)
}

impl PageMap {
    fn chunk(&self, key: u64) -> Option<Arc<Chunk>> {
        let map = self.chunks.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&key).cloned()
    }

    /// The page at `index`, if there is one.
    pub(crate) fn get(&self, index: u64) -> Option<EpcPage> {
        let (key, slot) = split(index);
        let map = self.chunks.read().unwrap_or_else(PoisonError::into_inner);
        decode(map.get(&key)?[slot].load(Ordering::Acquire))
    }

    /// Puts `page` at an empty `index`. Callers serialize inserts (the fault lock).
    pub(crate) fn insert(&self, index: u64, page: EpcPage) {
        let (key, slot) = split(index);
        let chunk = self.chunk_or_insert(key);
        debug_assert_eq!(
            chunk[slot].load(Ordering::Relaxed),
            0,
            "index {index} taken"
        );
        chunk[slot].store(page.0 + 1, Ordering::Release);
        self.present.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives every empty index in `start..start + count` a page from `next`, in index
    /// order, a chunk at a time; stops early when `next` runs dry and returns the first
    /// index left empty. Callers serialize this with inserts (the fault lock).
    pub(crate) fn fill(
        &self,
        start: u64,
        count: u64,
        mut next: impl FnMut() -> Option<EpcPage>,
    ) -> Result<(), u64> {
        let end = start.saturating_add(count);
        let mut index = start;
        while index < end {
            let (key, first_slot) = split(index);
            let chunk = self.chunk_or_insert(key);
            let slots = (CHUNK - first_slot).min((end - index) as usize);
            let mut added = 0;
            for slot in &chunk[first_slot..first_slot + slots] {
                if slot.load(Ordering::Relaxed) == 0 {
                    let Some(page) = next() else {
                        self.present.fetch_add(added, Ordering::Relaxed);
                        return Err(index);
                    };
                    slot.store(page.0 + 1, Ordering::Release);
                    added += 1;
                }
                index += 1;
            }
            self.present.fetch_add(added, Ordering::Relaxed);
        }
        Ok(())
    }

    fn chunk_or_insert(&self, key: u64) -> Arc<Chunk> {
        if let Some(c) = self.chunk(key) {
            return c;
        }
        let mut map = self.chunks.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(key)
                .or_insert_with(|| Arc::new(std::array::from_fn(|_| AtomicU32::new(0)))),
        )
    }

    /// How many indices of `start..start + count` have no page.
    pub(crate) fn empty_in(&self, start: u64, count: u64) -> u64 {
        let end = start.saturating_add(count);
        let mut index = start;
        let mut empty = 0;
        while index < end {
            let (key, first_slot) = split(index);
            let slots = (CHUNK - first_slot).min((end - index) as usize);
            empty += match self.chunk(key) {
                Some(chunk) => chunk[first_slot..first_slot + slots]
                    .iter()
                    .filter(|s| s.load(Ordering::Relaxed) == 0)
                    .count() as u64,
                None => slots as u64,
            };
            index += slots as u64;
        }
        empty
    }

    /// Pages present.
    pub(crate) fn len(&self) -> u64 {
        self.present.load(Ordering::Relaxed)
    }

    /// Calls `f(index, page)` for each present page in ascending index order; stops
    /// early when `f` says so. Takes the map's lock only to step from chunk to chunk.
    pub(crate) fn walk<B>(
        &self,
        f: impl FnMut(u64, EpcPage) -> std::ops::ControlFlow<B>,
    ) -> Option<B> {
        self.walk_from(0, f)
    }

    /// [`walk`](Self::walk) from the chunk holding `start` on.
    pub(crate) fn walk_from<B>(
        &self,
        start: u64,
        mut f: impl FnMut(u64, EpcPage) -> std::ops::ControlFlow<B>,
    ) -> Option<B> {
        let mut next = split(start).0;
        loop {
            let (key, chunk) = {
                let map = self.chunks.read().unwrap_or_else(PoisonError::into_inner);
                let (k, c) = map.range(next..).next()?;
                (*k, Arc::clone(c))
            };
            for (slot, raw) in chunk.iter().enumerate() {
                if let Some(page) = decode(raw.load(Ordering::Acquire))
                    && let std::ops::ControlFlow::Break(b) =
                        f((key << CHUNK_SHIFT) | slot as u64, page)
                {
                    return Some(b);
                }
            }
            next = key.checked_add(1)?;
        }
    }

    /// Removes the entries for which `keep(index, page)` is false (release, which owns
    /// the map outright).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u64, EpcPage) -> bool) {
        let map = self
            .chunks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let mut present = 0;
        map.retain(|&key, chunk| {
            let mut left = 0;
            let mut gone = [0u64; CHUNK / 64];
            for (slot, raw) in chunk.iter().enumerate() {
                if let Some(page) = decode(raw.load(Ordering::Relaxed)) {
                    if keep((key << CHUNK_SHIFT) | slot as u64, page) {
                        left += 1;
                    } else {
                        gone[slot / 64] |= 1 << (slot % 64);
                    }
                }
            }
            // A chunk left empty is dropped as it is: clearing it first would be a
            // write to every slot of memory about to be freed.
            if left > 0 {
                for (w, mut bits) in gone.into_iter().enumerate() {
                    while bits != 0 {
                        chunk[w * 64 + bits.trailing_zeros() as usize].store(0, Ordering::Relaxed);
                        bits &= bits - 1;
                    }
                }
            }
            present += left;
            left > 0
        });
        *self.present.get_mut() = present;
    }

    /// Model memory held, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        let map = self.chunks.read().unwrap_or_else(PoisonError::into_inner);
        // Each chunk, its Arc header, and about one B-tree slot (key + pointer) each.
        map.len() * (size_of::<Chunk>() + 16 + 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_in_counts_the_holes_of_a_range_across_chunks() {
        let m = PageMap::default();
        assert_eq!(m.empty_in(100, 2000), 2000);
        m.insert(511, EpcPage(1));
        m.insert(512, EpcPage(2));
        m.insert(5000, EpcPage(3));
        assert_eq!(m.empty_in(0, 1024), 1022);
        assert_eq!(m.empty_in(511, 2), 0);
        assert_eq!(m.empty_in(4999, 3), 2);
        assert_eq!(m.empty_in(u64::MAX - 1, 10), 1);
    }
    use std::ops::ControlFlow;

    #[test]
    fn walks_in_index_order_across_chunks() {
        let mut m = PageMap::default();
        for (i, p) in [(5000u64, 1u32), (3, 2), (u64::MAX, 3), (511, 4), (512, 5)] {
            m.insert(i, EpcPage(p));
        }
        let mut seen = vec![];
        m.walk::<()>(|i, p| {
            seen.push((i, p.0));
            ControlFlow::Continue(())
        });
        assert_eq!(seen, [(3, 2), (511, 4), (512, 5), (5000, 1), (u64::MAX, 3)]);
        assert_eq!(
            (m.len(), m.get(512), m.get(513)),
            (5, Some(EpcPage(5)), None)
        );
        m.retain(|i, _| i >= 512);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(3), None);
        assert_eq!(
            m.heap_bytes(),
            3 * (2048 + 32),
            "emptied chunks are dropped"
        );
    }
}
