//! What the shim costs a real VMM: QEMU's start-up with 96 MiB of preallocated EPC on
//! the shim (every page a first touch through userfaultfd, or eager), against the same
//! QEMU preallocating 96 MiB of plain shared memfd memory, run side by side.
//!
//! `cargo bench -p vepc-preload --bench qemu_start [-- ROUNDS]`; needs
//! `qemu-system-x86_64`. The time is from spawning QEMU to its QMP greeting, which it
//! sends once the machine (and so every backend's prealloc) is set up.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KINDS: [&str; 3] = ["memfd (baseline)", "shim, userfaultfd", "shim, eager"];

fn start(kind: usize, dir: &common::Scratch) -> Duration {
    let qmp = dir.path.join(format!("qmp-{kind}.sock"));
    let _ = std::fs::remove_file(&qmp);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-display",
        "none",
        "-S",
        "-m",
        "256M",
        "-accel",
        "kvm",
    ])
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp.display()))
    .stderr(Stdio::null());
    if kind == 0 {
        cmd.args([
            "-object",
            "memory-backend-memfd,id=m0,size=64M,prealloc=on,share=on",
        ])
        .args([
            "-object",
            "memory-backend-memfd,id=m1,size=32M,prealloc=on,share=on",
        ])
        .args(["-M", "q35"]);
    } else {
        cmd.env("LD_PRELOAD", common::shim_path())
            .env(
                "VEPC_FAULTS",
                if kind == 1 { "userfaultfd" } else { "eager" },
            )
            .args(["-object", "memory-backend-epc,id=m0,size=64M,prealloc=on"])
            .args(["-object", "memory-backend-epc,id=m1,size=32M,prealloc=on"])
            .args([
                "-M",
                "q35,sgx-epc.0.memdev=m0,sgx-epc.0.node=0,sgx-epc.1.memdev=m1,sgx-epc.1.node=0",
            ]);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("start QEMU");
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&qmp) {
            break s;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("QMP greeting");
    let took = t0.elapsed();
    let mut w = stream;
    let _ = w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n");
    // Read until QEMU closes the socket, so `quit` is not lost.
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
    let _ = child.wait();
    took
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let dir = common::Scratch::new("bench");
    let mut ms: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    // Interleaved, so a slow spell of the machine hits every kind alike.
    for _ in 0..rounds {
        for (k, v) in ms.iter_mut().enumerate() {
            v.push(start(k, &dir).as_secs_f64() * 1e3);
        }
    }
    let base = median(&mut ms[0].clone());
    println!("QEMU start to QMP greeting, 64M + 32M prealloc, {rounds} rounds, medians:");
    for (k, v) in ms.iter_mut().enumerate() {
        let m = median(v);
        let per_touch_us = (m - base) * 1e3 / 24_576.0;
        println!(
            "  {:20} {m:8.1} ms  (min {:7.1}, max {:7.1})  {:5.2}x baseline  {per_touch_us:+6.1} us per page",
            KINDS[k],
            v[0],
            v[v.len() - 1],
            m / base
        );
    }
}
