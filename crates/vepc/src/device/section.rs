//! [`VepcSection`]: one guest EPC section as a VMM holds it, on either device.

use std::sync::Arc;

use super::{EpcRegion, MapOptions, VepcDevice, VepcError, VepcFd, VepcInstance};
use crate::reset::ResetLock;

/// One guest EPC section (QEMU: one `memory-backend-epc`): an open instance and its
/// mapping, which the VMM hands to KVM as a memory slot, and which
/// [`crate::reset::reset`] brings back to uninitialized on a guest reboot.
#[derive(Debug)]
pub struct VepcSection {
    device: VepcDevice,
    fd: VepcFd,
    region: EpcRegion,
    opts: MapOptions,
}

impl VepcSection {
    /// Opens an instance of `device` and maps `len` bytes of it where the kernel
    /// chooses.
    pub fn open(device: &VepcDevice, len: usize, opts: MapOptions) -> Result<Self, VepcError> {
        let fd = device.open()?;
        let region = fd.map(len, opts)?;
        Self::new(device.clone(), fd, region, opts)
    }

    /// A section the VMM opened and mapped itself (at a fixed address, say). `device`
    /// is where [`recreate`](VepcInstance::recreate) opens a new instance on kernels
    /// before 5.16. `fd` must be an instance of `device` and `region` a mapping of
    /// `fd` ([`VepcError::InvalidArgument`] otherwise): a section that resets one
    /// instance and maps another would answer `Ok` for the wrong memory.
    pub fn new(
        device: VepcDevice,
        fd: VepcFd,
        region: EpcRegion,
        opts: MapOptions,
    ) -> Result<Self, VepcError> {
        if !fd.is_of(&device) {
            return Err(VepcError::InvalidArgument {
                op: "VepcSection::new",
                hint: "the fd is not an instance of this device (host and emulated, or two \
                       emulated devices, do not mix)",
            });
        }
        if !region.maps(&fd) {
            return Err(VepcError::InvalidArgument {
                op: "VepcSection::new",
                hint: "the region is not a mapping of this fd",
            });
        }
        Ok(Self {
            device,
            fd,
            region,
            opts,
        })
    }

    /// The open instance.
    pub fn fd(&self) -> &VepcFd {
        &self.fd
    }

    /// The mapping, for the guest's memory slot.
    pub fn region(&self) -> &EpcRegion {
        &self.region
    }

    /// The device it was opened on.
    pub fn device(&self) -> &VepcDevice {
        &self.device
    }
}

impl VepcInstance for VepcSection {
    fn remove_all(&self) -> Result<u64, VepcError> {
        self.fd.remove_all()
    }

    /// Opens a new instance, maps it over the old one's range with `MAP_FIXED` (so the
    /// guest's memory slot stays valid), then closes the old file: with its mapping
    /// already replaced, that is its last reference, and the kernel releases it.
    fn recreate(&mut self) -> Result<(), VepcError> {
        let new = self.device.open()?;
        self.region.remap(&new, self.opts)?;
        self.fd = new;
        Ok(())
    }

    fn reset_lock(&self) -> Option<&Arc<ResetLock>> {
        Some(self.device.reset_lock())
    }
}
