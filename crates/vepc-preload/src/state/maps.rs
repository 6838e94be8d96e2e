//! Mappings of the device: the checks before the mapping, naming the instance after
//! it, and saying how its first touches are served. The mapping itself, and every
//! first touch, is the library's emulated device.

use std::ffi::c_int;
use std::sync::Arc;

use vepc::abi::{Errno, PAGE_SIZE};
use vepc::device::Faults;
use vepc::driver::Sharing;

use super::{MmapPlan, Open, Shim, lock};
use crate::config::{FaultMode, instance_name};

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
        if off < 0 || !(off as u64).is_multiple_of(PAGE_SIZE) {
            return Err(Errno::EINVAL);
        }
        let shared = matches!(flags & 0x0f, libc::MAP_SHARED | libc::MAP_SHARED_VALIDATE);
        let sharing = if shared {
            Sharing::Shared
        } else {
            Sharing::Private
        };
        let pgoff = off as u64 / PAGE_SIZE;
        // The model checks length and offset, then shared-only. The VFS's EACCES
        // comes between, but only for a shared mapping, which the last check passes.
        open.file.model().mmap(len as u64, sharing, pgoff)?;
        if shared && prot & libc::PROT_WRITE != 0 && !open.writable {
            return Err(Errno::EACCES);
        }
        self.prepare_faults()?;
        Ok(MmapPlan { pgoff })
    }

    /// `VEPC_FAULTS=userfaultfd` with no userfaultfd to be had: mappings fail with
    /// `ENODEV`, said once on stderr.
    fn prepare_faults(&self) -> Result<(), Errno> {
        if self.faults_wanted != FaultMode::Userfaultfd {
            return Ok(());
        }
        match self.emulated.prepare() {
            Ok(()) => Ok(()),
            Err(why) => {
                if self.note_faults() {
                    eprintln!(
                        "vepc-preload: VEPC_FAULTS=userfaultfd, but {why}: mappings of /dev/sgx_vepc fail with ENODEV"
                    );
                }
                Err(Errno::ENODEV)
            }
        }
    }

    /// The hooks mapped `len` bytes of `open` at `addr`: the instance is named if this
    /// is its first mapping, and a change in how first touches are served is logged.
    pub fn mapped(&self, open: &Arc<Open>, plan: &MmapPlan, len: usize) {
        open.first_map
            .get_or_init(|| (plan.pgoff, len as u64 / PAGE_SIZE));
        open.number.get_or_init(|| {
            let mut named = lock(&self.named);
            named.push(Arc::downgrade(open));
            let n = named.len() - 1;
            lock(&self.names).insert(open.file.model().vepc().id(), instance_name(n));
            n
        });
        if self.note_faults()
            && self.emulated.faults() == Faults::Eager
            && self.faults_wanted == FaultMode::Auto
        {
            let why = self
                .emulated
                .userfaultfd_refused()
                .unwrap_or("userfaultfd is refused");
            eprintln!(
                "vepc-preload: {why}; every page is faulted in when it is mapped (VEPC_FAULTS=eager)"
            );
        }
    }

    /// `[addr, addr + len)` is no longer mapped as it was (`munmap`, or a `MAP_FIXED`
    /// mapping of something else over it).
    pub fn unmapped(&self, addr: usize, len: usize) {
        self.emulated.unmapped(addr, len);
    }

    /// Logs how first touches are served if that changed since the last line; true
    /// when it did.
    fn note_faults(&self) -> bool {
        let now = self.emulated.faults();
        let mut logged = lock(&self.faults_logged);
        if *logged == Some(now) {
            return false;
        }
        *logged = Some(now);
        let (mode, why) = match now {
            Faults::Fast => ("fast", "every mapped page can still get an EPC page".into()),
            Faults::Exact => (
                "userfaultfd",
                match self.faults_wanted {
                    FaultMode::Userfaultfd => "VEPC_FAULTS=userfaultfd".into(),
                    _ => "a first touch could now find no free EPC page".to_string(),
                },
            ),
            Faults::Eager => (
                "eager",
                match self.faults_wanted {
                    FaultMode::Eager => "VEPC_FAULTS=eager".into(),
                    _ => self
                        .emulated
                        .userfaultfd_refused()
                        .unwrap_or("userfaultfd is refused")
                        .to_string(),
                },
            ),
            Faults::Refused => (
                "refused",
                self.emulated
                    .userfaultfd_refused()
                    .unwrap_or("userfaultfd is refused")
                    .to_string(),
            ),
        };
        self.log
            .line("faults", vec![("mode", mode.into()), ("why", why.into())]);
        true
    }
}
