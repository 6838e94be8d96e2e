//! [`ModelInstance`]: a guest EPC section on the model, as a VMM holds it.

use std::sync::Arc;

use super::{Mapping, Sharing, VepcFile};
use crate::abi::{Errno, PAGE_SIZE};
use crate::reset::VepcInstance;

/// An open model instance and the mappings the VMM made of it.
#[derive(Debug)]
pub struct ModelInstance {
    /// The open file.
    pub file: VepcFile,
    /// Its mappings.
    pub maps: Vec<Mapping>,
}

impl ModelInstance {
    /// An instance with one mapping of `len` bytes at offset 0.
    pub fn open(device: &Arc<super::Device>, len: u64) -> Result<Self, Errno> {
        Self::open_on_node(device, 0, len)
    }

    /// [`open`](Self::open) with its faults served by NUMA node `node`
    /// ([`Device::open_on_node`](super::Device::open_on_node)).
    pub fn open_on_node(device: &Arc<super::Device>, node: usize, len: u64) -> Result<Self, Errno> {
        let file = device.open_on_node(node)?;
        let map = file.mmap(len, Sharing::Shared, 0)?;
        Ok(Self {
            file,
            maps: vec![map],
        })
    }
}

impl VepcInstance for ModelInstance {
    fn remove_all(&self) -> Result<u64, Errno> {
        self.file.remove_all()
    }

    /// Opens a new instance, maps it as the old one was mapped, then drops the old
    /// one (which the kernel then releases).
    fn recreate(&mut self) -> Result<(), Errno> {
        let vepc = self.file.vepc();
        let file = vepc.device().open_on_node(vepc.node())?;
        let maps = self
            .maps
            .iter()
            .map(|m| file.mmap(m.pages() * PAGE_SIZE, Sharing::Shared, m.pgoff()))
            .collect::<Result<Vec<_>, _>>()?;
        *self = Self { file, maps };
        Ok(())
    }
}
