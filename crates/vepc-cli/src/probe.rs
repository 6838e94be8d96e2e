//! `vepc probe [--json]`: can this host run SGX guests with reboot support?
//! Exit 0 when it can, 1 when not (with every reason). It also lists the processes
//! holding an SGX file (they block 6.19's EUPDATESVN); that list does not change the exit.

use std::process::ExitCode;

use vepc::probe::holders::{self, Holders};
use vepc::probe::{self, HostFacts, Verdict};

use crate::out;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    host: &'a HostFacts,
    holders: &'a Holders,
    verdict: &'a Verdict,
}

pub fn main(args: &Args) -> ExitCode {
    let facts = probe::gather();
    let verdict = probe::verdict(&facts);
    let holders = holders::scan_host();
    if args.json {
        let report = Report {
            host: &facts,
            holders: &holders,
            verdict: &verdict,
        };
        out(&serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
    } else {
        table(&facts);
        for line in holder_lines(&holders) {
            out(&line);
        }
        out(&verdict_line(&verdict));
    }
    if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn table(f: &HostFacts) {
    match &f.cpu {
        None => out("cpu       not x86-64"),
        Some(c) => {
            out(&format!(
                "cpu       SGX {}  SGX_LC {}  SGX1 {}  SGX2 {}",
                yes(c.sgx),
                yes(c.sgx_lc),
                yes(c.sgx1),
                yes(c.sgx2)
            ));
            for (i, s) in c.sections.iter().enumerate() {
                out(&format!(
                    "epc       section {i}: base {:#x}, {} ({})",
                    s.base,
                    gib(s.size),
                    s.property
                ));
            }
            for n in &c.notes {
                out(&format!("          note: {n}"));
            }
        }
    }
    for d in &f.devices {
        let line = if d.exists {
            format!(
                "{:<9} {}:{} {:04o}, this user can open it: {}",
                "device",
                d.owner.as_deref().unwrap_or("?"),
                d.group.as_deref().unwrap_or("?"),
                d.mode.unwrap_or(0),
                d.open_error
                    .as_deref()
                    .map_or("yes".into(), |e| format!("no ({e})"))
            )
        } else {
            "device    missing".to_string()
        };
        out(&format!("{line}  {}", d.path));
    }
    out(&format!(
        "kernel    {}  REMOVE_ALL (5.16+): {}",
        f.kernel_release,
        yes(f.kernel.is_some_and(|k| k.has_remove_all()))
    ));
    for n in &f.node_epc {
        out(&format!(
            "numa      node {}: {} of EPC",
            n.node,
            gib(n.bytes)
        ));
    }
    out(&match &f.kvm {
        Ok(v) => format!("kvm       /dev/kvm works (API {v})"),
        Err(e) => format!("kvm       {e}"),
    });
}

/// Who holds an SGX file: while anyone does, a 6.19+ kernel defers EUPDATESVN
/// (docs/SEMANTICS.md §7.3), so an operator applying a microcode update knows whom to stop.
fn holder_lines(h: &Holders) -> Vec<String> {
    let mut lines: Vec<String> = h
        .holders
        .iter()
        .map(|p| {
            let fds: Vec<String> = p.fds.iter().map(u32::to_string).collect();
            format!(
                "holder    pid {} ({}) holds {}: fds [{}], {} mapping(s)",
                p.pid,
                p.comm,
                p.path,
                fds.join(", "),
                p.mappings
            )
        })
        .collect();
    if lines.is_empty() {
        lines.push("holders   none: no process holds /dev/sgx_vepc or /dev/sgx_enclave".into());
    } else {
        lines.push(format!(
            "holders   {} process(es): EUPDATESVN (6.19+) waits until every one lets go",
            h.holders.len()
        ));
    }
    if h.unreadable > 0 {
        lines.push(format!(
            "holders   {} process(es) could not be read (run as root for the whole list)",
            h.unreadable
        ));
    }
    lines
}

fn verdict_line(v: &Verdict) -> String {
    if v.ok {
        "verdict   yes: this host can run SGX guests, with REMOVE_ALL for their reboots".into()
    } else {
        format!("verdict   no: {}", v.reasons.join("; "))
    }
}
