//! Which address ranges are mappings of which instance, kept as the kernel keeps VMAs:
//! a new `MAP_FIXED` mapping or an `munmap` over part of a range leaves the pieces
//! outside it, each with its own page offset into the instance. Each range carries
//! the token of the mapping that made it, so its owner removes exactly its own pieces
//! and never a newer mapping that took the same addresses.

use crate::abi::PAGE_SIZE;

/// One mapped range.
#[derive(Debug, Clone)]
pub(crate) struct Region<T> {
    /// First byte.
    pub(crate) start: usize,
    /// One past the last byte.
    pub(crate) end: usize,
    /// The instance page at `start`.
    pub(crate) pgoff: u64,
    /// `PROT_*` it was mapped with.
    pub(crate) prot: i32,
    /// The mapping that made it (its pieces share it).
    pub(crate) token: u64,
    /// What it maps.
    pub(crate) what: T,
}

/// Every tracked range.
#[derive(Debug)]
pub(crate) struct Regions<T> {
    list: Vec<Region<T>>,
}

impl<T> Default for Regions<T> {
    fn default() -> Self {
        Self { list: Vec::new() }
    }
}

const PAGE: usize = PAGE_SIZE as usize;

impl<T: Clone> Regions<T> {
    /// Records a new mapping; whatever it covers is gone (a `MAP_FIXED` mapping
    /// replaces what was there). Returns what was removed, to be dropped by the
    /// caller outside its locks.
    pub(crate) fn insert(&mut self, new: Region<T>) -> Vec<T> {
        let removed = self.remove(new.start, new.end - new.start);
        self.list.push(new);
        removed
    }

    /// Forgets `[start, start + len)`, as `munmap` does, splitting ranges it cuts.
    /// Returns the payloads of the pieces removed (one per range it touched).
    pub(crate) fn remove(&mut self, start: usize, len: usize) -> Vec<T> {
        let end = start.saturating_add(len);
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.list.len() + 1);
        for r in self.list.drain(..) {
            if r.end <= start || r.start >= end {
                kept.push(r);
                continue;
            }
            removed.push(r.what.clone());
            if r.start < start {
                kept.push(Region {
                    end: start,
                    what: r.what.clone(),
                    ..r.clone()
                });
            }
            if end < r.end {
                kept.push(Region {
                    start: end,
                    pgoff: r.pgoff + ((end - r.start) / PAGE) as u64,
                    ..r
                });
            }
        }
        self.list = kept;
        removed
    }

    /// The pieces left of mapping `token`, as `(start, end)`.
    pub(crate) fn of_token(&self, token: u64) -> Vec<(usize, usize)> {
        self.list
            .iter()
            .filter(|r| r.token == token)
            .map(|r| (r.start, r.end))
            .collect()
    }

    /// The range holding `addr`, and the instance page index there.
    pub(crate) fn find(&self, addr: usize) -> Option<(&Region<T>, u64)> {
        self.list
            .iter()
            .find(|r| r.start <= addr && addr < r.end)
            .map(|r| (r, r.pgoff + ((addr - r.start) / PAGE) as u64))
    }

    /// Every range, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Region<T>> {
        self.list.iter()
    }

    /// Whether nothing is tracked.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: usize = 0x10_0000;

    fn region(start: usize, pages: usize, pgoff: u64, token: u64, what: char) -> Region<char> {
        Region {
            start,
            end: start + pages * PAGE,
            pgoff,
            prot: 3,
            token,
            what,
        }
    }

    fn spans(r: &Regions<char>) -> Vec<(usize, usize, u64, char)> {
        let mut v: Vec<_> = r
            .iter()
            .map(|r| (r.start, r.end, r.pgoff, r.what))
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn find_gives_the_instance_page() {
        let mut r = Regions::default();
        r.insert(region(A, 8, 3, 1, 'a'));
        assert_eq!(r.find(A).map(|(_, i)| i), Some(3));
        assert_eq!(r.find(A + 5 * PAGE + 17).map(|(_, i)| i), Some(8));
        assert!(r.find(A + 8 * PAGE).is_none());
        assert!(r.find(A - 1).is_none());
    }

    #[test]
    fn munmap_in_the_middle_splits_with_offsets() {
        let mut r = Regions::default();
        r.insert(region(A, 8, 0, 1, 'a'));
        let gone = r.remove(A + 2 * PAGE, 3 * PAGE);
        assert_eq!(gone, vec!['a']);
        assert_eq!(
            spans(&r),
            vec![
                (A, A + 2 * PAGE, 0, 'a'),
                (A + 5 * PAGE, A + 8 * PAGE, 5, 'a')
            ]
        );
        assert_eq!(r.find(A + 6 * PAGE).map(|(_, i)| i), Some(6));
        assert!(r.find(A + 3 * PAGE).is_none());
        assert_eq!(
            r.of_token(1),
            vec![(A, A + 2 * PAGE), (A + 5 * PAGE, A + 8 * PAGE)]
        );
    }

    #[test]
    fn a_fixed_mapping_replaces_what_it_covers() {
        let mut r = Regions::default();
        r.insert(region(A, 4, 0, 1, 'a'));
        r.insert(region(A + 4 * PAGE, 4, 0, 2, 'b'));
        let gone = r.insert(region(A + 2 * PAGE, 4, 10, 3, 'c'));
        assert_eq!(gone, vec!['a', 'b']);
        assert_eq!(
            spans(&r),
            vec![
                (A, A + 2 * PAGE, 0, 'a'),
                (A + 2 * PAGE, A + 6 * PAGE, 10, 'c'),
                (A + 6 * PAGE, A + 8 * PAGE, 2, 'b'),
            ]
        );
    }

    /// The race issue 23 found: a mapping unmapped late must not take a newer one at
    /// the same address with it. Removal goes by token.
    #[test]
    fn a_token_names_only_its_own_pieces() {
        let mut r = Regions::default();
        r.insert(region(A, 4, 0, 1, 'a'));
        // The same addresses, mapped again by someone else.
        r.insert(region(A, 4, 0, 2, 'b'));
        assert!(
            r.of_token(1).is_empty(),
            "the old mapping has no pieces left"
        );
        assert_eq!(r.of_token(2), vec![(A, A + 4 * PAGE)]);
    }

    #[test]
    fn unmapping_everything_leaves_nothing() {
        let mut r = Regions::default();
        r.insert(region(A, 4, 0, 1, 'a'));
        r.insert(region(A + 8 * PAGE, 4, 0, 2, 'b'));
        assert_eq!(r.remove(0, usize::MAX).len(), 2);
        assert!(r.is_empty());
        r.insert(region(A, 1, 0, 3, 'a'));
        assert!(r.remove(A + PAGE, PAGE).is_empty());
        assert!(!r.is_empty());
    }
}
