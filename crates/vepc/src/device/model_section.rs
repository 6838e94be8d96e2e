//! [`ModelSection`]: a guest EPC section on the model's driver, as a VMM holds it,
//! without memory behind it: what scripts and the terabyte-scale benchmark drive. (With
//! memory a VMM can hand to KVM, it is a [`VepcSection`](super::VepcSection) on the
//! emulated device.)

use std::sync::Arc;

use super::{SGX_VEPC_PATH, VepcError, VepcInstance};
use crate::abi::{Errno, PAGE_SIZE};
use crate::driver::{Device, Mapping, Sharing, VepcFile};

/// An open model instance and the mappings the VMM made of it.
#[derive(Debug)]
pub struct ModelSection {
    /// The open file.
    pub file: VepcFile,
    /// Its mappings.
    pub maps: Vec<Mapping>,
}

impl ModelSection {
    /// An instance with one mapping of `len` bytes at offset 0.
    pub fn open(device: &Arc<Device>, len: u64) -> Result<Self, Errno> {
        Self::open_on_node(device, 0, len)
    }

    /// [`open`](Self::open) with its faults served by NUMA node `node`
    /// ([`Device::open_on_node`]).
    pub fn open_on_node(device: &Arc<Device>, node: usize, len: u64) -> Result<Self, Errno> {
        let file = device.open_on_node(node)?;
        let map = file.mmap(len, Sharing::Shared, 0)?;
        Ok(Self {
            file,
            maps: vec![map],
        })
    }
}

impl VepcInstance for ModelSection {
    fn remove_all(&self) -> Result<u64, VepcError> {
        self.file.remove_all().map_err(VepcError::remove_all)
    }

    /// Opens a new instance, maps it as the old one was mapped, then drops the old
    /// one (which the kernel then releases).
    fn recreate(&mut self) -> Result<(), VepcError> {
        let vepc = self.file.vepc();
        let file = vepc
            .device()
            .open_on_node(vepc.node())
            .map_err(|e| VepcError::open(SGX_VEPC_PATH.into(), e))?;
        let maps = self
            .maps
            .iter()
            .map(|m| {
                let len = m.pages() * PAGE_SIZE;
                file.mmap(len, Sharing::Shared, m.pgoff())
                    .map_err(|e| VepcError::mmap(e, len as usize, None))
            })
            .collect::<Result<Vec<_>, _>>()?;
        *self = Self { file, maps };
        Ok(())
    }
}
