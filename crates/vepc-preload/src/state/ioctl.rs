//! `ioctl` on an open of the device: the program as the VFS sees it (for the
//! library's table of the VFS's own requests), the driver's side with the guest script
//! and the injected answers, and the log line a reader needs to judge a reset.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vepc::abi::{Errno, PAGE_SIZE, SGX_IOC_VEPC_REMOVE_ALL};
use vepc::device::{Emulated, EmulatedFile, ModelSection};
use vepc::driver::Sharing;
use vepc::driver::vfs::{Caller, Source};
use vepc::script::{Runner, parse_attached};

use super::fds::Descriptors;
use super::{OpenFile, lock};
use crate::inject::Injections;
use crate::log::{Log, hex, result};

/// The driver's side of the shim's ioctls: REMOVE_ALL calls counted (per instance
/// and in all) for `VEPC_INJECT`, and `VEPC_SCRIPT`, run once before the first.
#[derive(Debug)]
pub(super) struct DriverIoctls {
    inject: Injections,
    remove_alls: AtomicU64,
    script: Mutex<Option<String>>,
}

impl DriverIoctls {
    pub(super) fn new(inject: Injections, script: Option<String>) -> Self {
        Self {
            inject,
            remove_alls: AtomicU64::new(0),
            script: Mutex::new(script),
        }
    }

    /// `sgx_vepc_ioctl` on `open`, with the guest script run (on the `named`
    /// instances) before the first REMOVE_ALL, and the injected answers. Also says
    /// whether the answer was injected.
    pub(super) fn answer(
        &self,
        open: &OpenFile,
        file: &EmulatedFile,
        request: u32,
        arg: u64,
        script_on: impl FnOnce() -> (Arc<Emulated>, Vec<(String, Arc<OpenFile>)>),
        log: &Log,
    ) -> (Result<u64, Errno>, bool) {
        let injected = if request == SGX_IOC_VEPC_REMOVE_ALL {
            if let Some(text) = lock(&self.script).take() {
                let (emulated, named) = script_on();
                run_script(&text, &emulated, &named, log);
            }
            let here = open.remove_alls.fetch_add(1, Ordering::Relaxed) + 1;
            let all = self.remove_alls.fetch_add(1, Ordering::Relaxed) + 1;
            self.inject.answer(open.number.get().copied(), here, all)
        } else {
            None
        };
        match injected {
            Some(e) => (Err(e), true),
            None => (file.ioctl(request, arg), false),
        }
    }
}

/// Logs an `ioctl` with what a reader of the log needs to judge a reset.
pub(super) fn log_line(
    log: &Log,
    fd: c_int,
    open: &OpenFile,
    file: &EmulatedFile,
    (request, arg): (u64, u64),
    r: Result<u64, Errno>,
    injected: bool,
) {
    if !log.enabled() {
        return;
    }
    log.line(
        "ioctl",
        vec![
            ("fd", fd.into()),
            ("instance", open.name_value()),
            ("request", hex(request)),
            ("arg", hex(arg)),
            ("result", result(r)),
            ("injected", injected.into()),
            ("present_pages", file.present_pages().into()),
            ("valid_pages", file.valid_pages().into()),
            // How often the exact device has taken its fast path: not Linux's.
            ("windows", file.device().windows_opened().into()),
        ],
    );
}

/// Runs `VEPC_SCRIPT`'s text on the program's instances, `named` `S0`, `S1`, … in map
/// order: just before its first REMOVE_ALL, when a VMM has mapped every section.
fn run_script(text: &str, emulated: &Arc<Emulated>, named: &[(String, Arc<OpenFile>)], log: &Log) {
    // The script's touches take EPC pages outside the program's mappings: from here
    // on every first touch is decided by the model as it happens.
    emulated.go_exact();
    let instances: Vec<(String, ModelSection)> = named
        .iter()
        .filter_map(|(name, open)| {
            let file = open.file.as_ref()?.model();
            let maps = open
                .first_map
                .get()
                .and_then(|&(pgoff, pages)| {
                    file.mmap(pages * PAGE_SIZE, Sharing::Shared, pgoff).ok()
                })
                .into_iter()
                .collect();
            let inst = ModelSection {
                file: file.clone(),
                maps,
            };
            Some((name.clone(), inst))
        })
        .collect();
    let names: Vec<&str> = instances.iter().map(|(n, _)| n.as_str()).collect();
    let script = match parse_attached(text, &names) {
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
            log.line("script", vec![("error", msg.into())]);
            return;
        }
    };
    let report = Runner::attach(Arc::clone(emulated.model()), instances).run(&script);
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
        log.line("script", fields);
    }
    for w in &report.warnings {
        eprintln!("vepc-preload: kernel warning: {w}");
    }
}

/// The program as the VFS sees it: its memory (read and written through the kernel,
/// so a bad pointer is `EFAULT`, never a crash), its descriptor, its capabilities.
pub(super) struct ProgramCaller<'a> {
    pub(super) fd: c_int,
    pub(super) descriptors: &'a Descriptors,
}

impl Caller for ProgramCaller<'_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        crate::sys::read_memory(addr, buf)
    }

    fn write(&mut self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        crate::sys::write_memory(addr, buf)
    }

    fn set_cloexec(&mut self, on: bool) {
        crate::sys::set_fd_flag(self.fd, false, libc::FD_CLOEXEC, on);
    }

    fn set_nonblock(&mut self, on: bool) {
        crate::sys::set_fd_flag(self.fd, true, libc::O_NONBLOCK, on);
    }

    fn fasync(&self) -> bool {
        crate::sys::status_flags(self.fd) & libc::O_ASYNC != 0
    }

    fn cap_sys_admin(&self) -> bool {
        vepc::sys::caps::has(vepc::sys::caps::SYS_ADMIN)
    }

    fn source(&self, fd: i64) -> Source {
        let Ok(fd) = c_int::try_from(fd) else {
            return Source::NotOpen;
        };
        // Another open of /dev/sgx_vepc is a device node on devtmpfs, whatever the
        // shim stands it in with.
        if self.descriptors.get(fd).is_some() {
            return Source::OnDevtmpfs;
        }
        let dev = crate::sys::file_kind(-1, Some(c"/dev")).map(|(d, _)| d);
        match crate::sys::file_kind(fd, None) {
            None => Source::NotOpen,
            Some((d, _)) if Some(d) != dev => Source::OtherFilesystem,
            Some((_, true)) => Source::Directory,
            Some((_, false)) => Source::OnDevtmpfs,
        }
    }
}
