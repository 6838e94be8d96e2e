//! `vepc qemu-check`: runs a QEMU binary through every case of its SGX reset on the
//! model (`vepc_qemu::check`) and gives a verdict per case, for a QEMU developer or a
//! distribution packager checking a build.
//!
//! Exit status: 0 when every case passes, 1 when any shows a bug, 2 when it could not
//! run (no QEMU, no shim, a case that did not complete).

use std::path::PathBuf;
use std::process::ExitCode;

use vepc_qemu::check::{self, Outcome, Verdict};
use vepc_qemu::run;

use crate::out;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The QEMU to check. Default: qemu-system-x86_64 on PATH.
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// The shim to load. Default: $VEPC_PRELOAD_SO, else libvepc_preload.so beside
    /// this binary.
    #[arg(long)]
    shim: Option<PathBuf>,
    /// One JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

pub fn main(args: &Args) -> ExitCode {
    let qemu = match args.qemu.clone().or_else(run::qemu_on_path) {
        Some(q) => q,
        None => return cannot_run("no qemu-system-x86_64 on PATH: install it, or pass --qemu"),
    };
    let shim = match crate::preload::find_shim(args.shim.as_deref()) {
        Ok(s) => s,
        Err(e) => return cannot_run(&e),
    };
    let version = match run::version(&qemu) {
        Ok(v) => v,
        Err(e) => return cannot_run(&format!("cannot run {}: {e}", qemu.display())),
    };
    if !args.json {
        out(&format!(
            "{} ({version}), accel {}",
            qemu.display(),
            run::accel()
        ));
    }
    // A case that could not run (a QEMU that hangs until its time limit, or dies)
    // ends the check: the next would most likely wait as long.
    let mut outcomes: Vec<Outcome> = Vec::new();
    for case in check::CASES {
        let o = case.check(&qemu, &shim);
        if !args.json {
            print_outcome(&o);
        }
        let stop = matches!(o.verdict, Verdict::Error { .. });
        outcomes.push(o);
        if stop {
            break;
        }
    }
    let bugs: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.verdict.bug_shown().map(|_| o.case.name))
        .collect();
    let errors = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Error { .. }))
        .count();
    let status = if errors > 0 {
        "error"
    } else if bugs.is_empty() {
        "pass"
    } else {
        "bugs"
    };
    if args.json {
        print_json(&qemu, &version, status, &outcomes);
    } else {
        print_summary(&outcomes, &bugs, errors);
    }
    ExitCode::from(match status {
        "pass" => 0,
        "bugs" => 1,
        _ => 2,
    })
}

/// One JSON object: the QEMU, the overall status, the bugs, every case's verdict.
fn print_json(qemu: &std::path::Path, version: &str, status: &str, outcomes: &[Outcome]) {
    let cases: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(&o.verdict).unwrap_or_default();
            v["name"] = o.case.name.into();
            v["title"] = o.case.title.into();
            v["reach"] = o.case.reach.name().into();
            v["reach_why"] = o.case.reach.why().into();
            v
        })
        .collect();
    out(&serde_json::json!({
        "qemu": qemu.display().to_string(),
        "version": version,
        "accel": run::accel(),
        "status": status,
        "bugs": outcomes.iter().filter_map(|o| o.verdict.bug_shown()).collect::<Vec<_>>(),
        "cases": cases,
    })
    .to_string());
}

/// The report's last line.
fn print_summary(outcomes: &[Outcome], bugs: &[&str], errors: usize) {
    if errors > 0 {
        let left = check::CASES.len() - outcomes.len();
        out(&format!(
            "{errors} case(s) could not run{}",
            if left > 0 {
                format!("; the {left} after it were not tried")
            } else {
                String::new()
            }
        ));
    } else if bugs.is_empty() {
        out(&format!("all {} cases pass", outcomes.len()));
    } else {
        out(&format!(
            "{} of {} cases show a bug: {}",
            bugs.len(),
            outcomes.len(),
            bugs.join(", ")
        ));
    }
}

fn print_outcome(o: &Outcome) {
    let (tag, lines) = match &o.verdict {
        Verdict::Pass { evidence } => ("pass ", evidence.clone()),
        Verdict::Bug {
            bug,
            description,
            evidence,
        } => {
            let mut l = vec![format!("{}: {description}", bug.name())];
            l.extend(evidence.iter().cloned());
            ("BUG  ", l)
        }
        Verdict::Error { reason } => ("ERROR", vec![reason.clone()]),
    };
    out(&format!("{tag} {}: {}", o.case.name, o.case.title));
    out(&format!(
        "      {} with vCPUs paused: {}",
        o.case.reach.name(),
        o.case.reach.why()
    ));
    for l in lines {
        out(&format!("      {l}"));
    }
}

fn cannot_run(why: &str) -> ExitCode {
    eprintln!("vepc qemu-check: {why}");
    ExitCode::from(2)
}
