//! CPUID.

/// `CPUID.(EAX=leaf, ECX=sub)`: `[eax, ebx, ecx, edx]`, or `None` on a CPU that is
/// not x86-64.
pub fn cpuid(leaf: u32, sub: u32) -> Option<[u32; 4]> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID exists on every x86-64 CPU and only reads. (Newer compilers
        // declare the intrinsic safe; older ones need this block.)
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid_count(leaf, sub) };
        Some([r.eax, r.ebx, r.ecx, r.edx])
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (leaf, sub);
        None
    }
}
