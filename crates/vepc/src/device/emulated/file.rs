//! [`EmulatedFile`]: one open of the emulated device, its model file and its memory.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::backing::{self, Backing, Lost};
use super::regions::Region;
use super::space::ProcessSpace;
use super::{Emulated, Faults, PAGE, Piece, lock};
use crate::abi::{Errno, PAGE_SIZE};
use crate::driver::VepcFile;
use crate::driver::surface::Access;
use crate::driver::surface::flags::MAP_NORESERVE;
use crate::driver::surface::mmap::{MmapRequest, mmap as mmap_rules};
use crate::sys::mm;

/// One open of the emulated device: the model's file and the memory with its pages.
///
/// It keeps its device alive, and each of its mappings keeps it alive, as a VMA keeps
/// its file: the instance is released when the last of them goes.
#[derive(Debug)]
pub struct EmulatedFile {
    model: VepcFile,
    access: Access,
    backing: Backing,
    /// Dropped after `model` (fields drop in order): reports the release it caused.
    notice: ReleaseNotice,
}

/// Tells the device's release hook when dropping an [`EmulatedFile`] released its
/// instance.
#[derive(Debug)]
struct ReleaseNotice {
    id: u64,
    device: Arc<Emulated>,
}

impl Drop for ReleaseNotice {
    fn drop(&mut self) {
        if !self.device.model.is_live(self.id) {
            self.device.released(self.id);
        }
    }
}

impl EmulatedFile {
    pub(super) fn new(model: VepcFile, access: Access, device: Arc<Emulated>) -> Arc<Self> {
        Arc::new(Self {
            notice: ReleaseNotice {
                id: model.vepc().id(),
                device,
            },
            model,
            access,
            backing: Backing::default(),
        })
    }

    /// The model's file: for the guest's side (ENCLS leaves on the instance's pages).
    /// Like [`Emulated::model`], it turns the device exact first: whatever is done
    /// through it may take EPC pages.
    pub fn model(&self) -> &VepcFile {
        self.notice.device.go_exact();
        &self.model
    }

    pub(super) fn model_file(&self) -> &VepcFile {
        &self.model
    }

    /// The model instance's number ([`crate::driver::Vepc::id`]).
    pub fn id(&self) -> u64 {
        self.notice.id
    }

    /// The device the file was opened on.
    pub fn device(&self) -> &Arc<Emulated> {
        &self.notice.device
    }

    /// What the open may do (`O_RDONLY`, `O_WRONLY`, `O_RDWR` or 3).
    pub fn access(&self) -> Access {
        self.access
    }

    /// `mmap(addr, len, prot, flags, fd, offset)` as a C program calls it: every check
    /// Linux makes, in its order ([`crate::driver::surface::mmap::mmap`]), then the
    /// mapping, made as `sgx_vepc_mmap` makes it (never copied into a child, never
    /// dumped, never populated or locked) and tracked so that its first touches are
    /// the model's faults. The address it was mapped at.
    ///
    /// The range is the caller's: unmap it with [`Emulated::munmap`]
    /// ([`crate::device::EpcRegion`] does that on drop).
    ///
    /// # Safety
    ///
    /// As mmap(2): with `MAP_FIXED`, `addr..addr + len` must be the caller's to
    /// replace, with no Rust reference pointing into it.
    pub unsafe fn mmap(self: &Arc<Self>, req: &MmapRequest) -> Result<usize, Errno> {
        // SAFETY: the caller's contract.
        unsafe { self.mmap_token(req) }.map(|(addr, _)| addr)
    }

    /// [`mmap`](Self::mmap), also answering the mapping's token (for
    /// [`Emulated::unmap_token`]).
    ///
    /// # Safety
    ///
    /// As [`mmap`](Self::mmap).
    pub(crate) unsafe fn mmap_token(
        self: &Arc<Self>,
        req: &MmapRequest,
    ) -> Result<(usize, u64), Errno> {
        let device = Arc::clone(&self.notice.device);
        device.check_lost()?;
        let mut space = ProcessSpace::default();
        let plan = mmap_rules(self.access, req, &mut space)?;
        let undo = |space: &mut ProcessSpace| {
            use crate::driver::surface::mmap::AddressSpace;
            space.abandon(plan.addr, plan.len);
        };
        let (Ok(addr), Ok(len)) = (usize::try_from(plan.addr), usize::try_from(plan.len)) else {
            undo(&mut space);
            return Err(Errno::ENOMEM);
        };
        let pages = plan.len / PAGE_SIZE;
        if let Err(e) = self.backing.grow(plan.pgoff, pages) {
            undo(&mut space);
            return Err(e);
        }
        let token = device.next_token();
        let region = Region {
            start: addr,
            end: addr + len,
            pgoff: plan.pgoff,
            prot: req.prot,
            token,
            what: Piece {
                _map: self.model.mapping(plan.pgoff, pages),
                file: Arc::clone(self),
            },
        };
        let noreserve = req.flags & MAP_NORESERVE != 0;
        let (done, gone) = {
            let mut state = lock(&device.state);
            if state.faults == Faults::Refused {
                drop(state);
                undo(&mut space);
                return Err(Errno::ENODEV);
            }
            // SAFETY: the range is the reservation made for this mapping, or the
            // caller's (MAP_FIXED); the table's lock is held.
            if let Err(e) = unsafe { self.map_pieces(addr, plan.pgoff, pages, req.prot, noreserve) }
            {
                drop(state);
                undo(&mut space);
                return Err(e);
            }
            device.mapped_any.store(true, Ordering::Release);
            let mut gone = state.regions.insert(region.clone());
            let mut lost = Ok(());
            for p in &gone {
                lost = lost.and(p.file.settle());
            }
            lost = lost.and(device.place(&mut state, &region));
            if let Err(l) = lost {
                gone.clear();
                (Err(l), Vec::new())
            } else {
                (Ok(()), gone)
            }
        };
        drop(gone);
        if let Err(l) = done {
            device.lose(l.0);
        }
        Ok((addr, token))
    }

    /// Maps the memory of pages `pgoff..pgoff + pages` at `addr`, one `mmap` per
    /// segment: inaccessible first, so that nothing (`mlockall(MCL_FUTURE)`) faults it
    /// in, then with its protection, unlocked and flagged as a vEPC mapping is.
    ///
    /// # Safety
    ///
    /// The range must be the caller's to replace, with the device's lock held.
    unsafe fn map_pieces(
        &self,
        addr: usize,
        pgoff: u64,
        pages: u64,
        prot: i32,
        noreserve: bool,
    ) -> Result<(), Errno> {
        let len = pages as usize * PAGE;
        for p in backing::pieces(pgoff, pages) {
            let fd = self.backing.grown(p.segment, p.offset + p.len)?;
            // SAFETY: per the function's contract.
            unsafe {
                mm::map_fixed_shared(
                    addr + p.at as usize,
                    fd.as_fd(),
                    p.len as usize,
                    0,
                    p.offset,
                    noreserve,
                )
            }?;
        }
        // SAFETY: the mapping just made.
        unsafe { mm::protect(addr, len, prot) }?;
        let _ = mm::unlock(addr, len);
        mm::advise_as_vepc(addr, len)
    }

    /// Pages of `pgoff..pgoff + pages` that have no EPC page yet.
    pub(super) fn missing(&self, pgoff: u64, pages: usize) -> u64 {
        let mut present = 0;
        self.model
            .vepc()
            .each_page(pgoff..pgoff + pages as u64, |_, _| present += 1);
        pages as u64 - present
    }

    /// Counts every page touched through the memory that has no EPC page yet.
    pub(super) fn settle(&self) -> Result<(), Lost> {
        self.backing.settle(self.model.vepc())
    }

    /// [`settle`](Self::settle) for the pages `pgoff..pgoff + pages` only.
    pub(super) fn settle_range(&self, pgoff: u64, pages: u64) -> Result<(), Lost> {
        self.backing.settle_range(self.model.vepc(), pgoff, pages)
    }

    /// Settles, and reports a lost descriptor to the device.
    fn settled(&self) -> Result<(), Errno> {
        if let Err(l) = self.settle() {
            self.notice.device.lose(l.0);
        }
        self.notice.device.check_lost()
    }

    /// Pages that hold an EPC page, every touch so far counted.
    pub fn present_pages(&self) -> u64 {
        let _ = self.settled();
        self.model.vepc().present_pages()
    }

    /// Pages not uninitialized (0 after a complete reset), every touch counted.
    pub fn valid_pages(&self) -> u64 {
        let _ = self.settled();
        self.model.vepc().valid_pages()
    }

    /// `ioctl(fd, request, arg)`: the model's `sgx_vepc_ioctl`, after counting the
    /// touches so far (REMOVE_ALL visits every page the instance holds). `EIO` once
    /// the device lost track of its memory ([`Emulated::lost`]).
    pub fn ioctl(&self, request: u32, arg: u64) -> Result<u64, Errno> {
        self.settled()?;
        self.backing.check().map_err(|l| {
            self.notice.device.lose(l.0);
            Errno::EIO
        })?;
        self.model.ioctl(request, arg)
    }
}
