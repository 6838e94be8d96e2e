//! The process's effective capabilities, from `/proc/self/status`.

/// `CAP_IPC_LOCK`.
pub const IPC_LOCK: u32 = 14;
/// `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: u32 = 21;

/// Whether capability `bit` is in this process's effective set (`CapEff`).
pub fn has(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << bit) != 0)
}
