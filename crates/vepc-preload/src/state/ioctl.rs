//! `ioctl` on an open of the device: the VFS's requests answered from the library's
//! table (`vepc::driver::vfs`) on the program's own memory and descriptor, then the
//! driver's: REMOVE_ALL with the guest script run before the first one and the injected
//! answers. And the log line a reader needs to judge a reset.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vepc::abi::{Errno, PAGE_SIZE, SGX_IOC_VEPC_REMOVE_ALL};
use vepc::driver::vfs::{Caller, Source, Vfs, do_vfs_ioctl};
use vepc::driver::{ModelSection, Sharing};
use vepc::script::{Runner, parse_attached};

use super::{Open, Shim, lock};
use crate::config::instance_name;
use crate::log::{hex, result};

impl Shim {
    /// `ioctl(fd, request, arg)` on an open of the device: the VFS's answer, or the
    /// driver's. Also says whether the answer was injected (`VEPC_INJECT`).
    pub fn ioctl(
        &self,
        fd: c_int,
        open: &Open,
        request: u64,
        arg: u64,
    ) -> (Result<u64, Errno>, bool) {
        // ioctl(2)'s request is an unsigned int: the upper half never reaches the VFS.
        let request = request as u32;
        let mut caller = ProgramCaller { fd, shim: self };
        match do_vfs_ioctl(request, arg, &mut caller) {
            Vfs::Answered(r) => (r, false),
            Vfs::Driver => self.driver_ioctl(open, request, arg),
        }
    }

    /// `sgx_vepc_ioctl`, with the guest script run before the first REMOVE_ALL and the
    /// injected answers.
    fn driver_ioctl(&self, open: &Open, request: u32, arg: u64) -> (Result<u64, Errno>, bool) {
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
        let instances: Vec<(String, ModelSection)> = live
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
                let inst = ModelSection {
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

/// The program as the VFS sees it: its memory (read and written through the kernel,
/// so a bad pointer is `EFAULT`, never a crash), its descriptor, its capabilities.
struct ProgramCaller<'a> {
    fd: c_int,
    shim: &'a Shim,
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
        cap_sys_admin()
    }

    fn source(&self, fd: i64) -> Source {
        let Ok(fd) = c_int::try_from(fd) else {
            return Source::NotOpen;
        };
        // Another open of /dev/sgx_vepc is a device node on devtmpfs, whatever the
        // shim stands it in with.
        if self.shim.fd(fd).is_some() {
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

/// Whether this process has `CAP_SYS_ADMIN` in its effective set (`CapEff` in
/// `/proc/self/status`, bit 21).
fn cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}
