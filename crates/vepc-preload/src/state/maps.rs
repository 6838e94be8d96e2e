//! Mappings of the device: the driver's checks, tracking the ranges, and how first
//! touches reach the model (userfaultfd, or eagerly).

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vepc::abi::Errno;
use vepc::driver::Sharing;

use super::{Faults, MmapPlan, Open, PAGE, Shim, existing, lock};
use crate::config::FaultMode;
use crate::uffd::{Answer, Userfaultfd};

impl Shim {
    /// The checks `mmap` makes before the mapping exists, in the kernel's order: the
    /// length and offset (`do_mmap`), write access for a shared mapping, then
    /// `sgx_vepc_mmap`'s shared-only rule.
    pub fn mmap_plan(
        &self,
        open: &Open,
        len: usize,
        prot: c_int,
        flags: c_int,
        off: i64,
    ) -> Result<MmapPlan, Errno> {
        if off < 0 || !(off as u64).is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let shared = matches!(flags & 0x0f, libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE);
        let sharing = if shared {
            Sharing::Shared
        } else {
            Sharing::Private
        };
        let pgoff = off as u64 / PAGE;
        // The model checks length and offset, then shared-only. The VFS's EACCES
        // comes between, but only for a shared mapping, which the last check passes.
        let mapping = open.file.mmap(len as u64, sharing, pgoff)?;
        if shared && prot & libc::PROT_WRITE != 0 && !open.writable {
            return Err(Errno::EACCES);
        }
        if matches!(self.faults(), Faults::Refused) {
            return Err(Errno::ENODEV);
        }
        let len = usize::try_from(mapping.pages() * PAGE).map_err(|_| Errno::ENOMEM)?;
        Ok(MmapPlan {
            len,
            flags: flags & !libc::MAP_POPULATE,
            populate: flags & libc::MAP_POPULATE != 0,
            pgoff,
        })
    }

    /// The size the stand-in file needs for `plan`.
    pub fn file_len(plan: &MmapPlan) -> u64 {
        (plan.pgoff + plan.len as u64 / PAGE) * PAGE
    }

    /// The hooks mapped `plan` at `addr`: track it, name the instance if this is its
    /// first mapping, and arrange for its first touches to reach the model.
    pub fn mapped(
        &self,
        open: &Arc<Open>,
        plan: &MmapPlan,
        addr: usize,
        prot: c_int,
    ) -> Result<(), Errno> {
        open.number.get_or_init(|| {
            let mut named = lock(&self.named);
            named.push(Arc::downgrade(open));
            named.len() - 1
        });
        let replaced = {
            let mut regions = lock(&self.regions);
            self.any_regions.store(true, Ordering::Relaxed);
            regions.insert(addr, plan.len, plan.pgoff, prot, Arc::clone(open))
        };
        for r in replaced {
            self.release(Some(r));
        }
        match self.faults() {
            Faults::Userfaultfd(uffd) => uffd.register(addr, plan.len)?,
            Faults::Eager => self.fault_in_eagerly(open, plan, addr, prot),
            Faults::Refused => return Err(Errno::ENODEV),
        }
        if plan.populate {
            crate::sys::populate(addr, plan.len, prot);
        }
        Ok(())
    }

    /// `[addr, addr + len)` is no longer mapped as it was (`munmap`, or a `MAP_FIXED`
    /// mapping of something else over it).
    pub fn unmapped(&self, addr: usize, len: usize) {
        // Every munmap and MAP_FIXED mapping of the program asks: most find nothing.
        if !self.any_regions.load(Ordering::Relaxed) {
            return;
        }
        let gone = {
            let mut regions = lock(&self.regions);
            let gone = regions.remove(addr, len);
            if regions.is_empty() {
                self.any_regions.store(false, Ordering::Relaxed);
            }
            gone
        };
        for open in gone {
            self.release(Some(open));
        }
    }

    fn faults(&self) -> &Faults {
        self.faults.get_or_init(|| {
            if self.faults_wanted == FaultMode::Eager {
                self.log.line(
                    "faults",
                    vec![
                        ("mode", "eager".into()),
                        ("why", "VEPC_FAULTS=eager".into()),
                    ],
                );
                return Faults::Eager;
            }
            match Userfaultfd::open() {
                Ok(uffd) => {
                    let uffd = Arc::new(uffd);
                    let server = Arc::clone(&uffd);
                    let spawned = std::thread::Builder::new()
                        .name("vepc-userfaultfd".into())
                        .spawn(move || server.serve(shim_resolve));
                    match spawned {
                        Ok(_) => {
                            self.log
                                .line("faults", vec![("mode", "userfaultfd".into())]);
                            Faults::Userfaultfd(uffd)
                        }
                        Err(e) => self.no_userfaultfd(format!("cannot start its thread: {e}")),
                    }
                }
                Err(why) => self.no_userfaultfd(why),
            }
        })
    }

    fn no_userfaultfd(&self, why: String) -> Faults {
        let refused = self.faults_wanted == FaultMode::Userfaultfd;
        let mode = if refused { "refused" } else { "eager" };
        self.log.line(
            "faults",
            vec![("mode", mode.into()), ("why", why.clone().into())],
        );
        if refused {
            eprintln!(
                "vepc-preload: VEPC_FAULTS=userfaultfd, but {why}: mappings of /dev/sgx_vepc fail with ENODEV"
            );
            Faults::Refused
        } else {
            eprintln!(
                "vepc-preload: {why}; every page is faulted in when it is mapped (VEPC_FAULTS=eager)"
            );
            Faults::Eager
        }
    }

    /// The fallback without userfaultfd: every page of the mapping is faulted in now,
    /// and the pages the EPC had no room for answer SIGBUS from the start.
    fn fault_in_eagerly(&self, open: &Open, plan: &MmapPlan, addr: usize, prot: c_int) {
        let vepc = open.file.vepc();
        let pages = plan.len as u64 / PAGE;
        if vepc.populate(plan.pgoff, pages).is_ok() {
            return;
        }
        let mut i = 0;
        while i < pages {
            if vepc.page(plan.pgoff + i).is_some() {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && vepc.page(plan.pgoff + i).is_none() {
                i += 1;
            }
            let _ = crate::sys::map_sigbus(
                addr + (start * PAGE) as usize,
                ((i - start) * PAGE) as usize,
                prot,
            );
        }
    }

    /// A first touch of the page at `page`: the model's fault.
    fn resolve(&self, page: usize) -> Answer {
        let found = lock(&self.regions)
            .find(page)
            .map(|(r, index)| (Arc::clone(&r.what), index, r.prot));
        let Some((open, index, prot)) = found else {
            return Answer::Unknown;
        };
        let answer = match open.file.vepc().fault(index) {
            Ok(_) => Answer::Backed,
            Err(_) => Answer::Sigbus { prot },
        };
        self.release(Some(open));
        answer
    }
}

fn shim_resolve(page: usize) -> Answer {
    existing().map_or(Answer::Unknown, |s| s.resolve(page))
}
