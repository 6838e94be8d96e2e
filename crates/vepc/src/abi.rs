//! The user/kernel ABI of SGX, as `arch/x86/include/uapi/asm/sgx.h`, `asm/ioctl.h`
//! and the SDM define it: ioctl request numbers, ENCLS return codes, the kernel's
//! encoding of a fault inside ENCLS, and the errno values the driver answers with.
//!
//! Every request number is computed from the `_IOC` formula rather than written as a
//! literal, so a typo in a size or a direction cannot hide; the tests pin the results.

use std::fmt;

/// `SGX_MAGIC`, the ioctl type byte of every SGX request.
pub const SGX_MAGIC: u8 = 0xA4;

/// Size of an EPC page (and of the x86 base page), in bytes.
pub const PAGE_SIZE: u64 = 4096;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_SIZEMASK: usize = (1 << 14) - 1;

/// `_IOC_NONE`: no data transferred.
pub const IOC_NONE: u32 = 0;
/// `_IOC_WRITE`: user space writes, the kernel reads.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the kernel writes, user space reads.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` from `include/uapi/asm-generic/ioctl.h`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size <= IOC_SIZEMASK, "ioctl argument too large for _IOC");
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IO(type, nr)`.
pub const fn io(ty: u8, nr: u8) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOW(type, nr, T)`.
pub const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// `_IOWR(type, nr, T)`.
pub const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}

/// `SGX_IOC_VEPC_REMOVE_ALL` (`/dev/sgx_vepc`, Linux 5.16): EREMOVE every page of the
/// instance. `_IO`, so it takes no argument, and the driver insists the argument is 0.
pub const SGX_IOC_VEPC_REMOVE_ALL: u32 = io(SGX_MAGIC, 0x04);
/// `SGX_ENCLS_FAULT_FLAG` (`arch/x86/kernel/cpu/sgx/encls.h`): set in an ENCLS return
/// value when the instruction faulted; the low bits are then the trap number.
pub const SGX_ENCLS_FAULT_FLAG: i32 = 0x4000_0000;

/// An ENCLS return code (SDM Vol. 3D, "Error codes"): the ones EREMOVE answers with,
/// and the others docs/SEMANTICS.md §3 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum SgxCode {
    /// EPC page conflict (another ENCLS on the page).
    EpcPageConflict = 7,
    /// ETRACK not done before EWB.
    NotTracked = 11,
    /// A SECS still has child pages: EREMOVE of it must wait for them.
    ChildPresent = 13,
    /// A logical processor is executing inside the page's enclave.
    EnclaveAct = 14,
    /// EINIT's token is not valid.
    InvalidEinittoken = 16,
    /// EUPDATESVN: the random number generator had no entropy.
    InsufficientEntropy = 29,
    /// EUPDATESVN: the EPC is not empty (some EPCM entry is still valid).
    EpcNotReady = 30,
    /// EUPDATESVN succeeded, but the loaded microcode's SVN is not newer than CPUSVN.
    NoUpdate = 31,
    /// An unmasked event interrupted EINIT.
    UnmaskedEvent = 128,
}

impl SgxCode {
    /// The SDM's name, as the kernel spells it (`SGX_CHILD_PRESENT`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::EpcPageConflict => "SGX_EPC_PAGE_CONFLICT",
            Self::NotTracked => "SGX_NOT_TRACKED",
            Self::ChildPresent => "SGX_CHILD_PRESENT",
            Self::EnclaveAct => "SGX_ENCLAVE_ACT",
            Self::InvalidEinittoken => "SGX_INVALID_EINITTOKEN",
            Self::InsufficientEntropy => "SGX_INSUFFICIENT_ENTROPY",
            Self::EpcNotReady => "SGX_EPC_NOT_READY",
            Self::NoUpdate => "SGX_NO_UPDATE",
            Self::UnmaskedEvent => "SGX_UNMASKED_EVENT",
        }
    }
}

/// An exception raised by an ENCLS/ENCLU leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Trap {
    /// `#UD` (6): e.g. EEXIT outside enclave mode.
    Ud = 6,
    /// `#GP(0)` (13): misaligned operand, or a concurrency conflict.
    Gp = 13,
    /// `#PF` (14): the operand is not an EPC page, or not one of the right kind.
    Pf = 14,
}

impl Trap {
    /// The mnemonic, `#GP`, `#PF`, `#UD`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ud => "#UD",
            Self::Gp => "#GP",
            Self::Pf => "#PF",
        }
    }
}

/// Why an ENCLS leaf did not succeed: an SDM error code in RAX, or a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EnclsError {
    /// The leaf ran and returned this code (ZF set).
    #[error("{}", .0.name())]
    Code(SgxCode),
    /// The leaf faulted.
    #[error("{}", .0.name())]
    Fault(Trap),
}

impl EnclsError {
    /// `#GP(0)`.
    pub const GP: Self = Self::Fault(Trap::Gp);
    /// `#PF`.
    pub const PF: Self = Self::Fault(Trap::Pf);
    /// `#UD`.
    pub const UD: Self = Self::Fault(Trap::Ud);
    /// `SGX_CHILD_PRESENT`.
    pub const CHILD_PRESENT: Self = Self::Code(SgxCode::ChildPresent);
    /// `SGX_ENCLAVE_ACT`.
    pub const ENCLAVE_ACT: Self = Self::Code(SgxCode::EnclaveAct);

    /// The value the kernel's `__encls_ret_*` wrappers hand back: the SDM code, or
    /// `trapnr | SGX_ENCLS_FAULT_FLAG` for a fault. 13 is both `SGX_CHILD_PRESENT`
    /// and the #GP trap number: only bit 30 tells them apart.
    pub const fn kernel_ret(self) -> i32 {
        match self {
            Self::Code(c) => c as i32,
            Self::Fault(t) => t as i32 | SGX_ENCLS_FAULT_FLAG,
        }
    }

    /// `encls_faulted(ret)`.
    pub const fn faulted(self) -> bool {
        matches!(self, Self::Fault(_))
    }

    /// The name printed in scenario results.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Code(c) => c.name(),
            Self::Fault(t) => t.name(),
        }
    }
}

/// An errno value (x86-64 Linux numbering). The named constants are the ones the
/// driver and the calls around it answer with; any other number the kernel returns is
/// kept as it came.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident = $n:literal),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Self = Self($n);
            )*

            /// The symbolic name, if this is one of the named values.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($n => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// The named value spelled `name` (`"EBUSY"`), if it is one of them.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($name) => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, ENXIO = 6, EBADF = 9, EAGAIN = 11,
    ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, EXDEV = 18,
    ENODEV = 19, ENOTDIR = 20, EISDIR = 21, EINVAL = 22, EMFILE = 24, ENOTTY = 25,
    EFBIG = 27, ESPIPE = 29, ENOSYS = 38, EOVERFLOW = 75, EOPNOTSUPP = 95,
}

impl Errno {
    /// The errno with this raw number.
    pub const fn from_raw(raw: i32) -> Self {
        Self(raw)
    }

    /// The raw errno number.
    pub const fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

/// A signal delivered to a thread that touched guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Signal {
    /// The page could not be backed by EPC (`VM_FAULT_SIGBUS`): `SIGBUS` with
    /// `BUS_ADRERR` at the faulting address.
    #[error("SIGBUS")]
    Sigbus,
    /// The access consumed a poisoned EPC page: the machine check ends in
    /// `force_sig(SIGBUS)` (`arch_memory_failure` since 5.17, `kill_me_now` before),
    /// so `si_code` is `SI_KERNEL` and there is no address (not `BUS_MCEERR_AR`).
    #[error("SIGBUS/SI_KERNEL")]
    SigbusKernel,
    /// The address is outside any mapping.
    #[error("SIGSEGV")]
    Sigsegv,
}

/// Why an access to guest memory did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FaultError {
    /// The thread got a signal.
    #[error(transparent)]
    Signal(#[from] Signal),
    /// The fault answers `VM_FAULT_RETRY` for ever: no free EPC page, pages that ksgxd
    /// could reclaim, and ksgxd asleep (`sgx_alloc_epc_page` wakes it only while
    /// `sgx_nr_free_pages` is below `SGX_NR_LOW_PAGES`). The access spins in the fault
    /// until another EPC user frees or reclaims a page.
    #[error("HANG")]
    Hang,
}

/// A proposed fix to Linux's SGX driver that the model can run on top of a version:
/// the fixes docs/findings.md proposes for what the model found (one page each under
/// docs/findings/). Named in scripts, `VEPC_KERNEL` and `--kernel` after the version:
/// `6.18+poison-count+zombie-retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum KernelFix {
    /// `sgx_nr_free_pages` counts only pages on the free lists: `sgx_free_epc_page`
    /// adds none for a page it puts on the poison list, and `arch_memory_failure`
    /// takes one off for a free page it moves there
    /// (docs/findings/poison-count.md).
    PoisonCount,
    /// `sgx_vepc_release` puts its own SECS pages on the zombie list before it
    /// retries the list, under the same lock, so that two releases at once cannot
    /// leave a SECS behind that no later retry sees (docs/findings/zombie-secs.md).
    ZombieRetry,
    /// The first SGX user (6.19+) retries the zombie list before EUPDATESVN: with no
    /// users left, every zombie's children are gone (docs/findings/zombie-secs.md).
    ZombieDrain,
}

impl KernelFix {
    /// Every fix, in the order they are printed.
    pub const ALL: [Self; 3] = [Self::PoisonCount, Self::ZombieRetry, Self::ZombieDrain];

    /// The name scripts use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PoisonCount => "poison-count",
            Self::ZombieRetry => "zombie-retry",
            Self::ZombieDrain => "zombie-drain",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The fix named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A Linux kernel version, for the behaviours that changed over time, with any
/// proposed fixes ([`KernelFix`]) the model runs on top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct KernelVersion {
    /// Major number.
    pub major: u16,
    /// Minor number.
    pub minor: u16,
    /// The [`KernelFix`]es applied, one bit each.
    fixes: u8,
}

impl KernelVersion {
    /// Creates `major.minor`, without fixes.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self {
            major,
            minor,
            fixes: 0,
        }
    }

    /// 5.13: `/dev/sgx_vepc` appears (virtual EPC for KVM guests).
    pub const VEPC: Self = Self::new(5, 13);
    /// 5.16: `SGX_IOC_VEPC_REMOVE_ALL`.
    pub const REMOVE_ALL: Self = Self::new(5, 16);
    /// 5.17: `arch_memory_failure`: a poisoned EPC page is kept off the free lists
    /// (Tony Luck, "x86/sgx: Hook arch_memory_failure() into mainline code").
    pub const MEMORY_FAILURE: Self = Self::new(5, 17);
    /// 6.16: `arch_memory_failure` also takes a poisoned page in use off the
    /// reclaimer's list (`sgx_unmark_page_reclaimable`; ed16618c380c, "x86/sgx:
    /// Prevent attempts to reclaim poisoned pages", Andrew Zaborowski, 2025,
    /// CVE-2025-38334; backported to the stable kernels too, from 6.1.142 on).
    pub const UNMARK_POISONED: Self = Self::new(6, 16);
    /// 6.19: opening an SGX device counts a user; the first user runs EUPDATESVN.
    pub const EUPDATESVN: Self = Self::new(6, 19);
    /// What the model behaves like unless told otherwise.
    pub const DEFAULT: Self = Self::new(6, 18);

    /// The same version with `fix` applied too.
    #[must_use]
    pub const fn with(self, fix: KernelFix) -> Self {
        Self {
            fixes: self.fixes | fix.bit(),
            ..self
        }
    }

    /// The same version with no fixes.
    #[must_use]
    pub const fn unfixed(self) -> Self {
        Self::new(self.major, self.minor)
    }

    /// Whether `fix` is applied.
    pub const fn has(self, fix: KernelFix) -> bool {
        self.fixes & fix.bit() != 0
    }

    /// The fixes applied, in [`KernelFix::ALL`] order.
    pub fn fixes(self) -> impl Iterator<Item = KernelFix> {
        KernelFix::ALL.into_iter().filter(move |f| self.has(*f))
    }

    /// Whether `/dev/sgx_vepc` exists on this kernel.
    pub fn has_vepc(self) -> bool {
        self.unfixed() >= Self::VEPC
    }

    /// Whether this kernel answers `SGX_IOC_VEPC_REMOVE_ALL`.
    pub fn has_remove_all(self) -> bool {
        self.unfixed() >= Self::REMOVE_ALL
    }

    /// Whether this kernel isolates poisoned EPC pages (`arch_memory_failure`).
    pub fn isolates_poison(self) -> bool {
        self.unfixed() >= Self::MEMORY_FAILURE
    }

    /// Whether `arch_memory_failure` takes a poisoned page in use off the
    /// reclaimer's list.
    pub fn unmarks_poisoned(self) -> bool {
        self.unfixed() >= Self::UNMARK_POISONED
    }

    /// Whether this kernel counts SGX users and runs EUPDATESVN at the first.
    pub fn counts_sgx_users(self) -> bool {
        self.unfixed() >= Self::EUPDATESVN
    }

    /// Parses `MAJOR.MINOR` or `MAJOR.MINOR.PATCH[-extra]` (as `uname -r` prints it),
    /// without fixes: what a host's kernel release says.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self::new(major, minor))
    }

    /// Parses a version as [`parse`](Self::parse) does, then `+FIX` for each
    /// [`KernelFix`] to run on top of it: `6.18+poison-count+zombie-retry`. What
    /// scripts, `VEPC_KERNEL` and `--kernel` accept; the error says what is wrong.
    pub fn parse_with_fixes(s: &str) -> Result<Self, String> {
        let mut parts = s.split('+');
        let version = parts.next().unwrap_or_default();
        let mut v = Self::parse(version)
            .ok_or_else(|| format!("expected a VERSION such as 5.15 or 6.18, found '{version}'"))?;
        for name in parts {
            let fix = KernelFix::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = KernelFix::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown kernel fix '{name}' after '+' (known: {})",
                    known.join(", ")
                )
            })?;
            v = v.with(fix);
        }
        Ok(v)
    }
}

impl fmt::Display for KernelVersion {
    /// `6.18`, then `+name` for each fix: what [`KernelVersion::parse_with_fixes`]
    /// reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        for fix in self.fixes() {
            write!(f, "+{}", fix.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(SGX_IOC_VEPC_REMOVE_ALL, 0xA404);
        // _IOW and _IOWR, as the enclave device's requests are built.
        assert_eq!(iow(SGX_MAGIC, 0x00, 8), 0x4008_A400);
        assert_eq!(iowr(SGX_MAGIC, 0x01, 48), 0xC030_A401);
    }

    #[test]
    fn return_codes_have_the_sdm_numbers() {
        assert_eq!(SgxCode::ChildPresent as i32, 13);
        assert_eq!(SgxCode::EnclaveAct as i32, 14);
        assert_eq!(SgxCode::EpcPageConflict as i32, 7);
        assert_eq!(SgxCode::NotTracked as i32, 11);
        assert_eq!(SgxCode::InvalidEinittoken as i32, 16);
        assert_eq!(SgxCode::InsufficientEntropy as i32, 29);
        assert_eq!(SgxCode::EpcNotReady as i32, 30);
        assert_eq!(SgxCode::NoUpdate as i32, 31);
        assert_eq!(SgxCode::UnmaskedEvent as i32, 128);
    }

    #[test]
    fn faults_are_encoded_with_bit_30() {
        assert_eq!(EnclsError::GP.kernel_ret(), 0x4000_000D);
        assert_eq!(EnclsError::PF.kernel_ret(), 0x4000_000E);
        // 13 means SGX_CHILD_PRESENT without the flag and #GP with it.
        assert_eq!(EnclsError::CHILD_PRESENT.kernel_ret(), 13);
        assert_ne!(
            EnclsError::CHILD_PRESENT.kernel_ret(),
            EnclsError::GP.kernel_ret()
        );
        assert!(EnclsError::GP.faulted() && !EnclsError::CHILD_PRESENT.faulted());
    }

    #[test]
    fn errno_numbers_and_names() {
        assert_eq!(
            (Errno::ENOTTY.raw(), Errno::EBUSY.raw(), Errno::EINVAL.raw()),
            (25, 16, 22)
        );
        assert_eq!(Errno::from_raw(16), Errno::EBUSY);
        assert_eq!(Errno::EBUSY.to_string(), "EBUSY");
        assert_eq!(Errno::from_raw(1234).to_string(), "errno 1234");
    }

    #[test]
    fn kernel_versions_gate_the_features() {
        let v = |s| KernelVersion::parse(s).expect("valid version");
        assert!(!v("5.15").has_remove_all());
        assert!(v("5.16").has_remove_all());
        assert!(v("6.18.3-arch1").has_remove_all());
        assert!(!v("5.12").has_vepc());
        assert_eq!(KernelVersion::parse("five"), None);
        assert_eq!(KernelVersion::parse("5"), None);
    }

    #[test]
    fn fixes_ride_on_a_version_and_read_back() {
        let v = KernelVersion::parse_with_fixes("6.18+zombie-retry+poison-count")
            .expect("two known fixes");
        assert!(v.has(KernelFix::PoisonCount) && v.has(KernelFix::ZombieRetry));
        assert!(!v.has(KernelFix::ZombieDrain));
        assert_eq!(v.to_string(), "6.18+poison-count+zombie-retry");
        assert_eq!(KernelVersion::parse_with_fixes(&v.to_string()), Ok(v));
        assert_eq!(v.unfixed(), KernelVersion::DEFAULT);
        // A fix changes no version gate.
        assert!(v.has_remove_all() && !v.counts_sgx_users());
        assert!(
            KernelVersion::EUPDATESVN
                .with(KernelFix::ZombieDrain)
                .counts_sgx_users()
        );
        let e = KernelVersion::parse_with_fixes("6.18+poison-cnt").expect_err("a typo");
        assert!(e.contains("unknown kernel fix 'poison-cnt'") && e.contains("poison-count"));
        assert!(KernelVersion::parse_with_fixes("six").is_err());
        assert_eq!(
            KernelVersion::parse_with_fixes("6.18.3-arch1"),
            Ok(KernelVersion::DEFAULT)
        );
    }
}
