//! Reading the CPU's SGX leaves with CPUID.

use crate::probe::cpuid::{Regs, SgxCpu, decode};

/// How many leaf-0x12 sub-leaves to read at most (2 capability sub-leaves, then
/// sections: Linux reads up to 8 sections).
const MAX_SUBLEAVES: u32 = 2 + 8;

/// The CPU's SGX leaves, decoded; `None` on a non-x86-64 host.
pub fn sgx() -> Option<SgxCpu> {
    #[cfg(target_arch = "x86_64")]
    {
        let max_leaf = cpuid(0, 0).eax;
        let leaf7 = if max_leaf >= 7 {
            cpuid(7, 0)
        } else {
            Regs::default()
        };
        let mut leaf12 = Vec::new();
        if max_leaf >= 0x12 && leaf7.ebx & (1 << 2) != 0 {
            for sub in 0..MAX_SUBLEAVES {
                let r = cpuid(0x12, sub);
                leaf12.push(r);
                if sub >= 2 && r.eax & 0xF == 0 {
                    break;
                }
            }
        }
        Some(decode(leaf7, &leaf12))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn cpuid(leaf: u32, sub: u32) -> Regs {
    // SAFETY: CPUID exists on every x86-64 CPU and only reads. (Newer compilers declare
    // the intrinsic safe; older ones need this block.)
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, sub) };
    Regs::new(r.eax, r.ebx, r.ecx, r.edx)
}
