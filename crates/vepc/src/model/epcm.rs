//! The EPCM: the processor's per-page metadata, one packed 64-bit word per EPC page.
//!
//! ```text
//!  63                      32 31          8  7    6      5      4     3    2..0
//! +--------------------------+-------------+----+------+------+-----+-----+----+
//! | child: owning SECS page  | SECS:       |    | TCS: | IN_  | MOD | VA- | PT |
//! | SECS:  child count       | threads in  |    | busy | USE  |     | LID |    |
//! |                          | SECS: INIT (bit 6)        |      |     |     |    |
//! +--------------------------+-------------+----+------+------+-----+-----+----+
//! ```
//!
//! `IN_USE` is the model's stand-in for the processor's internal EPCM lock: a leaf
//! sets it for the instant it operates on the page, and another leaf that finds it
//! set takes `#GP`, as the SDM's "page being referenced by another SGX instruction"
//! check does. The packing keeps the whole EPCM at 8 bytes per page, so a terabyte
//! of EPC (2^28 pages) needs 2 GiB of model.

/// An EPC page: its index in the EPC, across all sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpcPage(pub u32);

impl EpcPage {
    /// The page's index as a `usize`, for the EPCM array.
    pub const fn idx(self) -> usize {
        self.0 as usize
    }
}

/// EPCM page type (`EPCM.PT`), with the SDM's encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    /// `PT_SECS`: an enclave's control structure.
    Secs = 0,
    /// `PT_TCS`: a thread control structure, the way into an enclave.
    Tcs = 1,
    /// `PT_REG`: an ordinary enclave page.
    Reg = 2,
    /// `PT_VA`: a version array; belongs to no enclave.
    Va = 3,
    /// `PT_TRIM`: a page being trimmed (SGX2 EMODT).
    Trim = 4,
}

impl PageType {
    const fn from_bits(bits: u64) -> Self {
        match bits {
            0 => Self::Secs,
            1 => Self::Tcs,
            2 => Self::Reg,
            3 => Self::Va,
            _ => Self::Trim,
        }
    }

    /// Whether a page of this type is a child of a SECS (TCS, REG, TRIM).
    pub const fn is_child(self) -> bool {
        matches!(self, Self::Tcs | Self::Reg | Self::Trim)
    }
}

const PT_MASK: u64 = 0b111;
const VALID: u64 = 1 << 3;
const MODIFIED: u64 = 1 << 4;
const IN_USE: u64 = 1 << 5;
/// On a TCS: a thread is inside the enclave through it. On a SECS: EINIT is done.
const FLAG6: u64 = 1 << 6;
const THREADS_SHIFT: u32 = 8;
const THREADS_MASK: u64 = 0xFF_FFFF << THREADS_SHIFT;
const HIGH_SHIFT: u32 = 32;

/// Most threads the model lets be inside one enclave at once.
pub const MAX_THREADS: u32 = 0xFF_FFFF;

/// One EPCM entry, unpacked on demand from its 64-bit word.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry(pub(crate) u64);

impl Entry {
    /// An invalid (uninitialized) page.
    pub const INVALID: Self = Self(0);

    /// A fresh SECS with no children, not initialized, nobody inside.
    pub const fn secs() -> Self {
        Self(VALID | PageType::Secs as u64)
    }

    /// A VA page.
    pub const fn va() -> Self {
        Self(VALID | PageType::Va as u64)
    }

    /// A child page of type `ty` belonging to the SECS at `secs`.
    pub const fn child(ty: PageType, secs: EpcPage) -> Self {
        Self(VALID | ty as u64 | ((secs.0 as u64) << HIGH_SHIFT))
    }

    /// `EPCM.VALID`.
    pub const fn valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// `EPCM.PT`. Meaningful only when [`valid`](Self::valid).
    pub const fn page_type(self) -> PageType {
        PageType::from_bits(self.0 & PT_MASK)
    }

    /// `EPCM.MODIFIED`.
    pub const fn modified(self) -> bool {
        self.0 & MODIFIED != 0
    }

    /// Whether a leaf is operating on this page right now.
    pub const fn in_use(self) -> bool {
        self.0 & IN_USE != 0
    }

    /// Whether this is a valid page of type `ty`.
    pub fn is(self, ty: PageType) -> bool {
        self.valid() && self.page_type() == ty
    }

    /// Whether this is a valid child (TCS/REG/TRIM) page.
    pub fn is_child(self) -> bool {
        self.valid() && self.page_type().is_child()
    }

    /// Child page: the SECS it belongs to (`EPCM.ENCLAVESECS`).
    pub const fn owner(self) -> EpcPage {
        EpcPage((self.0 >> HIGH_SHIFT) as u32)
    }

    /// SECS: the number of child pages.
    pub const fn children(self) -> u32 {
        (self.0 >> HIGH_SHIFT) as u32
    }

    /// SECS: the number of threads inside the enclave.
    pub const fn threads(self) -> u32 {
        ((self.0 & THREADS_MASK) >> THREADS_SHIFT) as u32
    }

    /// SECS: whether EINIT has run (`SECS.ATTRIBUTES.INIT`).
    pub const fn initialized(self) -> bool {
        self.0 & FLAG6 != 0
    }

    /// TCS: whether a thread is inside through it.
    pub const fn tcs_busy(self) -> bool {
        self.0 & FLAG6 != 0
    }

    pub(crate) const fn with_in_use(self) -> Self {
        Self(self.0 | IN_USE)
    }

    pub(crate) const fn without_in_use(self) -> Self {
        Self(self.0 & !IN_USE)
    }

    pub(crate) const fn with_children(self, n: u32) -> Self {
        Self((self.0 & 0xFFFF_FFFF) | ((n as u64) << HIGH_SHIFT))
    }

    pub(crate) const fn with_threads(self, n: u32) -> Self {
        Self((self.0 & !THREADS_MASK) | (((n as u64) << THREADS_SHIFT) & THREADS_MASK))
    }

    pub(crate) const fn with_flag6(self, on: bool) -> Self {
        if on {
            Self(self.0 | FLAG6)
        } else {
            Self(self.0 & !FLAG6)
        }
    }

    #[cfg(test)]
    pub(crate) const fn with_modified(self, on: bool) -> Self {
        if on {
            Self(self.0 | MODIFIED)
        } else {
            Self(self.0 & !MODIFIED)
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.valid() {
            return write!(
                f,
                "Entry(invalid{})",
                if self.in_use() { ", in use" } else { "" }
            );
        }
        let mut d = f.debug_struct("Entry");
        d.field("type", &self.page_type());
        match self.page_type() {
            PageType::Secs => {
                d.field("children", &self.children())
                    .field("threads", &self.threads())
                    .field("initialized", &self.initialized());
            }
            PageType::Va => {}
            ty => {
                d.field("owner", &self.owner().0);
                if ty == PageType::Tcs {
                    d.field("busy", &self.tcs_busy());
                }
                if ty == PageType::Trim {
                    d.field("modified", &self.modified());
                }
            }
        }
        d.field("in_use", &self.in_use()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let s = Entry::secs()
            .with_children(u32::MAX)
            .with_threads(MAX_THREADS)
            .with_flag6(true);
        assert!(s.is(PageType::Secs) && s.initialized());
        assert_eq!((s.children(), s.threads()), (u32::MAX, MAX_THREADS));
        assert!(!s.in_use() && !s.modified());
        let s = s.with_children(7).with_threads(2);
        assert_eq!((s.children(), s.threads()), (7, 2));
        assert!(s.initialized());

        let c = Entry::child(PageType::Tcs, EpcPage(u32::MAX - 1)).with_flag6(true);
        assert!(c.is_child() && c.tcs_busy());
        assert_eq!(c.owner(), EpcPage(u32::MAX - 1));
        assert!(c.with_in_use().in_use() && !c.with_in_use().without_in_use().in_use());
        assert!(!Entry::va().is_child() && Entry::va().is(PageType::Va));
        assert!(!Entry::INVALID.valid());
    }
}
