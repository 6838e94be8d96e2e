//! Whether a binary passes REMOVE_ALL's third argument on purpose, read from its
//! machine code (`objdump -d`, x86-64).
//!
//! `ioctl()` is variadic: a call written without a third argument still hands the
//! kernel whatever is in `%rdx`, and the driver fails anything but 0 with `EINVAL`.
//! A log can show that the value was 0 in every run; only the code can show whether
//! it is 0 by construction. Each call site that loads `SGX_IOC_VEPC_REMOVE_ALL`
//! (`0xa404`) into `%esi` and calls `ioctl` is followed back through its basic block
//! to the last write to `%rdx`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bounded::{self, BoundedError, Limits};

/// How `%rdx` gets its value at a REMOVE_ALL call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ThirdArg {
    /// Set to 0 in the call's block (`xor %edx,%edx`, `mov $0x0,%edx`): by design.
    Zeroed {
        /// The instruction that does it.
        by: String,
    },
    /// Set to something else in the call's block.
    Set {
        /// The instruction that does it.
        by: String,
    },
    /// Not written since the previous call or the start of the block: the value is
    /// whatever that left, 0 only by chance.
    Leftover {
        /// The instruction it is left over from (a call), or the block's start.
        from: String,
    },
}

/// One `ioctl(fd, SGX_IOC_VEPC_REMOVE_ALL, …)` call site.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CallSite {
    /// Address of the `call`.
    pub addr: u64,
    /// Where its third argument comes from.
    pub third: ThirdArg,
    /// The instruction after the call: what is done with the return value.
    pub then: String,
}

/// Why the machine code could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DisasmError {
    /// objdump is not installed or did not run.
    #[error("objdump could not run ({0}): install binutils")]
    NoObjdump(std::io::Error),
    /// objdump ran past its limits.
    #[error("objdump: {0}")]
    Bounded(BoundedError),
    /// objdump failed on the binary.
    #[error("objdump failed on {path}: {stderr}")]
    Failed {
        /// The binary.
        path: String,
        /// What objdump said.
        stderr: String,
    },
}

/// How long `objdump -d` may take on a QEMU binary, and how much it may print
/// (Debian 12's QEMU 7.2: 1 s and 55 MB).
const OBJDUMP_LIMITS: Limits = Limits {
    time: Duration::from_secs(120),
    bytes: 512 << 20,
};

/// The REMOVE_ALL call sites of `binary` (none: it never issues the ioctl this way).
pub fn remove_all_calls(binary: &Path) -> Result<Vec<CallSite>, DisasmError> {
    let out = bounded::output(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", "-M", "att"])
            .arg(binary),
        OBJDUMP_LIMITS,
    )
    .map_err(|e| match e {
        BoundedError::Start { err, .. } => DisasmError::NoObjdump(err),
        other => DisasmError::Bounded(other),
    })?;
    if !out.status.success() {
        return Err(DisasmError::Failed {
            path: binary.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(call_sites(&String::from_utf8_lossy(&out.stdout)))
}

/// One decoded line of `objdump -d`.
#[derive(Debug)]
struct Insn<'a> {
    addr: u64,
    mnemonic: &'a str,
    operands: &'a str,
    text: &'a str,
}

fn parse(listing: &str) -> Vec<Insn<'_>> {
    listing
        .lines()
        .filter_map(|line| {
            let (addr, rest) = line.split_once(":\t")?;
            let addr = u64::from_str_radix(addr.trim(), 16).ok()?;
            let text = rest.split(" #").next().unwrap_or(rest).trim();
            let (mnemonic, operands) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
            Some(Insn {
                addr,
                mnemonic,
                operands: operands.trim(),
                text,
            })
        })
        .collect()
}

/// The call sites in an `objdump -d` listing (AT&T syntax).
pub fn call_sites(listing: &str) -> Vec<CallSite> {
    let insns = parse(listing);
    // Every address a jump lands on starts a basic block.
    let targets: HashSet<u64> = insns
        .iter()
        .filter(|i| i.mnemonic.starts_with('j'))
        .filter_map(|i| {
            let target = i.operands.split_whitespace().next()?;
            u64::from_str_radix(target, 16).ok()
        })
        .collect();
    let mut sites = Vec::new();
    for (at, insn) in insns.iter().enumerate() {
        let loads_request = insn.mnemonic.starts_with("mov")
            && insn.operands.starts_with("$0xa404,")
            && matches!(last_operand(insn.operands), "%esi" | "%rsi");
        if !loads_request {
            continue;
        }
        let Some(call) = (at + 1..(at + 8).min(insns.len())).find(|&j| {
            insns[j].mnemonic.starts_with("call") && insns[j].operands.contains("ioctl")
        }) else {
            continue;
        };
        sites.push(CallSite {
            addr: insns[call].addr,
            third: third_arg(&insns[..call], &targets),
            then: insns.get(call + 1).map_or("", |i| i.text).to_owned(),
        });
    }
    sites
}

/// Walks back from just before a call to the last write to `%rdx` in its block.
fn third_arg(before: &[Insn<'_>], targets: &HashSet<u64>) -> ThirdArg {
    for insn in before.iter().rev() {
        if let Some(write) = rdx_write(insn) {
            return write;
        }
        if insn.mnemonic.starts_with("call") || insn.mnemonic.starts_with("jmp") {
            return ThirdArg::Leftover {
                from: format!("{:x}: {}", insn.addr, insn.text),
            };
        }
        if targets.contains(&insn.addr) {
            return ThirdArg::Leftover {
                from: format!("{:x}: the start of the call's basic block", insn.addr),
            };
        }
    }
    ThirdArg::Leftover {
        from: "the start of the listing".into(),
    }
}

const RDX: [&str; 5] = ["%rdx", "%edx", "%dx", "%dl", "%dh"];

/// Whether `insn` writes `%rdx`, and with what.
fn rdx_write(insn: &Insn<'_>) -> Option<ThirdArg> {
    let by = || format!("{:x}: {}", insn.addr, insn.text);
    let m = insn.mnemonic;
    // Instructions that write %rdx without naming it.
    let implicit = matches!(m, "cltd" | "cqto" | "cwtd" | "rdtsc" | "rdtscp" | "cpuid")
        || (matches!(
            m.trim_end_matches(['b', 'w', 'l', 'q']),
            "mul" | "div" | "idiv" | "imul"
        ) && !insn.operands.contains(','));
    if implicit {
        return Some(ThirdArg::Set { by: by() });
    }
    let dest = last_operand(insn.operands);
    let reads_only = ["cmp", "test", "bt", "push"]
        .iter()
        .any(|p| m.starts_with(p));
    if reads_only || !RDX.contains(&dest) {
        return None;
    }
    let first = insn.operands.split(',').next().unwrap_or("");
    let zeroed = (matches!(m, "xor" | "sub") && first == dest && matches!(dest, "%edx" | "%rdx"))
        || (m.starts_with("mov") && first == "$0x0" && matches!(dest, "%edx" | "%rdx"));
    Some(if zeroed {
        ThirdArg::Zeroed { by: by() }
    } else {
        ThirdArg::Set { by: by() }
    })
}

/// The destination of an AT&T instruction: its last operand, outside parentheses.
fn last_operand(operands: &str) -> &str {
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in operands.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => start = i + 1,
            _ => {}
        }
    }
    operands[start..].trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's QEMU 7.2.22 (stripped), `sgx_epc_reset`'s call.
    const STOCK: &str = "
  67a5aa:\tmov    (%rdx,%rax,8),%rax
  67a5ae:\tmov    %r12,%rdx
  67a5b1:\tmov    0xb0(%rax),%rdi
  67a5b8:\tcall   807e30 <object_dynamic_cast_assert@@Base>
  67a5bd:\tmov    %rax,%rdi
  67a5c0:\tcall   5e6e30 <host_memory_backend_get_memory@@Base>
  67a5c5:\tmov    %rax,%rdi
  67a5c8:\tcall   76c700 <memory_region_get_fd@@Base>
  67a5cd:\tmov    $0xa404,%esi
  67a5d2:\tmov    %eax,%edi
  67a5d4:\txor    %eax,%eax
  67a5d6:\tcall   407440 <ioctl@plt>
  67a5db:\tcmp    $0xffffffe7,%eax
";

    /// The same QEMU with contrib/qemu's patch.
    const PATCHED: &str = "
  4dfd79:\tcall   5ae180 <memory_region_get_fd>
  4dfd7e:\txor    %edx,%edx
  4dfd80:\tmov    $0xa404,%esi
  4dfd85:\tmov    %eax,%edi
  4dfd87:\txor    %eax,%eax
  4dfd89:\tcall   2c0a70 <ioctl@plt>
  4dfd8e:\ttest   %eax,%eax
";

    #[test]
    fn stock_qemu_leaves_the_argument_to_chance() {
        let sites = call_sites(STOCK);
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].addr, 0x67a5d6);
        assert_eq!(
            sites[0].third,
            ThirdArg::Leftover {
                from: "67a5c8: call   76c700 <memory_region_get_fd@@Base>".into()
            }
        );
        assert_eq!(sites[0].then, "cmp    $0xffffffe7,%eax");
    }

    #[test]
    fn patched_qemu_zeroes_it() {
        let sites = call_sites(PATCHED);
        assert_eq!(
            sites[0].third,
            ThirdArg::Zeroed {
                by: "4dfd7e: xor    %edx,%edx".into()
            }
        );
    }

    #[test]
    fn other_writes_and_block_starts_are_not_zero() {
        let set = "
  10:\tcall   5 <f>
  15:\tmov    %r12,%rdx
  18:\tmov    $0xa404,%esi
  1d:\tcall   9 <ioctl@plt>
";
        assert!(matches!(call_sites(set)[0].third, ThirdArg::Set { .. }));
        // A jump lands between the zeroing and the call: another path skips it.
        let joined = "
   0:\tjmp    18 <x>
  15:\txor    %edx,%edx
  18:\tmov    $0xa404,%esi
  1d:\tcall   9 <ioctl@plt>
";
        assert!(matches!(
            call_sites(joined)[0].third,
            ThirdArg::Leftover { .. }
        ));
        // Comparing %edx reads it; an address mode names it without writing it.
        let reads = "
  10:\tcall   5 <f>
  12:\tcmp    $0x1,%edx
  14:\tmov    (%rdx,%rax,8),%rax
  18:\tmov    $0xa404,%esi
  1d:\tcall   9 <ioctl@plt>
";
        assert!(matches!(
            call_sites(reads)[0].third,
            ThirdArg::Leftover { .. }
        ));
        assert!(
            call_sites("  0:\tmov    $0xa404,%esi\n").is_empty(),
            "no call"
        );
    }
}
