//! A reference model of the EPC and `/dev/sgx_vepc`, for differential tests only.
//!
//! Written straight from docs/SEMANTICS.md (and, for the leaves it does not cover, the
//! SDM's checks), as plainly as possible: ordinary maps, one thread, nothing cached.
//! A SECS's children and threads are counted afresh from the EPCM each time they are
//! needed, so there is no counter to get wrong. It shares nothing with the model but
//! the parsed script.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use vepc::abi::{KernelFix, KernelVersion};
use vepc::driver::Ksgxd;
use vepc::script::{Command, Script};

type Page = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secs,
    Tcs,
    Reg,
    Va,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epcm {
    Invalid,
    Valid {
        kind: Kind,
        /// The enclave a TCS/REG page belongs to.
        secs: Option<Page>,
        /// SECS: EINIT done.
        initialized: bool,
        /// TCS: a thread is inside through it.
        busy: bool,
    },
}

#[derive(Debug, Default)]
struct Instance {
    /// page index → EPC page
    pages: BTreeMap<u64, Page>,
    /// the lengths (in pages) of its mappings, all at offset 0
    maps: Vec<u64>,
}

/// A host enclave (`/dev/sgx_enclave`), as main.c and encl.c keep it.
#[derive(Debug, Default)]
struct Host {
    secs: Option<Page>,
    children: BTreeSet<Page>,
    va: Vec<Page>,
    page_cnt: u64,
    initialized: bool,
}

/// The reference device and the process using it.
#[derive(Debug)]
pub struct Reference {
    epcm: Vec<Epcm>,
    free: BTreeSet<Page>,
    zombies: Vec<Page>,
    kernel: (u16, u16),
    /// The proposed kernel fixes the script runs with.
    fixes: KernelVersion,
    /// Pages poisoned before the boot sanitize pass: never counted as free.
    boot_poisoned: usize,
    fds: Vec<Option<Instance>>,
    names: HashMap<String, usize>,
    enclaves: HashMap<String, (usize, u64)>,
    /// Pages whose memory is bad; of those, the ones with `page->poison`; of those,
    /// the ones on a poison list.
    bad: BTreeSet<Page>,
    flagged: BTreeSet<Page>,
    poison_list: BTreeSet<Page>,
    /// `sgx_active_page_list`, oldest first, with each page's host enclave.
    active: VecDeque<(Page, usize)>,
    hosts: Vec<Option<Host>>,
    host_names: HashMap<String, usize>,
    written_back: u64,
    wakeups: u64,
    retries: u64,
    lazy: bool,
    woken: bool,
    eupdatesvn: bool,
    cpusvn: u64,
    microcode: u64,
    users: u64,
    no_entropy: u64,
}

const PAGE: u64 = 4096;
const REMOVE_ALL: u32 = 0xA404;

impl Reference {
    pub fn new(script: &Script) -> Self {
        let pages: u64 = script.epc.iter().map(|b| b / PAGE).sum();
        let pages = pages as usize;
        Self {
            epcm: vec![Epcm::Invalid; pages],
            free: (0..pages).collect(),
            zombies: Vec::new(),
            kernel: (script.kernel.major, script.kernel.minor),
            fixes: script.kernel,
            boot_poisoned: 0,
            fds: Vec::new(),
            names: HashMap::new(),
            enclaves: HashMap::new(),
            bad: BTreeSet::new(),
            flagged: BTreeSet::new(),
            poison_list: BTreeSet::new(),
            active: VecDeque::new(),
            hosts: Vec::new(),
            host_names: HashMap::new(),
            written_back: 0,
            wakeups: 0,
            retries: 0,
            lazy: false,
            woken: false,
            eupdatesvn: false,
            cpusvn: 1,
            microcode: 1,
            users: 0,
            no_entropy: 0,
        }
    }

    /// Every command's result, as docs/SCRIPT.md spells it (expect lines excluded).
    pub fn run(script: &Script) -> Vec<(usize, String)> {
        let mut r = Self::new(script);
        script
            .steps
            .iter()
            .filter(|s| !matches!(s.command, Command::Expect(_)))
            .map(|s| (s.line, r.step(&s.command)))
            .collect()
    }

    fn step(&mut self, c: &Command) -> String {
        match c {
            Command::Epc(_) | Command::Kernel(_) | Command::Expect(_) => "ok".into(),
            Command::Open(name) => {
                let answer = if self.kernel < (5, 13) {
                    Err("ENOENT")
                } else {
                    self.new_user()
                };
                self.fds.push(answer.is_ok().then(Instance::default));
                self.names.insert(name.clone(), self.fds.len() - 1);
                answer.map_or_else(String::from, |()| "ok".into())
            }
            Command::Mmap { fd, size, private } => {
                let slot = self.names[fd];
                let Some(inst) = self.fds[slot].as_mut() else {
                    return "EBADF".into();
                };
                if *size == 0 {
                    return "EINVAL".into();
                }
                let Some(rounded) = size.checked_add(PAGE - 1) else {
                    return "ENOMEM".into();
                };
                if *private {
                    return "EINVAL".into();
                }
                inst.maps.push(rounded / PAGE);
                "ok".into()
            }
            Command::Touch { fd, page } => match self.access(self.names[fd], *page) {
                // The read of a bad page: a machine check, then force_sig(SIGBUS).
                Ok(p) if self.bad.contains(&p) => {
                    // Reported to the kernel (ENXIO before 5.17); the signal comes either way.
                    let _ = self.memory_error(p);
                    "SIGBUS/SI_KERNEL".into()
                }
                Ok(_) => "ok".into(),
                Err(s) => s,
            },
            Command::Ecreate { fd, page, encl } => {
                let slot = self.names[fd];
                self.enclaves.insert(encl.clone(), (slot, *page));
                self.leaf(slot, *page, |r, p| r.ecreate(p))
            }
            Command::Eadd { fd, page, encl, ty } => {
                let kind = match ty {
                    vepc::model::AddType::Reg => Kind::Reg,
                    vepc::model::AddType::Tcs => Kind::Tcs,
                };
                let target = match self.access(self.names[fd], *page) {
                    Ok(p) => p,
                    Err(s) => return s,
                };
                let (es, ep) = self.enclaves[encl];
                match self.access(es, ep) {
                    Ok(secs) => self.eadd(target, secs, kind),
                    Err(s) => s,
                }
            }
            Command::Epa { fd, page } => self.leaf(self.names[fd], *page, |r, p| r.epa(p)),
            Command::Einit { encl } => {
                let (s, p) = self.enclaves[encl];
                self.leaf(s, p, |r, p| r.einit(p))
            }
            Command::Eenter { fd, page, .. } => {
                self.leaf(self.names[fd], *page, |r, p| r.eenter(p))
            }
            Command::Eexit { fd, page, .. } => self.leaf(self.names[fd], *page, |r, p| r.eexit(p)),
            Command::Eremove { fd, page } => self.leaf(self.names[fd], *page, |r, p| {
                r.eremove(p).unwrap_or_else(|e| e)
            }),
            Command::Ioctl { fd, request, arg } => {
                let slot = self.names[fd];
                if self.fds[slot].is_none() {
                    return "EBADF".into();
                }
                match self.ioctl(slot, *request as u32, *arg) {
                    Ok(n) => n.to_string(),
                    Err(e) => e.into(),
                }
            }
            Command::Close(fd) => {
                let slot = self.names[fd];
                match self.fds[slot].take() {
                    None => "EBADF".into(),
                    Some(inst) => {
                        self.release(inst);
                        "ok".into()
                    }
                }
            }
            Command::Reset(names) => self.reset(names),
            Command::Stats => {
                let free = self.free.len();
                let zombie = self.zombies.len();
                let poisoned = self.poison_list.len();
                let host: usize = self
                    .hosts
                    .iter()
                    .flatten()
                    .map(|h| h.children.len() + h.va.len() + usize::from(h.secs.is_some()))
                    .sum();
                let used = self.epcm.len() - free - zombie - poisoned - host;
                let mut s = format!("free={free} used={used} zombie={zombie}");
                if poisoned > 0 {
                    s += &format!(" poisoned={poisoned}");
                }
                if host > 0 {
                    s += &format!(" host={host}");
                }
                s
            }
            Command::PoisonPage(n) => {
                if *n >= self.epcm.len() as u64 {
                    return "ENXIO".into();
                }
                self.poison(*n as Page)
            }
            Command::PoisonBoot(n) => {
                if *n >= self.epcm.len() as u64 {
                    return "ENXIO".into();
                }
                let fresh = !self.flagged.contains(&(*n as Page));
                let answer = self.poison(*n as Page);
                if fresh && answer == "ok" {
                    self.boot_poisoned += 1;
                }
                answer
            }
            Command::Poison { fd, page } => {
                let backing = self.fds[self.names[fd]]
                    .as_ref()
                    .filter(|i| i.maps.iter().any(|&len| *page < len))
                    .map(|i| i.pages.get(page).copied());
                match backing {
                    None => "SIGSEGV".into(),
                    Some(None) => "ENXIO".into(),
                    Some(Some(p)) => self.poison(p),
                }
            }
            Command::HostEnclave { name, size } => {
                let built = self.host_create(size.div_ceil(PAGE));
                self.host_names
                    .insert(name.clone(), *built.as_ref().unwrap_or(&usize::MAX));
                built.map_or_else(String::from, |_| "ok".into())
            }
            Command::HostClose(name) => {
                let slot = self.host_names[name];
                match self.hosts.get_mut(slot).and_then(Option::take) {
                    None => "EBADF".into(),
                    Some(h) => {
                        self.host_release(slot, h);
                        "ok".into()
                    }
                }
            }
            Command::Reclaimer => format!(
                "written-back={} wakeups={} retries={}",
                self.written_back, self.wakeups, self.retries
            ),
            Command::CpuEupdatesvn => {
                self.eupdatesvn = true;
                "ok".into()
            }
            Command::Ksgxd(when) => {
                self.lazy = *when == Ksgxd::Lazy;
                "ok".into()
            }
            Command::Microcode(n) => {
                self.microcode = self.microcode.max((*n).min(u64::from(u32::MAX)));
                "ok".into()
            }
            Command::NoEntropy(n) => {
                self.no_entropy = (*n).min(u64::from(u32::MAX));
                "ok".into()
            }
            Command::Svn => format!(
                "cpusvn={} microcode={} users={}",
                self.cpusvn, self.microcode, self.users
            ),
        }
    }

    /// A memory error in page `p` reported to the kernel: since 5.17 `page->poison`,
    /// and a free page leaves for the poison list; a reclaimable one leaves the active
    /// list. Before 5.17 the kernel does not know the page: ENXIO.
    fn memory_error(&mut self, p: Page) -> Result<(), &'static str> {
        self.bad.insert(p);
        if self.kernel < (5, 17) {
            return Err("ENXIO");
        }
        if self.flagged.insert(p) {
            if self.free.remove(&p) {
                self.poison_list.insert(p);
            }
            // Since 6.16 a page in use also leaves the active list.
            if self.kernel >= (6, 16) {
                self.active.retain(|&(a, _)| a != p);
            }
        }
        Ok(())
    }

    fn poison(&mut self, p: Page) -> String {
        self.memory_error(p)
            .map_or_else(String::from, |()| "ok".into())
    }

    /// `sgx_free_epc_page`.
    fn free_page(&mut self, p: Page) {
        if self.flagged.contains(&p) {
            self.poison_list.insert(p);
        } else {
            self.free.insert(p);
        }
    }

    /// `sgx_should_reclaim`: `sgx_nr_free_pages` counts the poison lists too, but
    /// for pages poisoned before the boot sanitize pass; with the poison-count fix,
    /// only the free pages.
    fn should_reclaim(&self, watermark: usize) -> bool {
        let counted = if self.fixes.has(KernelFix::PoisonCount) {
            0
        } else {
            self.poison_list.len() - self.boot_poisoned
        };
        self.free.len() + counted < watermark && !self.active.is_empty()
    }

    /// `sgx_alloc_epc_page(owner, reclaim)`.
    fn alloc(&mut self, reclaim: bool) -> Result<Page, &'static str> {
        let got = loop {
            if let Some(p) = self.free.pop_first() {
                break Ok(p);
            }
            if self.active.is_empty() {
                return Err("ENOMEM");
            }
            if !reclaim {
                break Err("EBUSY");
            }
            self.reclaim_pages();
        };
        if self.should_reclaim(32) {
            self.wakeups += u64::from(!self.lazy || !self.woken);
            if self.lazy {
                self.woken = true;
            } else {
                self.ksgxd();
            }
        }
        got
    }

    fn ksgxd(&mut self) {
        while self.should_reclaim(64) {
            self.reclaim_pages();
        }
    }

    /// The 16 oldest active pages are written back; an initialized enclave's SECS
    /// follows its last child.
    fn reclaim_pages(&mut self) {
        for _ in 0..16 {
            let Some((p, h)) = self.active.pop_front() else {
                break;
            };
            self.write_back(p);
            let host = self.hosts[h].as_mut().expect("a live host enclave");
            host.children.remove(&p);
            if host.children.is_empty()
                && host.initialized
                && let Some(secs) = host.secs.take()
            {
                self.write_back(secs);
            }
        }
    }

    fn write_back(&mut self, p: Page) {
        self.epcm[p] = Epcm::Invalid;
        self.written_back += 1;
        self.free_page(p);
    }

    /// `sgx_inc_usage_count` (6.19+): EUPDATESVN at the first user.
    fn new_user(&mut self) -> Result<(), &'static str> {
        if self.kernel < (6, 19) {
            return Ok(());
        }
        if self.users == 0 && self.fixes.has(KernelFix::ZombieDrain) {
            while self.walk_zombies() {}
        }
        if self.users == 0 && self.eupdatesvn {
            if self.epcm.iter().any(|e| *e != Epcm::Invalid) {
                return Err("EIO");
            }
            if self.no_entropy >= 10 {
                self.no_entropy -= 10;
                return Err("EAGAIN");
            }
            self.no_entropy = 0;
            self.cpusvn = self.cpusvn.max(self.microcode);
        }
        self.users += 1;
        Ok(())
    }

    fn user_gone(&mut self) {
        if self.kernel >= (6, 19) {
            self.users -= 1;
        }
    }

    /// `/dev/sgx_enclave`: open, ECREATE (a VA page first), EADD each page (a VA page
    /// every 512), EINIT, each page with direct reclaim. ENOMEM gives it up.
    fn host_create(&mut self, pages: u64) -> Result<usize, &'static str> {
        self.new_user()?;
        self.hosts.push(Some(Host::default()));
        let h = self.hosts.len() - 1;
        let built = (|| {
            self.host_grow(h)?;
            let secs = self.alloc(true)?;
            self.epcm[secs] = Self::valid(Kind::Secs, None);
            self.hosts[h].as_mut().expect("host").secs = Some(secs);
            for _ in 0..pages {
                self.host_grow(h)?;
                let p = self.alloc(true)?;
                self.epcm[p] = Self::valid(Kind::Reg, Some(secs));
                self.hosts[h].as_mut().expect("host").children.insert(p);
                self.active.push_back((p, h));
            }
            if let Epcm::Valid { initialized, .. } = &mut self.epcm[secs] {
                *initialized = true;
            }
            self.hosts[h].as_mut().expect("host").initialized = true;
            Ok(())
        })();
        match built {
            Ok(()) => Ok(h),
            Err(e) => {
                let host = self.hosts[h].take().expect("host");
                self.host_release(h, host);
                Err(e)
            }
        }
    }

    fn host_grow(&mut self, h: usize) -> Result<(), &'static str> {
        let host = self.hosts[h].as_mut().expect("host");
        let needs_va = host.page_cnt.is_multiple_of(512);
        host.page_cnt += 1;
        if needs_va {
            let va = self.alloc(true)?;
            self.epcm[va] = Self::valid(Kind::Va, None);
            self.hosts[h].as_mut().expect("host").va.push(va);
        }
        Ok(())
    }

    /// `sgx_encl_release`: children, VA pages, SECS: off the active list, EREMOVE'd,
    /// freed.
    fn host_release(&mut self, h: usize, host: Host) {
        self.active.retain(|&(_, o)| o != h);
        for p in host.children.iter().chain(&host.va).chain(&host.secs) {
            self.epcm[*p] = Epcm::Invalid;
            self.free_page(*p);
        }
        self.user_gone();
    }

    /// The guest touches `page` of the FD's mappings: SIGSEGV outside them, else the
    /// fault (SIGBUS when no EPC page is free).
    fn access(&mut self, slot: usize, page: u64) -> Result<Page, String> {
        let Some(inst) = self.fds.get_mut(slot).and_then(|f| f.as_mut()) else {
            return Err("SIGSEGV".into());
        };
        if !inst.maps.iter().any(|&len| page < len) {
            return Err("SIGSEGV".into());
        }
        if let Some(&p) = inst.pages.get(&page) {
            return Ok(p);
        }
        // sgx_alloc_epc_page(vepc, false): EBUSY is retried after ksgxd's work, if it
        // was woken; with nothing free then, the retries never end.
        let p = loop {
            match self.alloc(false) {
                Ok(p) => break p,
                Err("EBUSY") => {
                    self.retries += 1;
                    if self.woken {
                        self.woken = false;
                        self.ksgxd();
                    }
                    if self.free.is_empty() {
                        return Err("HANG".into());
                    }
                }
                Err(_) => return Err("SIGBUS".into()),
            }
        };
        if let Some(inst) = self.fds.get_mut(slot).and_then(|f| f.as_mut()) {
            inst.pages.insert(page, p);
        }
        Ok(p)
    }

    fn leaf(
        &mut self,
        slot: usize,
        page: u64,
        f: impl FnOnce(&mut Self, Page) -> String,
    ) -> String {
        match self.access(slot, page) {
            Ok(p) => f(self, p),
            Err(s) => s,
        }
    }

    fn children(&self, secs: Page) -> usize {
        self.epcm
            .iter()
            .filter(|e| matches!(e, Epcm::Valid { secs: Some(s), .. } if *s == secs))
            .count()
    }

    fn threads(&self, secs: Page) -> usize {
        self.epcm
            .iter()
            .filter(|e| {
                matches!(e, Epcm::Valid { kind: Kind::Tcs, secs: Some(s), busy: true, .. } if *s == secs)
            })
            .count()
    }

    fn is_secs(&self, p: Page) -> bool {
        matches!(
            self.epcm[p],
            Epcm::Valid {
                kind: Kind::Secs,
                ..
            }
        )
    }

    fn valid(kind: Kind, secs: Option<Page>) -> Epcm {
        Epcm::Valid {
            kind,
            secs,
            initialized: false,
            busy: false,
        }
    }

    fn ecreate(&mut self, p: Page) -> String {
        if self.epcm[p] != Epcm::Invalid {
            return "#PF".into();
        }
        self.epcm[p] = Self::valid(Kind::Secs, None);
        "ok".into()
    }

    fn epa(&mut self, p: Page) -> String {
        if self.epcm[p] != Epcm::Invalid {
            return "#PF".into();
        }
        self.epcm[p] = Self::valid(Kind::Va, None);
        "ok".into()
    }

    fn eadd(&mut self, p: Page, secs: Page, kind: Kind) -> String {
        if self.epcm[p] != Epcm::Invalid || !self.is_secs(secs) {
            return "#PF".into();
        }
        if let Epcm::Valid {
            initialized: true, ..
        } = self.epcm[secs]
        {
            return "#GP".into();
        }
        self.epcm[p] = Self::valid(kind, Some(secs));
        "ok".into()
    }

    fn einit(&mut self, p: Page) -> String {
        match &mut self.epcm[p] {
            Epcm::Valid {
                kind: Kind::Secs,
                initialized,
                ..
            } => {
                if *initialized {
                    return "#GP".into();
                }
                *initialized = true;
                "ok".into()
            }
            _ => "#PF".into(),
        }
    }

    fn eenter(&mut self, p: Page) -> String {
        let Epcm::Valid {
            kind: Kind::Tcs,
            secs: Some(s),
            busy,
            ..
        } = self.epcm[p]
        else {
            return "#PF".into();
        };
        let Epcm::Valid { initialized, .. } = self.epcm[s] else {
            return "#PF".into();
        };
        if !initialized || busy {
            return "#GP".into();
        }
        if let Epcm::Valid { busy, .. } = &mut self.epcm[p] {
            *busy = true;
        }
        "ok".into()
    }

    fn eexit(&mut self, p: Page) -> String {
        match &mut self.epcm[p] {
            Epcm::Valid {
                kind: Kind::Tcs,
                busy,
                ..
            } if *busy => {
                *busy = false;
                "ok".into()
            }
            _ => "#UD".into(),
        }
    }

    /// docs/SEMANTICS.md §3, one thread: rule 2 (a concurrent leaf) cannot happen here.
    fn eremove(&mut self, p: Page) -> Result<String, String> {
        match self.epcm[p] {
            Epcm::Invalid => Ok("ok".into()),
            Epcm::Valid { kind: Kind::Va, .. } => {
                self.epcm[p] = Epcm::Invalid;
                Ok("ok".into())
            }
            Epcm::Valid {
                kind: Kind::Secs, ..
            } => {
                if self.children(p) > 0 {
                    return Err("SGX_CHILD_PRESENT".into());
                }
                self.epcm[p] = Epcm::Invalid;
                Ok("ok".into())
            }
            Epcm::Valid { secs, .. } => {
                let secs = secs.expect("a child has a SECS");
                if self.threads(secs) > 0 {
                    return Err("SGX_ENCLAVE_ACT".into());
                }
                self.epcm[p] = Epcm::Invalid;
                Ok("ok".into())
            }
        }
    }

    fn ioctl(&mut self, slot: usize, request: u32, arg: u64) -> Result<u64, &'static str> {
        if request == 0x5450 || request == 0x5451 {
            return Ok(0);
        }
        if self.kernel < (5, 16) || request != REMOVE_ALL {
            return Err("ENOTTY");
        }
        if arg != 0 {
            return Err("EINVAL");
        }
        self.remove_all(slot)
    }

    /// docs/SEMANTICS.md §2 REMOVE_ALL.
    fn remove_all(&mut self, slot: usize) -> Result<u64, &'static str> {
        let pages: Vec<Page> = self.fds[slot]
            .as_ref()
            .map(|i| i.pages.values().copied().collect())
            .unwrap_or_default();
        let mut failures = 0;
        for p in pages {
            match self.eremove(p) {
                Ok(_) => {}
                Err(e) if e == "SGX_CHILD_PRESENT" => failures += 1,
                Err(_) => return Err("EBUSY"),
            }
        }
        Ok(failures)
    }

    /// docs/SEMANTICS.md §2 release.
    fn release(&mut self, inst: Instance) {
        let mut left = Vec::new();
        for (_, p) in inst.pages {
            if self.eremove(p).is_ok() {
                self.free_page(p);
            } else {
                left.push(p);
            }
        }
        let mut secs_pages = Vec::new();
        for p in left {
            if self.eremove(p).is_ok() {
                self.free_page(p);
            } else {
                secs_pages.push(p);
            }
        }
        if self.fixes.has(KernelFix::ZombieRetry) {
            // Own SECS pages listed first, then walks until one frees nothing.
            self.zombies.append(&mut secs_pages);
            while self.walk_zombies() {}
        } else {
            for z in std::mem::take(&mut self.zombies) {
                if self.eremove(z).is_ok() {
                    self.free_page(z);
                } else {
                    secs_pages.push(z);
                }
            }
            self.zombies = secs_pages;
        }
        self.user_gone();
    }

    /// One walk of the zombie list in order; whether it freed a page.
    fn walk_zombies(&mut self) -> bool {
        let before = self.zombies.len();
        for z in std::mem::take(&mut self.zombies) {
            if self.eremove(z).is_ok() {
                self.free_page(z);
            } else {
                self.zombies.push(z);
            }
        }
        self.zombies.len() != before
    }

    /// docs/SEMANTICS.md §4: round 1, round 2, EBUSY retried three times (no vCPU to stop
    /// in a script), ENOTTY → recreate every instance in place.
    fn reset(&mut self, names: &[String]) -> String {
        let mut slots = Vec::new();
        for n in names {
            let s = self.names[n];
            if self.fds[s].is_none() {
                return "EBADF".into();
            }
            if !slots.contains(&s) {
                slots.push(s);
            }
        }
        let call = |r: &mut Self, s: usize| {
            let mut answer = r.ioctl(s, REMOVE_ALL, 0);
            for _ in 0..3 {
                if answer != Err("EBUSY") {
                    break;
                }
                answer = r.ioctl(s, REMOVE_ALL, 0);
            }
            answer
        };
        let mut round1 = Vec::new();
        for &s in &slots {
            match call(self, s) {
                Ok(n) => round1.push(n),
                Err("ENOTTY") => {
                    for &s in &slots {
                        let old = self.fds[s].take().expect("checked above");
                        self.fds[s] = Some(Instance {
                            pages: BTreeMap::new(),
                            maps: old.maps.clone(),
                        });
                        self.release(old);
                    }
                    return "ok".into();
                }
                Err(e) => return e.into(),
            }
        }
        for (&s, n) in slots.iter().zip(round1) {
            if n != 0 {
                match call(self, s) {
                    Ok(0) => {}
                    Ok(_) => return "SECS_LEFT".into(),
                    Err(e) => return e.into(),
                }
            }
        }
        "ok".into()
    }
}
