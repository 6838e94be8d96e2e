//! What the shim costs a real VMM: QEMU's start-up with preallocated EPC on the shim,
//! against the same QEMU preallocating the same amount of plain shared memfd memory,
//! run side by side (interleaved rounds, each starting with another kind, after one
//! warm-up round).
//!
//! `cargo bench -p vepc-preload --bench qemu_start [-- ROUNDS [SIZE ...]]`, sizes in
//! MiB or GiB (`1G 4G` by default); needs `qemu-system-x86_64` and `/dev/kvm`. The
//! time is from spawning QEMU to its QMP greeting, which it sends once the machine
//! (and so every backend's prealloc, and the start-up reset) is set up. Each size is
//! split into two sections, as a two-socket guest would have it.
//!
//! QEMU preallocates plain memory with `MADV_POPULATE_WRITE`, one call for the
//! whole range, but on an SGX host (and on the shim) that call answers `EINVAL` and
//! QEMU touches every page itself. The second baseline is memfd with that call
//! refused the same way (a five-line preload compiled here with `cc`; the row is
//! skipped without one), so the shim's rows can be compared on the same path.
//!
//! The pressure row gives the model an EPC only 8 MiB larger than the guest's and a
//! host enclave of a sixteenth of it built first (`VEPC_INJECT=host-enclave=...`): the
//! guest's last pages come from ksgxd writing the host enclave back, and the device is
//! exact from the second section on.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vepc_qemu::qmp::Qmp;

/// How the EPC is served: the baseline, the shim's three fault modes, and the
/// default mode with a host enclave competing for the EPC (the module's comment).
const KINDS: [(&str, Option<&str>, bool); 6] = [
    ("memfd (baseline)", None, false),
    ("memfd, touched", None, true),
    ("shim, auto", Some("auto"), false),
    ("shim, userfaultfd", Some("userfaultfd"), false),
    ("shim, eager", Some("eager"), false),
    ("shim, host pressure", Some("auto"), true),
];

/// A preload that refuses `MADV_POPULATE_WRITE` with `EINVAL`, as vEPC does; `None`
/// without a C compiler.
fn no_populate(dir: &common::Scratch) -> Option<std::path::PathBuf> {
    let src = dir.file(
        "no_populate.c",
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <errno.h>\n#include <stddef.h>\n\
         int madvise(void *a, size_t l, int advice) {\n\
         \tstatic int (*next)(void *, size_t, int);\n\
         \tif (advice == 23) { errno = EINVAL; return -1; } /* MADV_POPULATE_WRITE */\n\
         \tif (!next) next = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, \"madvise\");\n\
         \treturn next(a, l, advice);\n}\n",
    );
    let so = dir.path.join("no_populate.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .is_ok_and(|s| s.success());
    built.then_some(so)
}

fn start(
    kind: usize,
    total_mib: u64,
    dir: &common::Scratch,
    touched: Option<&std::path::Path>,
) -> Duration {
    let qmp_path = dir.path.join(format!("qmp-{kind}.sock"));
    let _ = std::fs::remove_file(&qmp_path);
    let (a, b) = (total_mib / 2, total_mib - total_mib / 2);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-display", "none", "-S", "-m", "256M"])
        .args(["-accel", "kvm"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match KINDS[kind].1 {
        None => {
            if KINDS[kind].2
                && let Some(so) = touched
            {
                cmd.env("LD_PRELOAD", so);
            }
            cmd.args([
                "-object",
                &format!("memory-backend-memfd,id=m0,size={a}M,prealloc=on,share=on"),
            ])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=m1,size={b}M,prealloc=on,share=on"),
            ])
            .args(["-M", "q35"]);
        }
        Some(faults) => {
            if KINDS[kind].2 {
                cmd.env("VEPC_EPC", format!("{}M,{}M", a + 4, b + 4))
                    .env("VEPC_INJECT", format!("host-enclave={}M", total_mib / 16));
            } else {
                cmd.env("VEPC_EPC", format!("{a}M,{b}M"));
            }
            cmd.env("LD_PRELOAD", common::shim_path())
                .env("VEPC_FAULTS", faults)
                .args([
                    "-object",
                    &format!("memory-backend-epc,id=m0,size={a}M,prealloc=on"),
                ])
                .args([
                    "-object",
                    &format!("memory-backend-epc,id=m1,size={b}M,prealloc=on"),
                ])
                .args([
                    "-M",
                    "q35,sgx-epc.0.memdev=m0,sgx-epc.0.node=0,sgx-epc.1.memdev=m1,sgx-epc.1.node=0",
                ]);
        }
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("start QEMU");
    let qmp = Qmp::connect(
        &qmp_path,
        &mut child,
        Duration::from_secs(300),
        Duration::from_secs(30),
    )
    .expect("QMP greeting");
    let took = t0.elapsed();
    let _ = qmp.quit();
    let _ = child.wait();
    took
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `1G` → 1024, `512M` → 512.
fn mib(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "G" | "g" => Some(n * 1024),
        "M" | "m" => Some(n),
        _ => None,
    }
}

fn main() {
    // Without QEMU or KVM there is nothing to measure: say so in one line.
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        println!(
            "qemu_start: skipped: qemu-system-x86_64 does not run here (apt-get install qemu-system-x86)"
        );
        return;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        println!("qemu_start: skipped: /dev/kvm cannot be opened");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let mut sizes: Vec<u64> = args.iter().filter_map(|a| mib(a)).collect();
    if sizes.is_empty() {
        sizes = vec![1024, 4096];
    }
    let dir = common::Scratch::new("bench");
    let touched = no_populate(&dir);
    for total in sizes {
        let mut ms: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
        // Interleaved, so a slow spell of the machine hits every kind alike.
        // Every first touch a round trip: about 20 us a page, minutes at 4 GiB.
        let skip = |k: usize| {
            (KINDS[k].1 == Some("userfaultfd") && total > 1024)
                || (KINDS[k].1.is_none() && KINDS[k].2 && touched.is_none())
        };
        // A warm-up round, not counted; then each round starts with another kind, so
        // the cost of running right after a large free (the host taking memory back)
        // falls on every kind alike.
        for r in 0..=rounds {
            for i in 0..KINDS.len() {
                let k = (i + r) % KINDS.len();
                if skip(k) {
                    continue;
                }
                let ms_taken = start(k, total, &dir, touched.as_deref()).as_secs_f64() * 1e3;
                if r > 0 {
                    ms[k].push(ms_taken);
                }
            }
        }
        let base = median(&mut ms[0].clone());
        // The touched baseline, where there is one: the shim's rows on the same path.
        let touched_base = (!skip(1)).then(|| median(&mut ms[1].clone()));
        let pages = total * 256;
        println!(
            "QEMU start to QMP greeting, {total} MiB of prealloc in two sections ({pages} first touches), {rounds} rounds, medians:"
        );
        for (k, v) in ms.iter_mut().enumerate() {
            if skip(k) {
                let why = if KINDS[k].1.is_none() {
                    "skipped: no C compiler for its preload"
                } else {
                    "skipped above 1 GiB (a round trip per page)"
                };
                println!("  {:20} {why}", KINDS[k].0);
                continue;
            }
            let m = median(v);
            let per_touch_us = (m - base) * 1e3 / pages as f64;
            let vs_touched =
                touched_base.map_or(String::new(), |t| format!("  {:5.2}x touched", m / t));
            println!(
                "  {:20} {m:8.1} ms  (min {:7.1}, max {:7.1})  {:5.2}x baseline{vs_touched}  {per_touch_us:+6.2} us per page",
                KINDS[k].0,
                v[0],
                v[v.len() - 1],
                m / base
            );
        }
    }
}
