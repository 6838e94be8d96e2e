//! `vepc selftest`: on an SGX host, open `/dev/sgx_vepc`, map and populate N pages,
//! REMOVE_ALL (which must answer 0: no guest made enclaves), close, report.
//!
//! Exit 0: passed; 1: failed; 77 (the usual "skipped"): the host has no
//! `/dev/sgx_vepc`, so the test cannot run here.

use std::process::ExitCode;
use std::time::Instant;

use vepc::device::{MapOptions, SGX_VEPC_PATH, VepcError, VepcFd};

use crate::out;

/// Exit status when there is no device to test.
pub const EXIT_NO_DEVICE: u8 = 77;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many pages to map and fault in.
    #[arg(long, default_value_t = 256)]
    pages: usize,
    /// The device node to test.
    #[arg(long, default_value = SGX_VEPC_PATH)]
    device: String,
}

pub fn main(args: &Args) -> ExitCode {
    let t = Instant::now();
    let fd = match VepcFd::open_path(&args.device) {
        Ok(fd) => fd,
        Err(e @ (VepcError::NoDevice { .. } | VepcError::PermissionDenied { .. })) => {
            eprintln!(
                "vepc selftest: needs {} and cannot open it: {e}",
                args.device
            );
            return ExitCode::from(EXIT_NO_DEVICE);
        }
        Err(e) => return fail("open", &e),
    };
    let len = args.pages.saturating_mul(4096);
    let opts = MapOptions {
        populate: true,
        ..MapOptions::default()
    };
    let region = match fd.map(len, opts) {
        Ok(r) => r,
        Err(e) => return fail("mmap with MAP_POPULATE", &e),
    };
    out(&format!(
        "mapped and faulted in {} pages at {:#x}",
        args.pages,
        region.addr()
    ));
    match fd.remove_all() {
        Ok(0) => out("REMOVE_ALL -> 0, as it must with no enclaves"),
        Ok(n) => {
            eprintln!("vepc selftest: REMOVE_ALL answered {n}; with no enclaves it must be 0");
            return ExitCode::FAILURE;
        }
        Err(e) => return fail("REMOVE_ALL", &e),
    }
    drop(region);
    drop(fd);
    out(&format!("closed; selftest passed in {:?}", t.elapsed()));
    ExitCode::SUCCESS
}

fn fail(step: &str, e: &VepcError) -> ExitCode {
    eprintln!("vepc selftest: {step} failed: {e}");
    ExitCode::FAILURE
}
