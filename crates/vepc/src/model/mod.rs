//! The software EPC: what the processor knows about EPC pages, and the leaves a guest
//! runs on them. Nothing here knows about Linux: that is [`crate::driver`].
//!
//! - `epcm`: the packed EPCM [`Entry`] of one page;
//! - `epc`: the [`Epc`], its [`Section`]s and free pools, and the locking rules that
//!   make leaves atomic;
//! - `encls`: ECREATE, EADD, EPA, EINIT, EENTER, EEXIT, and EWB's effect (methods of
//!   [`Epc`]);
//! - `eremove`: EREMOVE and the [`Sweep`] that runs it over many pages;
//! - `pool`: a section's free pages and poison list ([`Poisoning`]).
//!
//! As in [`crate::driver`], the submodules are private and their items are used from
//! here: one path per item.

mod encls;
mod epc;
mod epcm;
mod eremove;
mod pool;

pub use encls::AddType;
pub use epc::{EPC_PHYS_BASE, Epc, EpcError, MAX_EPC_PAGES, Section};
pub use epcm::{Entry, EpcPage, MAX_THREADS, PageType};
pub use eremove::Sweep;
pub use pool::Poisoning;
