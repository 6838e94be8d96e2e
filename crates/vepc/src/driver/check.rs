//! The consistency check: what must hold of the device whenever no call is running.

use std::collections::HashMap;

use super::{Device, HostEnclaveId};
use crate::model::{EpcPage, PageType};
use crate::sync::Ordering;

/// What the consistency check found wrong: one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the model is inconsistent:\n  {}", .problems.join("\n  "))]
pub struct Inconsistency {
    /// Each problem found.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Nobody,
    Free,
    Instance(u64),
    Zombie,
    Poisoned,
    Host(HostEnclaveId),
}

impl Device {
    /// Checks, with no call running:
    /// - each page is free, held by exactly one live instance or host enclave, a
    ///   zombie, or on a poison list; nothing leaks, and the stats add up to the EPC's
    ///   size;
    /// - free and poison-list pages are uninitialized, and only poisoned pages are on
    ///   a poison list; zombies are valid pages; no page is in use;
    /// - the active list holds only host enclave pages, and its count is right;
    /// - each SECS's child count equals its real children, and its thread count the
    ///   TCS pages with a thread inside; each child's owner is a valid SECS.
    pub fn check(&self) -> Result<(), Inconsistency> {
        let epc = self.epc();
        let n = epc.pages() as usize;
        let mut problems = Vec::new();
        let mut holder = vec![Holder::Nobody; n];
        let mut claim = |p: EpcPage, h: Holder, problems: &mut Vec<String>| {
            let slot = &mut holder[p.idx()];
            if *slot != Holder::Nobody {
                problems.push(format!("page {} is both {:?} and {:?}", p.0, *slot, h));
            }
            *slot = h;
        };

        let instances = self.live_instances();
        let mut used = 0u64;
        for v in &instances {
            let pages = v.pages();
            if pages.len() as u64 != v.present_pages() {
                problems.push(format!(
                    "instance {} counts {} pages but maps {}",
                    v.id(),
                    v.present_pages(),
                    pages.len()
                ));
            }
            used += pages.len() as u64;
            for (_, p) in pages {
                claim(p, Holder::Instance(v.id()), &mut problems);
            }
        }
        for p in self.zombies() {
            claim(p, Holder::Zombie, &mut problems);
            if !epc.entry(p).valid() {
                problems.push(format!(
                    "zombie page {} is uninitialized yet not freed",
                    p.0
                ));
            }
        }
        let host = self.host_page_owners();
        for &(p, id) in &host {
            claim(p, Holder::Host(id), &mut problems);
        }
        for p in self.active_pages() {
            if !host.iter().any(|&(h, _)| h == p) {
                problems.push(format!("active page {} belongs to no host enclave", p.0));
            }
        }
        let active = self.active_pages().len() as u64;
        if self.reclaimable.load(Ordering::Acquire) != active {
            problems.push(format!(
                "the active list holds {active} pages, its count says otherwise"
            ));
        }
        for i in 0..n {
            let p = EpcPage(i as u32);
            let (free, listed) = (epc.is_free(p), epc.is_on_poison_list(p));
            if free {
                claim(p, Holder::Free, &mut problems);
            }
            if listed {
                claim(p, Holder::Poisoned, &mut problems);
                if !epc.is_poisoned(p) {
                    problems.push(format!("page {i} is on a poison list without poison"));
                }
            }
            if (free || listed) && epc.entry(p).valid() {
                problems.push(format!("free page {i} is valid: {:?}", epc.entry(p)));
            }
        }
        for (i, h) in holder.iter().enumerate() {
            if *h == Holder::Nobody {
                problems.push(format!("page {i} leaked: not free, held or a zombie"));
            }
        }

        let stats = self.stats();
        let sum = stats.free + stats.used + stats.zombie + stats.poisoned + stats.host;
        if sum != u64::from(epc.pages()) || stats.used != used {
            problems.push(format!(
                "stats {stats} do not add up: {} pages, {used} held by instances",
                epc.pages()
            ));
        }

        // Children and threads per SECS, counted from the children themselves.
        let mut counted: HashMap<EpcPage, (u32, u32)> = HashMap::new();
        for i in 0..n {
            let p = EpcPage(i as u32);
            let e = epc.entry(p);
            if e.in_use() {
                problems.push(format!("page {i} is still in use by a leaf"));
            }
            if e.is_child() {
                let c = counted.entry(e.owner()).or_default();
                c.0 += 1;
                c.1 += u32::from(e.is(PageType::Tcs) && e.tcs_busy());
                if !epc.entry(e.owner()).is(PageType::Secs) {
                    problems.push(format!("page {i}'s SECS {} is not a SECS", e.owner().0));
                }
            }
        }
        for i in 0..n {
            let p = EpcPage(i as u32);
            let e = epc.entry(p);
            if e.is(PageType::Secs) {
                let (children, threads) = counted.get(&p).copied().unwrap_or_default();
                if (e.children(), e.threads()) != (children, threads) {
                    problems.push(format!(
                        "SECS {i} counts {} children and {} threads; there are {children} and {threads}",
                        e.children(),
                        e.threads()
                    ));
                }
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(Inconsistency { problems })
        }
    }
}
