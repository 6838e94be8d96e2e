//! How first touches of the device's mappings are served, as the log and stderr say
//! it. The mapping itself, and every first touch, is the library's emulated device.

use std::sync::Mutex;

use vepc::abi::Errno;
use vepc::device::{Emulated, Faults};

use super::lock;
use crate::config::FaultMode;
use crate::log::Log;

/// How first touches were served when the log last said, and what was asked for.
#[derive(Debug)]
pub(super) struct FaultNotes {
    wanted: FaultMode,
    logged: Mutex<Option<Faults>>,
}

impl FaultNotes {
    pub(super) fn new(wanted: FaultMode) -> Self {
        Self {
            wanted,
            logged: Mutex::new(None),
        }
    }

    /// `VEPC_FAULTS=userfaultfd` with no userfaultfd to be had: `ENODEV`, said once on
    /// stderr.
    pub(super) fn prepare(
        &self,
        emulated: &std::sync::Arc<Emulated>,
        log: &Log,
    ) -> Result<(), Errno> {
        if self.wanted != FaultMode::Userfaultfd {
            return Ok(());
        }
        emulated.prepare().map_err(|why| {
            if self.note(emulated, log) {
                eprintln!(
                    "vepc-preload: VEPC_FAULTS=userfaultfd, but {why}: mappings of /dev/sgx_vepc fail with ENODEV"
                );
            }
            Errno::ENODEV
        })
    }

    /// After a mapping: logs a change in how first touches are served, and says on
    /// stderr when userfaultfd was refused and every page is now faulted in eagerly.
    pub(super) fn after_mapping(&self, emulated: &Emulated, log: &Log) {
        if self.note(emulated, log)
            && emulated.faults() == Faults::Eager
            && self.wanted == FaultMode::Auto
        {
            let why = emulated
                .userfaultfd_refused()
                .unwrap_or("userfaultfd is refused");
            eprintln!(
                "vepc-preload: {why}; every page is faulted in when it is mapped (VEPC_FAULTS=eager)"
            );
        }
    }

    /// Logs how first touches are served if that changed since the last line; true
    /// when it did.
    fn note(&self, emulated: &Emulated, log: &Log) -> bool {
        let now = emulated.faults();
        let mut logged = lock(&self.logged);
        if *logged == Some(now) {
            return false;
        }
        *logged = Some(now);
        let refused = || {
            emulated
                .userfaultfd_refused()
                .unwrap_or("userfaultfd is refused")
                .to_string()
        };
        let (mode, why) = match now {
            Faults::Fast => ("fast", "every mapped page can still get an EPC page".into()),
            Faults::Exact if self.wanted == FaultMode::Userfaultfd => {
                ("userfaultfd", "VEPC_FAULTS=userfaultfd".into())
            }
            Faults::Exact => (
                "userfaultfd",
                "a first touch could now find no free EPC page".to_string(),
            ),
            Faults::Eager if self.wanted == FaultMode::Eager => {
                ("eager", "VEPC_FAULTS=eager".into())
            }
            Faults::Eager => ("eager", refused()),
            Faults::Refused => ("refused", refused()),
        };
        log.line("faults", vec![("mode", mode.into()), ("why", why.into())]);
        true
    }
}
