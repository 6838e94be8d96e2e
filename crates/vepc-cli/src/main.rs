//! `vepc`: the scenario runner, the demo, the host tools, and the LD_PRELOAD runner.

mod bench;
mod demo;
mod preload;
mod probe;
mod qemu_check;
mod selftest;
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
    /// Run a scenario script (docs/SCRIPT.md) against the model.
    Sim(sim::Args),
    /// A guest reboot on the built-in model, told step by step.
    Demo(demo::Args),
    /// A guest's whole EPC life at server scale: populate, reset, release.
    Bench(bench::Args),
    /// Can this host run SGX guests with reboot support? (exit 0 yes, 1 no)
    Probe(probe::Args),
    /// On an SGX host: open, map, populate, REMOVE_ALL, close (exit 77: no device).
    Selftest(selftest::Args),
    /// Run an unmodified program with the model as its /dev/sgx_vepc (LD_PRELOAD).
    Preload(preload::Args),
    /// Check a QEMU binary's SGX reset on the model, case by case (exit 0 all pass,
    /// 1 a bug, 2 could not run).
    QemuCheck(qemu_check::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Sim(args) => sim::main(&args),
        Cmd::Demo(args) => demo::main(&args),
        Cmd::Bench(args) => bench::main(&args),
        Cmd::Probe(args) => probe::main(&args),
        Cmd::Selftest(args) => selftest::main(&args),
        Cmd::Preload(args) => preload::main(&args),
        Cmd::QemuCheck(args) => qemu_check::main(&args),
    }
}

/// Prints one line to stdout, ignoring a closed pipe (`vepc sim x | head`).
fn out(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}
