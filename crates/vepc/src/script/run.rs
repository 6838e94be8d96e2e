//! Running a script against the model (docs/SCRIPT.md "Results").
//!
//! The runner plays a VMM process and its guest: FD names stand for file descriptors
//! (each `open` makes a new one, as a real `open` would), enclave names for the guest's
//! pointer to a SECS page, and guest commands reach EPC only through a mapping, faulting
//! pages in on first access.

use std::collections::HashMap;
use std::sync::Arc;

use super::parse::{Command, Script, Step};
use crate::abi::{Errno, FaultError, PAGE_SIZE, Signal};
use crate::device::ModelSection;
use crate::driver::surface::Access;
use crate::driver::surface::flags::{MAP_PRIVATE, MAP_SHARED};
use crate::driver::surface::mmap::{MmapRequest, ModelAddressSpace};
use crate::driver::vfs::ScriptCaller;
use crate::driver::{Device, HostEnclaveId, VepcFile};
use crate::model::{Epc, EpcError, EpcPage};
use crate::reset::{ResetError, ResetOptions, reset};

/// What one command gave.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// 1-based line.
    pub line: usize,
    /// The command as written, without its comment.
    pub command: String,
    /// Its result, as docs/SCRIPT.md spells results (for `expect`: `ok` or `mismatch`).
    pub result: String,
    /// For an `expect` that did not hold: what it expected and what came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<Mismatch>,
}

/// An `expect` that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// The line whose result was checked.
    pub of_line: usize,
    /// What the script expected.
    pub expected: String,
    /// What that line gave.
    pub actual: String,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// One outcome per command, in order.
    pub outcomes: Vec<Outcome>,
    /// Consistency-check failures, when the run was asked to check after every step.
    pub inconsistencies: Vec<String>,
    /// Kernel warnings the model hit (`WARN_ON` in `virt.c`), e.g. a release with a
    /// thread still inside an enclave.
    pub warnings: Vec<String>,
}

impl Report {
    /// The `expect` lines that did not hold.
    pub fn mismatches(&self) -> impl Iterator<Item = (&Outcome, &Mismatch)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.mismatch.as_ref().map(|m| (o, m)))
    }

    /// Whether every expectation held and every check passed.
    pub fn passed(&self) -> bool {
        self.mismatches().next().is_none() && self.inconsistencies.is_empty()
    }
}

/// Runs scripts; see [`Runner::run`].
#[derive(Debug)]
pub struct Runner {
    device: Arc<Device>,
    /// Every FD ever opened (`None` once closed, or if the open failed); names point
    /// at the newest one with that name.
    fds: Vec<Option<ModelSection>>,
    names: HashMap<String, usize>,
    /// Enclave name → (FD slot, page): the guest's pointer to its SECS.
    enclaves: HashMap<String, (usize, u64)>,
    /// Host enclave name → the live enclave (`None` once closed or never built).
    hosts: HashMap<String, Option<HostEnclaveId>>,
    check_each_step: bool,
    /// The script's process's address space: what its mappings take of it.
    space: ModelAddressSpace,
}

impl Runner {
    /// A runner with a fresh device as the script's `epc` and `kernel` lines ask.
    /// Fails only for a [`Script`] built by hand with an EPC the model cannot hold:
    /// [`parse`](super::parse) has already checked a parsed one.
    pub fn new(script: &Script) -> Result<Self, EpcError> {
        Ok(Self {
            device: Device::new(Epc::new(&script.epc)?, script.kernel),
            fds: Vec::new(),
            names: HashMap::new(),
            enclaves: HashMap::new(),
            hosts: HashMap::new(),
            check_each_step: false,
            space: ModelAddressSpace::default(),
        })
    }

    /// A runner on an existing device, with `fds` already open under their names: a
    /// script parsed by [`parse_attached`](super::parse_attached) with those names
    /// drives a program's own instances through them. The script's `epc` and `kernel`
    /// lines change nothing then: the device exists. `close` of such a name drops
    /// only the runner's handle; the program's own stays open.
    pub fn attach(device: Arc<Device>, fds: Vec<(String, ModelSection)>) -> Self {
        let mut names = HashMap::new();
        let mut slots = Vec::with_capacity(fds.len());
        for (name, inst) in fds {
            names.insert(name, slots.len());
            slots.push(Some(inst));
        }
        Self {
            device,
            fds: slots,
            names,
            enclaves: HashMap::new(),
            hosts: HashMap::new(),
            check_each_step: false,
            space: ModelAddressSpace::default(),
        }
    }

    /// Also run the device's consistency check after every step.
    pub fn check_each_step(mut self, on: bool) -> Self {
        self.check_each_step = on;
        self
    }

    /// The device the script runs on.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Runs every step; never stops early.
    pub fn run(&mut self, script: &Script) -> Report {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(script.steps.len());
        let mut inconsistencies = Vec::new();
        let mut last: Option<(usize, String)> = None;
        for step in &script.steps {
            let outcome = match &step.command {
                Command::Expect(want) => expect(step, want, last.as_ref()),
                command => {
                    let result = self.step(command);
                    last = Some((step.line, result.clone()));
                    Outcome {
                        line: step.line,
                        command: step.text.clone(),
                        result,
                        mismatch: None,
                    }
                }
            };
            outcomes.push(outcome);
            if self.check_each_step
                && let Err(e) = self.device.check()
            {
                inconsistencies.push(format!("after line {}: {e}", step.line));
            }
        }
        Report {
            outcomes,
            inconsistencies,
            warnings: self.device.warnings(),
        }
    }

    fn step(&mut self, command: &Command) -> String {
        match self.exec(command) {
            Ok(s) => s,
            Err(r) => r.to_string(),
        }
    }

    fn exec(&mut self, command: &Command) -> Result<String, Fail> {
        let epc = self.device.epc();
        let ok = |()| "ok".to_owned();
        match command {
            Command::Epc(_) | Command::Kernel(_) => Ok("ok".into()),
            Command::Open(name) => {
                let file = self.device.open();
                self.fds.push(file.as_ref().ok().map(|f| ModelSection {
                    file: f.clone(),
                    maps: Vec::new(),
                }));
                self.names.insert(name.clone(), self.fds.len() - 1);
                file.map(|_| "ok".into()).map_err(Fail::Errno)
            }
            Command::Mmap { fd, size, private } => {
                let slot = self.slot(fd);
                let inst = self.fds[slot].as_mut().ok_or(Fail::Errno(Errno::EBADF))?;
                let sharing = if *private { MAP_PRIVATE } else { MAP_SHARED };
                // mmap(NULL, SIZE, PROT_READ | PROT_WRITE, sharing, fd, 0), checked as
                // Linux checks it (driver::surface), in the script's address space.
                let req = MmapRequest {
                    flags: sharing,
                    ..MmapRequest::shared(*size, 0, 0)
                };
                let (map, _) = inst
                    .file
                    .mmap_in(Access::READ_WRITE, &req, &mut self.space)?;
                inst.maps.push(map);
                Ok("ok".into())
            }
            Command::Touch { fd, page } => {
                let slot = self.slot(fd);
                let map = self.mapping_of(slot, *page)?;
                map.touch(*page).map(|_| "ok".into()).map_err(Fail::from)
            }
            Command::Ecreate { fd, page, encl } => {
                let slot = self.slot(fd);
                self.enclaves.insert(encl.clone(), (slot, *page));
                let p = self.guest_page(slot, *page)?;
                Ok(epc.ecreate(p).map(ok)?)
            }
            Command::Eadd { fd, page, encl, ty } => {
                let p = self.guest_page(self.slot(fd), *page)?;
                let secs = self.secs(encl)?;
                Ok(epc.eadd(p, secs, *ty).map(ok)?)
            }
            Command::Epa { fd, page } => {
                let p = self.guest_page(self.slot(fd), *page)?;
                Ok(epc.epa(p).map(ok)?)
            }
            Command::Einit { encl } => Ok(epc.einit(self.secs(encl)?).map(ok)?),
            // EENTER and EEXIT name only the TCS, as the instructions do; the enclave
            // name in the script is for the reader.
            Command::Eenter { fd, page, .. } => {
                let p = self.guest_page(self.slot(fd), *page)?;
                Ok(epc.eenter(p).map(ok)?)
            }
            Command::Eexit { fd, page, .. } => {
                let p = self.guest_page(self.slot(fd), *page)?;
                Ok(epc.eexit(p).map(ok)?)
            }
            Command::Eremove { fd, page } => {
                let p = self.guest_page(self.slot(fd), *page)?;
                Ok(epc.eremove(p).map(ok)?)
            }
            Command::Ioctl { fd, request, arg } => {
                let file = self.file(fd)?;
                // ioctl(2)'s request is an unsigned int: the kernel never sees the
                // upper half of a wider number. ARG is the pointer, as the VFS reads it.
                let mut caller = ScriptCaller::default();
                Ok(file
                    .ioctl_from(&mut caller, *request as u32, *arg)?
                    .to_string())
            }
            Command::Close(fd) => {
                let slot = self.slot(fd);
                // Unmaps and closes: the instance's last reference goes, release runs.
                let inst = self.fds[slot].take().ok_or(Fail::Errno(Errno::EBADF))?;
                for m in &inst.maps {
                    self.space.unmap(m.pages() * PAGE_SIZE);
                }
                Ok("ok".into())
            }
            Command::Reset(names) => self.reset(names),
            Command::Stats => Ok(self.device.stats().to_string()),
            Command::Expect(_) => Ok("ok".into()),
            Command::PoisonPage(n) => self.poison(epc.page_number_addr(*n)),
            Command::PoisonBoot(n) => {
                let paddr = epc.page_number_addr(*n);
                let handled = self.device.memory_failure_at_boot(paddr).handled;
                handled.map(|_| "ok".into()).map_err(Fail::Errno)
            }
            Command::Poison { fd, page } => {
                let slot = self.slot(fd);
                let backing = self.mapping_of(slot, *page)?.backing(*page);
                // No EPC page behind it: nothing for the error to be in.
                let p = backing.ok_or(Fail::Errno(Errno::ENXIO))?;
                self.poison(epc.page_addr(p))
            }
            Command::HostEnclave { name, size } => {
                let built = self.device.host_enclave_create(size.div_ceil(PAGE_SIZE));
                self.hosts.insert(name.clone(), built.ok());
                built.map(|_| "ok".into()).map_err(Fail::Errno)
            }
            Command::HostClose(name) => {
                let id = self.hosts.get_mut(name).and_then(Option::take);
                let id = id.ok_or(Fail::Errno(Errno::EBADF))?;
                self.device.host_enclave_release(id);
                Ok("ok".into())
            }
            Command::Reclaimer => {
                let r = self.device.reclaim_stats();
                Ok(format!(
                    "written-back={} wakeups={} retries={}",
                    r.written_back, r.ksgxd_wakeups, r.fault_retries
                ))
            }
            Command::CpuEupdatesvn => {
                self.device.set_eupdatesvn(true);
                Ok("ok".into())
            }
            Command::Ksgxd(when) => {
                self.device.set_ksgxd(*when);
                Ok("ok".into())
            }
            Command::Microcode(svn) => {
                self.device
                    .load_microcode(u32::try_from(*svn).unwrap_or(u32::MAX));
                Ok("ok".into())
            }
            Command::NoEntropy(n) => {
                self.device
                    .fail_entropy(u32::try_from(*n).unwrap_or(u32::MAX));
                Ok("ok".into())
            }
            Command::Svn => Ok(self.device.svn().to_string()),
        }
    }

    /// An asynchronous memory error at `paddr`: `ok` once the kernel has isolated the
    /// page, `ENXIO` where it cannot (no EPC page there, or a kernel before 5.17).
    fn poison(&self, paddr: u64) -> Result<String, Fail> {
        self.device
            .memory_failure(paddr, false)
            .handled
            .map(|_| "ok".into())
            .map_err(Fail::Errno)
    }

    fn slot(&self, fd: &str) -> usize {
        // The parser guarantees an earlier `open` bound the name.
        self.names.get(fd).copied().unwrap_or(usize::MAX)
    }

    fn file(&self, fd: &str) -> Result<&VepcFile, Fail> {
        self.fds
            .get(self.slot(fd))
            .and_then(|f| f.as_ref())
            .map(|inst| &inst.file)
            .ok_or(Fail::Errno(Errno::EBADF))
    }

    /// The library's reset over the named instances, in order (each instance once:
    /// a name given twice is reset once). There is no vCPU for a quiesce hook to stop,
    /// so a thread inside an enclave makes it answer `EBUSY`.
    fn reset(&mut self, names: &[String]) -> Result<String, Fail> {
        let mut slots: Vec<usize> = Vec::new();
        for n in names {
            let slot = self.slot(n);
            if self.fds.get(slot).is_none_or(Option::is_none) {
                return Err(Fail::Errno(Errno::EBADF));
            }
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        let mut instances: Vec<ModelSection> =
            slots.iter().filter_map(|&s| self.fds[s].take()).collect();
        let outcome = reset(&mut instances, &ResetOptions::default(), None);
        for (slot, inst) in slots.into_iter().zip(instances) {
            self.fds[slot] = Some(inst);
        }
        match outcome {
            Ok(_) => Ok("ok".into()),
            Err(failed) => match failed.error {
                ResetError::SecsLeft { .. } => Ok("SECS_LEFT".into()),
                ResetError::Quiesce(_) => Err(Fail::Errno(Errno::EBUSY)),
                error => Err(Fail::Errno(error.errno().unwrap_or(Errno::EBUSY))),
            },
        }
    }

    /// The guest's ENCLS leaf on `page` of the FD's mapping: faults it in (the leaf
    /// reads no data, so a poisoned page does not stop it).
    fn guest_page(&self, slot: usize, page: u64) -> Result<EpcPage, Fail> {
        Ok(self.mapping_of(slot, page)?.fault_in(page)?)
    }

    /// The FD's mapping that covers `page`: `SIGSEGV` when none does (none made, or
    /// closed since).
    fn mapping_of(&self, slot: usize, page: u64) -> Result<&crate::driver::Mapping, Fail> {
        let maps = self
            .fds
            .get(slot)
            .and_then(Option::as_ref)
            .map_or(&[][..], |f| &f.maps[..]);
        maps.iter()
            .find(|m| page < m.pages())
            .ok_or(Fail::Signal(Signal::Sigsegv))
    }

    fn secs(&self, encl: &str) -> Result<EpcPage, Fail> {
        let &(slot, page) = self
            .enclaves
            .get(encl)
            .ok_or(Fail::Signal(Signal::Sigsegv))?;
        self.guest_page(slot, page)
    }
}

fn expect(step: &Step, want: &str, last: Option<&(usize, String)>) -> Outcome {
    let (of_line, actual) = last.map_or((0, ""), |(l, r)| (*l, r.as_str()));
    let held = actual == want;
    Outcome {
        line: step.line,
        command: step.text.clone(),
        result: if held { "ok" } else { "mismatch" }.into(),
        mismatch: (!held).then(|| Mismatch {
            of_line,
            expected: want.to_owned(),
            actual: actual.to_owned(),
        }),
    }
}

/// A command's result when it is not a success.
#[derive(Debug, thiserror::Error)]
enum Fail {
    #[error(transparent)]
    Errno(#[from] Errno),
    #[error(transparent)]
    Signal(#[from] Signal),
    #[error("HANG")]
    Hang,
    #[error(transparent)]
    Encls(#[from] crate::abi::EnclsError),
}

impl From<FaultError> for Fail {
    fn from(e: FaultError) -> Self {
        match e {
            FaultError::Signal(s) => Self::Signal(s),
            FaultError::Hang => Self::Hang,
        }
    }
}
