//! The EPC: sections of 4 KiB pages, the EPCM over all of them, and each section's
//! pool of free pages.
//!
//! # How leaves stay atomic without one big lock
//!
//! Each leaf is linearizable because every EPCM word obeys two rules:
//! 1. A page is *locked* (its `IN_USE` bit set) only by a compare-and-swap from a
//!    value that is an invalid page or a valid SECS or VA page, never a child page.
//!    Whoever finds `IN_USE` already set has met another instruction: `#GP`.
//! 2. A valid child page (TCS/REG/TRIM) is written only by the holder of its SECS's
//!    lock. So locking the SECS freezes the enclave's children and thread count, and
//!    two EREMOVEs of one enclave's pages conflict through their SECS, as the kernel's
//!    `sgx.rst` describes.
//!
//! Locks are only ever *tried*: a leaf that cannot take one faults, so nothing waits
//! for anything and there is no lock order to get wrong. (EEXIT is the exception: it
//! is the thread's own way out and waits for the SECS, which is held only briefly.)

use std::collections::BTreeSet;
use std::time::Duration;

use super::epcm::{Entry, EpcPage, PageType};
use super::pool::FreePool;
use super::pool::Poisoning;
use crate::abi::{EnclsError, PAGE_SIZE};
use crate::number::{NumberError, parse_size};
use crate::sync::{AtomicU64, Mutex, MutexGuard, Ordering, lock};

/// Physical address the model gives the first EPC section (as firmware would report in
/// CPUID leaf 0x12); the sections follow each other from there.
pub const EPC_PHYS_BASE: u64 = 0x0040_0000_0000;

/// The largest EPC the model holds: page numbers must fit in 32 bits with one value
/// spare (the driver's page map stores `page + 1`). That is 16 TiB.
pub const MAX_EPC_PAGES: u64 = u32::MAX as u64 - 1;

/// Why an EPC could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpcError {
    /// No sections were given.
    #[error("no section size given: an EPC needs at least one section")]
    NoSections,
    /// A section's size is zero or not a whole number of 4 KiB pages.
    #[error("EPC section {index} is {bytes} bytes: give a non-zero multiple of 4K")]
    SectionSize {
        /// Which section (0-based).
        index: usize,
        /// Its size in bytes.
        bytes: u64,
    },
    /// The sections add up to more pages than the model can number.
    #[error("the EPC would have {pages} pages; the model holds at most {MAX_EPC_PAGES} (16 TiB)")]
    TooLarge {
        /// Pages asked for.
        pages: u64,
    },
    /// A section size that is not a SIZE (docs/SCRIPT.md: bytes, with an optional
    /// K/M/G/T suffix).
    #[error("'{word}': {error}")]
    NotASize {
        /// The word as written.
        word: String,
        /// What is wrong with it.
        error: NumberError,
    },
    /// The model of this EPC would not fit in this machine's memory.
    #[error(
        "an EPC of {pages} pages needs {} GiB of model memory, more than this machine's {} GiB",
        .needed >> 30, .available >> 30
    )]
    OutOfMemory {
        /// Pages asked for.
        pages: u64,
        /// Bytes the EPCM and free bitmaps would take.
        needed: u64,
        /// The machine's RAM.
        available: u64,
    },
}

/// Model bytes per EPC page held by the EPC itself: the EPCM word and a bitmap bit.
const EPC_BYTES_PER_PAGE: f64 = 8.0 + 1.0 / 8.0;

/// One EPC section: a physically contiguous run of EPC pages.
#[derive(Debug)]
pub struct Section {
    first: u32,
    pages: u32,
    pool: Mutex<FreePool>,
}

impl Section {
    /// The section's first page.
    pub fn first(&self) -> EpcPage {
        EpcPage(self.first)
    }

    /// Its size in pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Its physical base address.
    pub fn phys_base(&self) -> u64 {
        EPC_PHYS_BASE + self.first as u64 * PAGE_SIZE
    }

    fn pool(&self) -> MutexGuard<'_, FreePool> {
        lock(&self.pool)
    }
}

/// The Enclave Page Cache with its EPCM.
#[derive(Debug)]
pub struct Epc {
    epcm: Box<[AtomicU64]>,
    sections: Box<[Section]>,
    /// Simulated time one EREMOVE takes, in nanoseconds (0: as fast as the model is).
    eremove_cost_ns: AtomicU64,
    /// Pages whose memory has an uncorrected error: reading them raises a machine
    /// check, whatever the kernel knows of it. (The kernel's own mark is
    /// `page->poison`, kept with the free pools.)
    bad: Mutex<BTreeSet<u32>>,
    /// `bad.len()`, read without the lock on every guest access.
    bad_count: AtomicU64,
    /// The pools' counts, summed.
    totals: Totals,
}

/// Free pages and poison-list pages of all sections, kept as the pools change
/// (under their locks) so that reading them takes no lock: the watermark checks read
/// them at every allocation, as the kernel reads its atomic `sgx_nr_free_pages`.
#[derive(Debug, Default)]
struct Totals {
    free: AtomicU64,
    poison_listed: AtomicU64,
}

/// A section's pool, locked for a change: [`Totals`] follow it when it is let go.
struct PoolMut<'a> {
    pool: MutexGuard<'a, FreePool>,
    before: (u32, u32),
    totals: &'a Totals,
}

impl std::ops::Deref for PoolMut<'_> {
    type Target = FreePool;
    fn deref(&self) -> &FreePool {
        &self.pool
    }
}

impl std::ops::DerefMut for PoolMut<'_> {
    fn deref_mut(&mut self) -> &mut FreePool {
        &mut self.pool
    }
}

impl Drop for PoolMut<'_> {
    fn drop(&mut self) {
        // Still under the pool's lock: the guard field drops after this.
        let after = (self.pool.free_count(), self.pool.poison_list_len());
        let adjust = |total: &AtomicU64, before: u32, after: u32| {
            if after > before {
                total.fetch_add(u64::from(after - before), Ordering::AcqRel);
            } else if before > after {
                total.fetch_sub(u64::from(before - after), Ordering::AcqRel);
            }
        };
        adjust(&self.totals.free, self.before.0, after.0);
        adjust(&self.totals.poison_listed, self.before.1, after.1);
    }
}

impl Epc {
    /// `s`'s pool, locked for a change that [`Totals`] must follow.
    fn pool_mut<'a>(&'a self, s: &'a Section) -> PoolMut<'a> {
        let pool = s.pool();
        let before = (pool.free_count(), pool.poison_list_len());
        PoolMut {
            pool,
            before,
            totals: &self.totals,
        }
    }

    /// Checks section sizes without building anything: the EPC's page count, or why
    /// it cannot be (a size of 0 or not a multiple of 4K, more pages than the model
    /// numbers, or more model memory than this machine has).
    pub fn check_sizes(section_bytes: &[u64]) -> Result<u64, EpcError> {
        if section_bytes.is_empty() {
            return Err(EpcError::NoSections);
        }
        let mut total: u64 = 0;
        for (index, &bytes) in section_bytes.iter().enumerate() {
            if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE) {
                return Err(EpcError::SectionSize { index, bytes });
            }
            total = total.saturating_add(bytes / PAGE_SIZE);
        }
        if total > MAX_EPC_PAGES {
            return Err(EpcError::TooLarge { pages: total });
        }
        let needed = (total as f64 * EPC_BYTES_PER_PAGE) as u64;
        if let Some(available) = machine_memory()
            && needed > available
        {
            return Err(EpcError::OutOfMemory {
                pages: total,
                needed,
                available,
            });
        }
        Ok(total)
    }

    /// Section sizes given on their own, as `VEPC_EPC`, `vepc preload --epc` and `vepc
    /// bench --sections` take them: SIZEs separated by spaces or commas, together an
    /// EPC the model can hold ([`check_sizes`](Self::check_sizes)).
    pub fn parse_sizes(value: &str) -> Result<Vec<u64>, EpcError> {
        let sizes = value
            .split([' ', ',', '\t'])
            .filter(|w| !w.is_empty())
            .map(|w| {
                parse_size(w).map_err(|error| EpcError::NotASize {
                    word: w.to_owned(),
                    error,
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        Self::check_sizes(&sizes)?;
        Ok(sizes)
    }

    /// An EPC with one section per entry of `section_bytes`, every page free and
    /// uninitialized.
    pub fn new(section_bytes: &[u64]) -> Result<Self, EpcError> {
        let total = Self::check_sizes(section_bytes)?;
        let mut first = 0u32;
        let sections = section_bytes
            .iter()
            .map(|&bytes| {
                // Both fit: the total was checked against MAX_EPC_PAGES above.
                let pages = (bytes / PAGE_SIZE) as u32;
                let s = Section {
                    first,
                    pages,
                    pool: Mutex::new(FreePool::new(first, pages)),
                };
                first += pages;
                s
            })
            .collect();
        let epcm = (0..total).map(|_| AtomicU64::new(0)).collect();
        let sections: Box<[Section]> = sections;
        let free = sections
            .iter()
            .map(|s| u64::from(s.pool().free_count()))
            .sum();
        Ok(Self {
            epcm,
            sections,
            eremove_cost_ns: AtomicU64::new(0),
            bad: Mutex::new(BTreeSet::new()),
            bad_count: AtomicU64::new(0),
            totals: Totals {
                free: AtomicU64::new(free),
                poison_listed: AtomicU64::new(0),
            },
        })
    }

    /// The sections, in physical order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Makes every EREMOVE take at least `cost` of busy CPU time, as on hardware
    /// (about 1-2 µs per page): for measuring strategies, not for fidelity.
    pub fn set_eremove_cost(&self, cost: Duration) {
        let ns = u64::try_from(cost.as_nanos()).unwrap_or(u64::MAX);
        self.eremove_cost_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn eremove_cost(&self) -> Duration {
        Duration::from_nanos(self.eremove_cost_ns.load(Ordering::Relaxed))
    }

    /// Total pages in all sections.
    pub fn pages(&self) -> u32 {
        self.epcm.len() as u32
    }

    /// Takes a free page, from the first section that has one (vEPC never reclaims).
    pub fn alloc_page(&self) -> Option<EpcPage> {
        self.alloc_page_near(0)
    }

    /// Takes a free page from section `near` if it has one, else from the others in
    /// order: `sgx_alloc_epc_page` serves the faulting CPU's NUMA node first.
    pub fn alloc_page_near(&self, near: usize) -> Option<EpcPage> {
        self.sections_from(near)
            .find_map(|s| self.pool_mut(s).alloc())
    }

    /// The sections, starting with `near` (when it exists), then the rest in order.
    fn sections_from(&self, near: usize) -> impl Iterator<Item = &Section> {
        let first = self.sections.get(near);
        first.into_iter().chain(
            self.sections
                .iter()
                .enumerate()
                .filter(move |&(i, _)| first.is_none() || i != near)
                .map(|(_, s)| s),
        )
    }

    /// Takes up to `max` free pages into `out`, from the first sections that have
    /// them: the same pages, in the same order, as `max` calls of
    /// [`alloc_page`](Self::alloc_page), for one lock per section.
    pub fn alloc_pages(&self, max: usize, out: &mut Vec<EpcPage>) {
        self.alloc_pages_near(0, max, out);
    }

    /// [`alloc_pages`](Self::alloc_pages) with section `near` first, as
    /// [`alloc_page_near`](Self::alloc_page_near).
    pub fn alloc_pages_near(&self, near: usize, max: usize, out: &mut Vec<EpcPage>) {
        let start = out.len();
        for s in self.sections_from(near) {
            let got = out.len() - start;
            if got == max {
                break;
            }
            self.pool_mut(s).alloc_batch(max - got, out);
        }
    }

    /// Returns uninitialized pages to their pools, a run of pages in a row at a time
    /// ([`free_page_runs`](Self::free_page_runs)).
    pub fn free_pages_batch(&self, pages: &[EpcPage]) {
        let mut rest = pages;
        while let Some(&first) = rest.first() {
            let len = rest
                .iter()
                .zip(first.0..)
                .take_while(|&(p, n)| p.0 == n)
                .count();
            self.free_run(first, len as u32);
            rest = &rest[len..];
        }
    }

    /// Returns runs of uninitialized pages, `(first, pages)` each, to their pools:
    /// one lock per section a run lies in, a bitmap word at a time.
    pub fn free_page_runs(&self, runs: &[(EpcPage, u32)]) {
        for &(first, len) in runs {
            self.free_run(first, len);
        }
    }

    fn free_run(&self, first: EpcPage, len: u32) {
        let mut at = first.0;
        let end = first.0.saturating_add(len);
        while at < end {
            let Some(s) = self.section_of(EpcPage(at)) else {
                break;
            };
            let n = (s.first + s.pages).min(end) - at;
            debug_assert!(
                (at..at + n).all(|p| !self.entry(EpcPage(p)).valid()),
                "freeing a valid EPC page"
            );
            self.pool_mut(s).release_run(EpcPage(at), n);
            at += n;
        }
    }

    /// Returns a page to its section's pool. The page must be uninitialized: the
    /// kernel frees an EPC page only after EREMOVE succeeded on it.
    pub fn free_page(&self, p: EpcPage) {
        debug_assert!(!self.entry(p).valid(), "freeing a valid EPC page {p:?}");
        if let Some(s) = self.section_of(p) {
            self.pool_mut(s).release(p);
        }
    }

    /// The memory of page `p` fails (an uncorrected error): from now on, reading it
    /// raises a machine check. Whether the kernel hears of it is the kernel's
    /// business. `false` if it had failed already.
    pub fn fail_memory(&self, p: EpcPage) -> bool {
        let new = lock(&self.bad).insert(p.0);
        if new {
            self.bad_count.fetch_add(1, Ordering::Relaxed);
        }
        new
    }

    /// Whether reading page `p` raises a machine check.
    pub fn is_bad(&self, p: EpcPage) -> bool {
        self.bad_count.load(Ordering::Relaxed) != 0 && lock(&self.bad).contains(&p.0)
    }

    /// Sets the kernel's `page->poison` on `p`, as `arch_memory_failure` does under
    /// the node's lock: a free page moves to the poison list at once, a page in use
    /// when it is freed.
    pub fn poison(&self, p: EpcPage) -> Poisoning {
        match self.section_of(p) {
            Some(s) => self.pool_mut(s).poison(p),
            None => Poisoning::Already,
        }
    }

    /// Whether the kernel's `page->poison` is set on `p`.
    pub fn is_poisoned(&self, p: EpcPage) -> bool {
        self.section_of(p).is_some_and(|s| s.pool().is_poisoned(p))
    }

    /// Whether `p` is on its section's poison list.
    pub fn is_on_poison_list(&self, p: EpcPage) -> bool {
        self.section_of(p)
            .is_some_and(|s| s.pool().is_on_poison_list(p))
    }

    /// Pages on the poison lists: out of service for good.
    pub fn poison_list_pages(&self) -> u64 {
        self.totals.poison_listed.load(Ordering::Acquire)
    }

    /// Whether any EPCM entry is valid: EUPDATESVN needs none to be.
    pub fn any_valid(&self) -> bool {
        (0..self.pages()).any(|i| self.entry(EpcPage(i)).valid())
    }

    /// Free pages in all sections.
    pub fn free_pages(&self) -> u64 {
        self.totals.free.load(Ordering::Acquire)
    }

    /// Whether `p` is in a section's free pool.
    pub fn is_free(&self, p: EpcPage) -> bool {
        self.section_of(p).is_some_and(|s| s.pool().is_free(p))
    }

    fn section_of(&self, p: EpcPage) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| p.0 >= s.first && p.0 - s.first < s.pages)
    }

    /// Physical address of a page.
    pub fn page_addr(&self, p: EpcPage) -> u64 {
        EPC_PHYS_BASE + p.0 as u64 * PAGE_SIZE
    }

    /// The physical address EPC page number `n` (0-based over all sections) would
    /// have, whether or not the EPC has that many: how the scenario language's
    /// `poison N` and the shim's `poison=N` name a page. `u64::MAX` past any address.
    pub fn page_number_addr(&self, n: u64) -> u64 {
        n.checked_mul(PAGE_SIZE)
            .and_then(|off| off.checked_add(EPC_PHYS_BASE))
            .unwrap_or(u64::MAX)
    }

    /// The page an ENCLS operand names: `#GP` if it is not 4 KiB aligned, `#PF` if it
    /// is not an EPC page (the SDM's first two checks of every page operand).
    pub fn page_at(&self, addr: u64) -> Result<EpcPage, EnclsError> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(EnclsError::GP);
        }
        let idx = addr.wrapping_sub(EPC_PHYS_BASE) / PAGE_SIZE;
        if addr < EPC_PHYS_BASE || idx >= self.epcm.len() as u64 {
            return Err(EnclsError::PF);
        }
        Ok(EpcPage(idx as u32))
    }

    /// The EPCM entry of a page, as it is now.
    pub fn entry(&self, p: EpcPage) -> Entry {
        Entry(self.epcm[p.idx()].load(Ordering::Acquire))
    }

    /// Model memory held by the EPC, in bytes (EPCM and free bitmaps).
    pub fn heap_bytes(&self) -> usize {
        self.bad_count.load(Ordering::Relaxed) as usize * 8
            + self.epcm.len() * size_of::<AtomicU64>()
            + self
                .sections
                .iter()
                .map(|s| size_of::<Section>() + s.pool().heap_bytes())
                .sum::<usize>()
    }

    pub(crate) fn store(&self, p: EpcPage, e: Entry) {
        self.epcm[p.idx()].store(e.0, Ordering::Release);
    }

    pub(crate) fn cas(&self, p: EpcPage, old: Entry, new: Entry) -> bool {
        self.epcm[p.idx()]
            .compare_exchange(old.0, new.0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Locks `p` from the exact value `seen` (rule 1 of the module comment).
    pub(crate) fn lock_from(&self, p: EpcPage, seen: Entry) -> bool {
        debug_assert!(!seen.is_child() && !seen.in_use());
        let locked = self.cas(p, seen, seen.with_in_use());
        if locked {
            // The leaf's window: another logical processor may meet the lock here.
            crate::sync::point();
        }
        locked
    }

    /// Stores `e` into a page this leaf locked, unlocking it.
    pub(crate) fn unlock(&self, p: EpcPage, e: Entry) {
        debug_assert!(
            self.entry(p).in_use(),
            "unlocking a page that is not locked"
        );
        self.store(p, e.without_in_use());
    }

    /// Locks an uninitialized page as the target of ECREATE, EADD or EPA: `#GP` if
    /// another leaf is on it, `#PF` if it is already valid.
    pub(crate) fn claim_invalid(&self, p: EpcPage) -> Result<(), EnclsError> {
        loop {
            let e = self.entry(p);
            if e.in_use() {
                return Err(EnclsError::GP);
            }
            if e.valid() {
                return Err(EnclsError::PF);
            }
            if self.lock_from(p, e) {
                return Ok(());
            }
        }
    }

    /// Locks the SECS at `s`: `#GP` if another leaf holds it, `#PF` if it is not a
    /// valid SECS. Returns its entry as it was.
    pub(crate) fn lock_secs(&self, s: EpcPage) -> Result<Entry, EnclsError> {
        loop {
            let e = self.entry(s);
            if e.in_use() {
                return Err(EnclsError::GP);
            }
            if !e.is(PageType::Secs) {
                return Err(EnclsError::PF);
            }
            if self.lock_from(s, e) {
                return Ok(e);
            }
        }
    }

    /// Locks the SECS that owns the child page `child`, seen as `seen`, and checks with
    /// it held that the child is still `seen` (rule 2: only the SECS's holder writes a
    /// child). `Ok(None)`: the child changed meanwhile, look again. `Err(#GP)`: another
    /// leaf holds the SECS (never when `wait`); `Err(#PF)`: the owner is no SECS.
    pub(crate) fn lock_owner(
        &self,
        child: EpcPage,
        seen: Entry,
        wait: bool,
    ) -> Result<Option<Entry>, EnclsError> {
        let secs = seen.owner();
        let locked = if wait {
            self.lock_secs_wait(secs).ok_or(EnclsError::PF)
        } else {
            self.lock_secs(secs)
        };
        let s = match locked {
            Ok(s) => s,
            Err(EnclsError::GP) => return Err(EnclsError::GP),
            // The child changed under us: its caller looks again.
            Err(_) if self.entry(child) != seen => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.entry(child) != seen {
            self.unlock(secs, s);
            return Ok(None);
        }
        Ok(Some(s))
    }

    /// Like [`lock_secs`](Self::lock_secs), but waits out another leaf instead of
    /// faulting. `None` if `s` is not a valid SECS.
    pub(crate) fn lock_secs_wait(&self, s: EpcPage) -> Option<Entry> {
        let mut spins = 0u32;
        loop {
            match self.lock_secs(s) {
                Ok(e) => return Some(e),
                Err(EnclsError::GP) => {
                    spins += 1;
                    if spins.is_multiple_of(64) {
                        crate::sync::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

/// This machine's RAM in bytes, where the OS says.
fn machine_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let info = rustix::system::sysinfo();
        // `totalram` is a C unsigned long: 64 bits here, 32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let ram = u64::from(info.totalram);
        Some(ram.saturating_mul(u64::from(info.mem_unit)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_pages_freed_is_a_free_of_each_page() {
        let (one, batch) = (epc_of(2), epc_of(2));
        let mut pages = Vec::new();
        one.alloc_pages(1000, &mut pages);
        batch.alloc_pages(1000, &mut Vec::new());
        // Scattered pages, runs of pages in a row, and a run across two sections.
        let back: Vec<EpcPage> = pages
            .iter()
            .copied()
            .filter(|p| p.0 % 3 != 0 || (500..530).contains(&p.0))
            .collect();
        back.iter().for_each(|&p| one.free_page(p));
        batch.free_pages_batch(&back);
        assert_eq!(batch.free_pages(), one.free_pages());
        for p in 0..1024 {
            assert_eq!(
                batch.is_free(EpcPage(p)),
                one.is_free(EpcPage(p)),
                "page {p}"
            );
        }
    }

    fn epc_of(sections: usize) -> Epc {
        Epc::new(&vec![512 * 4096; sections]).expect("valid EPC")
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(Epc::new(&[]).err(), Some(EpcError::NoSections));
        assert_eq!(
            Epc::new(&[4096, 0]).err(),
            Some(EpcError::SectionSize { index: 1, bytes: 0 })
        );
        assert_eq!(
            Epc::new(&[4097]).err(),
            Some(EpcError::SectionSize {
                index: 0,
                bytes: 4097
            })
        );
        assert!(matches!(
            Epc::new(&[1 << 44, 1 << 44]),
            Err(EpcError::TooLarge { .. })
        ));
        // 15 TiB of EPC needs 30 GiB of model: more than any machine this project has.
        let big = Epc::check_sizes(&[15 << 40]);
        if machine_memory().is_some_and(|m| m < 30 << 30) {
            assert!(matches!(big, Err(EpcError::OutOfMemory { .. })), "{big:?}");
        }
        assert_eq!(Epc::check_sizes(&[4096, 8192]), Ok(3));
    }

    #[test]
    fn sections_are_numbered_contiguously_and_filled_in_order() {
        let epc = Epc::new(&[2 * 4096, 3 * 4096]).expect("valid EPC");
        assert_eq!(epc.pages(), 5);
        assert_eq!(epc.sections()[1].first(), EpcPage(2));
        let pages: Vec<_> = std::iter::from_fn(|| epc.alloc_page()).collect();
        assert_eq!(pages, (0..5).map(EpcPage).collect::<Vec<_>>());
        assert_eq!(epc.free_pages(), 0);
        epc.free_page(EpcPage(3));
        assert!(epc.is_free(EpcPage(3)) && !epc.is_free(EpcPage(2)));
        assert_eq!(epc.free_pages(), 1);
    }

    #[test]
    fn page_addresses_round_trip_across_sections() {
        let epc = Epc::new(&[2 * 4096, 3 * 4096]).expect("valid EPC");
        assert_eq!(epc.sections()[1].phys_base(), EPC_PHYS_BASE + 2 * 4096);
        for p in (0..5).map(EpcPage) {
            assert_eq!(epc.page_at(epc.page_addr(p)), Ok(p));
        }
    }

    #[test]
    fn operands_are_checked_for_alignment_then_for_epc() {
        let epc = Epc::new(&[4 * 4096]).expect("valid EPC");
        assert_eq!(epc.page_at(EPC_PHYS_BASE + 4096), Ok(EpcPage(1)));
        assert_eq!(epc.page_at(EPC_PHYS_BASE + 1), Err(EnclsError::GP));
        assert_eq!(epc.page_at(EPC_PHYS_BASE + 4 * 4096), Err(EnclsError::PF));
        assert_eq!(epc.page_at(0), Err(EnclsError::PF));
        assert_eq!(epc.page_at(3), Err(EnclsError::GP));
    }
}
