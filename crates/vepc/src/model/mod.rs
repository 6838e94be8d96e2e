//! The software EPC: what the processor knows about EPC pages, and the leaves a guest
//! runs on them. Nothing here knows about Linux: that is [`crate::driver`].
//!
//! - [`epcm`]: the packed EPCM entry of one page;
//! - [`epc`]: sections, free pools, and the locking rules that make leaves atomic;
//! - [`encls`]: ECREATE, EADD, EPA, EINIT, EENTER, EEXIT;
//! - [`eremove`]: EREMOVE and the [`Sweep`] that runs it over many pages.

pub mod encls;
pub mod epc;
pub mod epcm;
pub mod eremove;
mod pool;

pub use encls::AddType;
pub use epc::{EPC_PHYS_BASE, Epc, EpcError, MAX_EPC_PAGES, Section};
pub use epcm::{Entry, EpcPage, PageType};
pub use eremove::Sweep;
