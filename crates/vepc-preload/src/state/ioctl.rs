//! `ioctl` on an open of the device: REMOVE_ALL with the guest script run before the
//! first one and the injected answers, and the log line a reader needs to judge a reset.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vepc::abi::{Errno, PAGE_SIZE, SGX_IOC_VEPC_REMOVE_ALL};
use vepc::driver::{ModelInstance, Sharing};
use vepc::script::{Runner, parse_attached};

use super::{Open, Shim, lock};
use crate::config::instance_name;
use crate::log::{hex, result};

impl Shim {
    /// `ioctl(fd, request, arg)` on an open of the device, after the VFS's own
    /// requests (which the hooks pass to the stand-in file).
    /// Also says whether the answer was injected (`VEPC_INJECT`).
    pub fn ioctl(&self, open: &Open, request: u32, arg: u64) -> (Result<u64, Errno>, bool) {
        let injected = if request == SGX_IOC_VEPC_REMOVE_ALL {
            self.run_script_once();
            let here = open.remove_alls.fetch_add(1, Ordering::Relaxed) + 1;
            let all = self.remove_alls.fetch_add(1, Ordering::Relaxed) + 1;
            self.inject.answer(open.number.get().copied(), here, all)
        } else {
            None
        };
        match injected {
            Some(e) => (Err(e), true),
            None => (open.file.ioctl(request, arg), false),
        }
    }

    /// Logs an `ioctl` with what a reader of the log needs to judge a reset.
    pub fn log_ioctl(
        &self,
        fd: c_int,
        open: &Open,
        request: u64,
        arg: u64,
        r: Result<u64, Errno>,
        injected: bool,
    ) {
        if !self.log.enabled() {
            return;
        }
        self.log.line(
            "ioctl",
            vec![
                ("fd", fd.into()),
                ("instance", open.name_value()),
                ("request", hex(request)),
                ("arg", hex(arg)),
                ("result", result(r)),
                ("injected", injected.into()),
                ("present_pages", open.file.present_pages().into()),
                ("valid_pages", open.file.valid_pages().into()),
            ],
        );
    }

    /// Runs `VEPC_SCRIPT` on the program's instances, once: just before its first
    /// REMOVE_ALL, when a VMM has mapped every section.
    fn run_script_once(&self) {
        let Some(text) = lock(&self.script).take() else {
            return;
        };
        let live: Vec<(String, Arc<Open>)> = lock(&self.named)
            .iter()
            .enumerate()
            .filter_map(|(n, w)| w.upgrade().map(|o| (instance_name(n), o)))
            .collect();
        // The script's touches take EPC pages outside the program's mappings: from
        // here on every first touch is decided by the model as it happens.
        self.emulated.go_exact();
        let instances: Vec<(String, ModelInstance)> = live
            .iter()
            .map(|(name, open)| {
                let file = open.file.model();
                let maps = open
                    .first_map
                    .get()
                    .and_then(|&(pgoff, pages)| {
                        file.mmap(pages * PAGE_SIZE, Sharing::Shared, pgoff).ok()
                    })
                    .into_iter()
                    .collect();
                let inst = ModelInstance {
                    file: file.clone(),
                    maps,
                };
                (name.clone(), inst)
            })
            .collect();
        let names: Vec<&str> = instances.iter().map(|(n, _)| n.as_str()).collect();
        let script = match parse_attached(&text, &names) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!(
                    "VEPC_SCRIPT not run: line {}, column {}: {} (the program mapped {} instance(s))",
                    e.line,
                    e.col,
                    e.msg,
                    names.len()
                );
                eprintln!("vepc-preload: {msg}");
                self.log.line("script", vec![("error", msg.into())]);
                return;
            }
        };
        let report = Runner::attach(Arc::clone(self.device()), instances).run(&script);
        for o in &report.outcomes {
            let mut fields = vec![
                ("line", o.line.into()),
                ("command", o.command.clone().into()),
                ("result", o.result.clone().into()),
            ];
            if let Some(m) = &o.mismatch {
                eprintln!(
                    "vepc-preload: VEPC_SCRIPT line {}: expected {}, got {}",
                    m.of_line, m.expected, m.actual
                );
                fields.push(("expected", m.expected.clone().into()));
                fields.push(("actual", m.actual.clone().into()));
            }
            self.log.line("script", fields);
        }
        for w in &report.warnings {
            eprintln!("vepc-preload: kernel warning: {w}");
        }
    }
}
