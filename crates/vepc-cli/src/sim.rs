//! `vepc sim FILE [--json]`: run a scenario. Exit 0 when every `expect` held, 1 when
//! one did not, 2 when the script is not valid (nothing is run then).

use std::path::PathBuf;
use std::process::ExitCode;

use vepc::script;

use crate::out;

/// Exit status when an expectation failed.
const EXIT_MISMATCH: u8 = 1;
/// Exit status when the script is not valid or cannot be read.
const EXIT_INVALID: u8 = 2;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The script to run (`-` for standard input).
    file: PathBuf,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Also run the model's consistency check after every step; a failure exits 1.
    #[arg(long)]
    check: bool,
}

pub fn main(args: &Args) -> ExitCode {
    let name = script::escape(&args.file.display().to_string()).into_owned();
    // At most MAX_SCRIPT_BYTES are read: /dev/zero is refused, not read for ever.
    let src = if name == "-" {
        script::read_bounded(std::io::stdin().lock())
    } else {
        script::read_file(&args.file)
    };
    let src = match src {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vepc sim: cannot read {name}: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let report = match script::run(&src, args.check) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}:{}:{}: error: {}", e.line, e.col, e.msg);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    for o in &report.outcomes {
        if args.json {
            out(&serde_json::to_string(o).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
        } else {
            // The script's own text is shown, never sent to the terminal as is.
            let command = script::escape(&o.command);
            match &o.mismatch {
                None => out(&format!("{}: {command} -> {}", o.line, o.result)),
                Some(m) => out(&format!(
                    "{}: {command} -> FAILED: expected {}, line {} gave {}",
                    o.line,
                    script::escape(&m.expected),
                    m.of_line,
                    m.actual
                )),
            }
        }
    }
    for w in &report.warnings {
        eprintln!("vepc sim: {name}: kernel warning: {w}");
    }
    for problem in &report.inconsistencies {
        eprintln!("vepc sim: {name}: {problem}");
    }
    let failed: Vec<_> = report
        .mismatches()
        .map(|(o, _)| o.line.to_string())
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "vepc sim: {name}: {} expectation(s) failed, at line(s) {}",
            failed.len(),
            failed.join(", ")
        );
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_MISMATCH)
    }
}
