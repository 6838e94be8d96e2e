//! `vepc`: the scenario runner, the demo, and (later) the host tools.

mod demo;
mod sim;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SGX virtual EPC (/dev/sgx_vepc): a faithful model, and tools around it.
#[derive(Debug, Parser)]
#[command(name = "vepc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a scenario script (SCRIPT.md) against the model.
    Sim(sim::Args),
    /// A guest reboot on the built-in model, told step by step.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Sim(args) => sim::main(&args),
        Cmd::Demo(args) => demo::main(&args),
    }
}

/// Prints one line to stdout, ignoring a closed pipe (`vepc sim x | head`).
fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}
