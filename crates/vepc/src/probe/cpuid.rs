//! Decoding SGX's CPUID leaves (SDM Vol. 2A, CPUID; Vol. 3D, "Enumeration of SGX"):
//! leaf 7 for SGX and SGX_LC, leaf 0x12 for SGX1/SGX2 and each EPC section.
//!
//! The decoder takes registers, not the CPU, so it is tested on values recorded on
//! real SGX servers. Unknown EPC section property values are reported, not rejected:
//! tools that rejected them misread Ice Lake (property 2) and Sapphire Rapids (3).

/// One CPUID result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[allow(missing_docs)]
pub struct Regs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

impl Regs {
    /// Registers from a recording.
    pub const fn new(eax: u32, ebx: u32, ecx: u32, edx: u32) -> Self {
        Self { eax, ebx, ecx, edx }
    }
}

/// The protection an EPC section has (`CPUID.(EAX=12H,ECX=n≥2):ECX[3:0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SectionProperty {
    /// 1: confidentiality, integrity and replay protection (client and older server
    /// parts, with the Memory Encryption Engine).
    ConfidentialityIntegrity,
    /// 2: confidentiality only (Ice Lake server and later, TME-MK based; sizes up to
    /// 512 GiB per socket).
    ConfidentialityOnly,
    /// A value the SDM we know calls reserved (Sapphire Rapids reports 3). The
    /// section is still a section: the kernel ignores this field.
    Other(u8),
}

impl std::fmt::Display for SectionProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConfidentialityIntegrity => f.write_str("confidentiality + integrity"),
            Self::ConfidentialityOnly => f.write_str("confidentiality only"),
            Self::Other(v) => write!(f, "property {v} (newer than this decoder; accepted)"),
        }
    }
}

/// One EPC section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EpcSection {
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Its protection.
    pub property: SectionProperty,
}

/// What the CPU says about SGX.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SgxCpu {
    /// `CPUID.(EAX=07H,ECX=0):EBX[2]`.
    pub sgx: bool,
    /// `CPUID.(EAX=07H,ECX=0):ECX[30]`: flexible launch control, which KVM needs to
    /// offer SGX to guests.
    pub sgx_lc: bool,
    /// `CPUID.(EAX=12H,ECX=0):EAX[0]`.
    pub sgx1: bool,
    /// `CPUID.(EAX=12H,ECX=0):EAX[1]`.
    pub sgx2: bool,
    /// log2 of the largest enclave in 64-bit mode (`EDX[15:8]`).
    pub max_enclave_size_64_log2: u8,
    /// The EPC sections, in sub-leaf order (one or more per socket).
    pub sections: Vec<EpcSection>,
    /// Anything odd met while decoding.
    pub notes: Vec<String>,
}

impl SgxCpu {
    /// Total EPC in bytes.
    pub fn epc_bytes(&self) -> u64 {
        self.sections.iter().map(|s| s.size).sum()
    }
}

const SGX_BIT: u32 = 1 << 2;
const SGX_LC_BIT: u32 = 1 << 30;

/// How many leaf-0x12 sub-leaves to read at most (2 capability sub-leaves, then
/// sections: Linux reads up to 8 sections).
const MAX_SUBLEAVES: u32 = 2 + 8;

/// This CPU's SGX leaves, decoded; `None` on a CPU that is not x86-64.
pub fn read() -> Option<SgxCpu> {
    let cpuid =
        |leaf, sub| crate::sys::cpu::cpuid(leaf, sub).map(|[a, b, c, d]| Regs::new(a, b, c, d));
    let max_leaf = cpuid(0, 0)?.eax;
    let leaf7 = if max_leaf >= 7 {
        cpuid(7, 0)?
    } else {
        Regs::default()
    };
    let mut leaf12 = Vec::new();
    if max_leaf >= 0x12 && leaf7.ebx & SGX_BIT != 0 {
        for sub in 0..MAX_SUBLEAVES {
            let r = cpuid(0x12, sub)?;
            leaf12.push(r);
            if sub >= 2 && r.eax & 0xF == 0 {
                break;
            }
        }
    }
    Some(decode(leaf7, &leaf12))
}

/// Decodes leaf 7 sub-leaf 0 and the sub-leaves of leaf 0x12 (index = sub-leaf;
/// from 2 on, EPC sections until one of type 0).
pub fn decode(leaf7: Regs, leaf12: &[Regs]) -> SgxCpu {
    let mut cpu = SgxCpu {
        sgx: leaf7.ebx & SGX_BIT != 0,
        sgx_lc: leaf7.ecx & SGX_LC_BIT != 0,
        ..SgxCpu::default()
    };
    if !cpu.sgx {
        return cpu;
    }
    let Some(caps) = leaf12.first() else {
        cpu.notes.push("CPUID leaf 0x12 is not available".into());
        return cpu;
    };
    cpu.sgx1 = caps.eax & 1 != 0;
    cpu.sgx2 = caps.eax & 2 != 0;
    cpu.max_enclave_size_64_log2 = (caps.edx >> 8) as u8;
    for (n, r) in leaf12.iter().enumerate().skip(2) {
        match r.eax & 0xF {
            0 => break,
            1 => {}
            other => {
                // Linux stops at an unknown sub-leaf type too (sgx_page_cache_init).
                cpu.notes
                    .push(format!("sub-leaf {n}: unknown type {other}; stopped there"));
                break;
            }
        }
        let base = u64::from(r.eax & 0xFFFF_F000) | (u64::from(r.ebx & 0xF_FFFF) << 32);
        let size = u64::from(r.ecx & 0xFFFF_F000) | (u64::from(r.edx & 0xF_FFFF) << 32);
        let property = match (r.ecx & 0xF) as u8 {
            1 => SectionProperty::ConfidentialityIntegrity,
            2 => SectionProperty::ConfidentialityOnly,
            v => SectionProperty::Other(v),
        };
        cpu.sections.push(EpcSection {
            base,
            size,
            property,
        });
    }
    cpu
}
