//! EPC as rust-vmm guest memory (feature `vm-memory`): a VMM built on `vm-memory`
//! keeps every guest region in a [`GuestRegionCollection`]; this module gives it vEPC
//! sections there, with no `unsafe` of its own and no way for a region to outlive
//! its mapping.
//!
//! - [`EpcGuestRegion`] owns a [`VepcSection`] (host or emulated) and is a
//!   [`GuestMemoryRegion`] over its mapping at a guest address: the collection holds
//!   it, so the mapping is unmapped only when the last `Arc` of the region goes. An
//!   `Arc<EpcGuestRegion>` is also a [`VepcInstance`]: the VMM resets the very regions
//!   its guest memory holds ([`crate::reset::reset`]), the `ENOTTY` fallback included
//!   (a new instance mapped over the same range, which the guest memory keeps seeing).
//! - [`GuestRegion`] is RAM (`GuestRegionMmap`) or EPC, so that one
//!   [`GuestMemoryWithEpc`] holds all of a guest's memory, as `GuestMemoryMmap` holds
//!   RAM.
//!
//! `vm-memory`'s own `GuestRegionMmap` cannot hold EPC safely: it either unmaps the
//! range itself (behind the emulated device's back) or borrows it with no lifetime
//! at all, and its `get_mmap()` hands the raw mapping out to anyone.
//!
//! # What the VMM's own accesses do
//!
//! Reads and writes through `Bytes` are the VMM's accesses to EPC from outside an
//! enclave. On SGX hardware they get abort-page semantics (reads all ones, writes
//! dropped; Intel SDM Vol. 3D §38.5.1), and the first one of a page is its vEPC fault:
//! with the EPC exhausted the VMM itself gets `SIGBUS`, as a guest's touch does. The
//! emulated device gives ordinary memory (what was written is read back) and the same
//! faults, `SIGBUS` included. A VMM has no reason to read EPC; it maps it for KVM
//! ([`GuestMemoryRegion::get_host_address`] and `len`).

use std::sync::{Arc, Mutex};

use vm_memory::bitmap::{BS, Bitmap, NewBitmap};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryRegion, GuestMemoryRegionBytes, GuestRegionCollection,
    GuestRegionMmap, GuestUsize, MemoryRegionAddress, MmapRegion, VolatileSlice, guest_memory,
};

use super::{VepcError, VepcInstance, VepcSection};
use crate::abi::Errno;
use crate::reset::ResetLock;
use crate::sync::unpoisoned as lock;

/// A vEPC section as a guest memory region at a guest physical address. It owns the
/// section: the mapping is unmapped, and the instance closed, when this is dropped.
#[derive(Debug)]
pub struct EpcGuestRegion<B = ()> {
    /// `vm-memory`'s view of the mapping, never handed out. Before `section`: fields
    /// drop in order, and the view must go before the mapping.
    view: GuestRegionMmap<B>,
    /// The instance and its mapping; a recreate (the `ENOTTY` fallback) replaces the
    /// instance but keeps the mapping's range, which is all the view knows.
    section: Mutex<VepcSection>,
    reset_lock: Arc<ResetLock>,
}

impl<B: NewBitmap> EpcGuestRegion<B> {
    /// `section` at guest physical address `guest_base`. `EOVERFLOW` if it would end
    /// past the last guest address.
    pub fn new(section: VepcSection, guest_base: GuestAddress) -> Result<Arc<Self>, VepcError> {
        let prot =
            crate::driver::surface::flags::PROT_READ | crate::driver::surface::flags::PROT_WRITE;
        let flags = crate::driver::surface::flags::MAP_SHARED;
        let (addr, len) = (section.region().addr(), section.region().len());
        // SAFETY: the range is the section's live mapping, owned by the value built
        // here, which keeps it (at this range: a recreate maps over it in place) until
        // after the view is dropped. The view is never handed out (nor its
        // `get_mmap()`), so nothing can keep it longer.
        let mapping = unsafe { MmapRegion::<B>::build_raw(addr as *mut u8, len, prot, flags) };
        let fail = |errno| VepcError::Os {
            op: "EpcGuestRegion::new",
            errno,
        };
        let view = GuestRegionMmap::new(mapping.map_err(|_| fail(Errno::EINVAL))?, guest_base)
            .ok_or(fail(Errno::EOVERFLOW))?;
        Ok(Arc::new(Self {
            view,
            reset_lock: Arc::clone(section.device().reset_lock()),
            section: Mutex::new(section),
        }))
    }
}

impl<B> EpcGuestRegion<B> {
    /// Calls `f` with the section (its fd, its region, its device).
    pub fn with_section<T>(&self, f: impl FnOnce(&VepcSection) -> T) -> T {
        f(&lock(&self.section))
    }
}

/// The reset protocol on the regions a guest memory holds.
impl<B> VepcInstance for Arc<EpcGuestRegion<B>> {
    fn remove_all(&self) -> Result<u64, VepcError> {
        lock(&self.section).remove_all()
    }

    fn recreate(&mut self) -> Result<(), VepcError> {
        lock(&self.section).recreate()
    }

    fn reset_lock(&self) -> Option<&Arc<ResetLock>> {
        Some(&self.reset_lock)
    }
}

impl<B: Bitmap> GuestMemoryRegion for EpcGuestRegion<B> {
    type B = B;

    fn len(&self) -> GuestUsize {
        self.view.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.view.start_addr()
    }

    fn bitmap(&self) -> BS<'_, Self::B> {
        self.view.bitmap()
    }

    fn get_host_address(&self, addr: MemoryRegionAddress) -> guest_memory::Result<*mut u8> {
        self.view.get_host_address(addr)
    }

    fn file_offset(&self) -> Option<&FileOffset> {
        None
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> guest_memory::Result<VolatileSlice<'_, BS<'_, B>>> {
        self.view.get_slice(offset, count)
    }
}

impl<B: Bitmap> GuestMemoryRegionBytes for EpcGuestRegion<B> {}

/// One region of a guest's memory: RAM, or a vEPC section.
#[derive(Debug)]
pub enum GuestRegion<B = ()> {
    /// Ordinary guest RAM.
    Ram(GuestRegionMmap<B>),
    /// A vEPC section (shared with the VMM, which resets it).
    Epc(Arc<EpcGuestRegion<B>>),
}

/// All of a guest's memory, RAM and EPC, as `vm-memory` keeps it: what a VMM uses
/// where it would use `GuestMemoryMmap`.
pub type GuestMemoryWithEpc<B = ()> = GuestRegionCollection<GuestRegion<B>>;

macro_rules! either {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            GuestRegion::Ram($r) => $e,
            GuestRegion::Epc($r) => $e,
        }
    };
}

impl<B: Bitmap> GuestMemoryRegion for GuestRegion<B> {
    type B = B;

    fn len(&self) -> GuestUsize {
        either!(self, r => r.len())
    }

    fn start_addr(&self) -> GuestAddress {
        either!(self, r => r.start_addr())
    }

    fn bitmap(&self) -> BS<'_, Self::B> {
        either!(self, r => r.bitmap())
    }

    fn get_host_address(&self, addr: MemoryRegionAddress) -> guest_memory::Result<*mut u8> {
        either!(self, r => r.get_host_address(addr))
    }

    fn file_offset(&self) -> Option<&FileOffset> {
        either!(self, r => r.file_offset())
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> guest_memory::Result<VolatileSlice<'_, BS<'_, B>>> {
        either!(self, r => r.get_slice(offset, count))
    }
}

impl<B: Bitmap> GuestMemoryRegionBytes for GuestRegion<B> {}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;
    use crate::device::{MapOptions, VepcDevice};
    use crate::reset::{ResetOptions, reset};

    #[test]
    fn ram_and_epc_in_one_guest_memory_and_the_reset_on_it() {
        let dev = VepcDevice::emulated(&[64 * 4096]).expect("device");
        let section = VepcSection::open(&dev, 16 * 4096, MapOptions::default()).expect("open");
        let epc = EpcGuestRegion::new(section, GuestAddress(0x10_0000)).expect("region");
        let ram = GuestRegionMmap::from_range(GuestAddress(0), 0x1_0000, None).expect("ram");
        let mem: GuestMemoryWithEpc = GuestRegionCollection::from_arc_regions(vec![
            Arc::new(GuestRegion::Ram(ram)),
            Arc::new(GuestRegion::Epc(Arc::clone(&epc))),
        ])
        .expect("no overlap");
        mem.write_obj(0xf00du32, GuestAddress(0x100)).expect("RAM");
        // The VMM's own write to EPC is a first touch: the model counts it.
        mem.write_obj(1u8, GuestAddress(0x10_2000)).expect("EPC");
        assert_eq!(epc.with_section(|s| s.fd().pages()), Some((1, 0)));
        assert_eq!(mem.num_regions(), 2);
        let mut guest = vec![Arc::clone(&epc)];
        let report = reset(&mut guest, &ResetOptions::default(), None).expect("reset");
        assert_eq!(report.calls.len(), 1);
        drop((guest, epc));
        assert_eq!(
            dev.stats().map(|s| s.used),
            Some(1),
            "the guest memory holds it"
        );
        drop(mem);
        assert_eq!(
            dev.stats().map(|s| s.used),
            Some(0),
            "released with the last Arc"
        );
    }
}
