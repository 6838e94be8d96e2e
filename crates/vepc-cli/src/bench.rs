//! `vepc bench`: a guest's whole EPC life at server scale, on the model.
//!
//! Builds an EPC with the given sections, opens one vEPC instance per section (as QEMU
//! does per guest EPC section), populates every page as a guest would (enclaves of
//! many sizes, one in eight with its SECS in the next section, VA pages), runs the
//! reset protocol, and releases everything. Reports per phase the pages, wall time and
//! pages per second; peak memory and model bytes per EPC page; and what the EREMOVEs
//! would cost on hardware.
//!
//! With `--host-enclave SIZE`, a host enclave of that size is built first, through
//! `/dev/sgx_enclave`, before any guest page (docs/SEMANTICS.md §7.2). The guest's
//! faults then find the free pages taken, and ksgxd writes the host's pages back. The
//! report says what an operator sizing a host needs to know: how much of the guest's
//! EPC fitted beside that load, and what it cost in write-backs, ksgxd wake-ups and
//! faults retried.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use vepc::abi::{KernelVersion, PAGE_SIZE};
use vepc::device::ModelSection;
use vepc::driver::Device;
use vepc::model::{AddType, Epc, EpcPage};
use vepc::reset::{ResetOptions, Strategy, reset};

use crate::out;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// EPC section sizes, comma-separated (docs/SCRIPT.md SIZE syntax): 512G,512G is a
    /// 2-socket server with 1 TiB of EPC.
    #[arg(long, default_value = "64G,64G")]
    sections: String,
    /// Populate only this many pages in all (default: every page).
    #[arg(long)]
    populate: Option<u64>,
    /// What one EREMOVE costs on hardware, in nanoseconds, for the estimate (the
    /// kernel's report of about a minute for 128 GiB gives 1,800).
    #[arg(long, default_value_t = 1800)]
    eremove_ns: u64,
    /// Run the reset's first round on all instances at once.
    #[arg(long)]
    parallel: bool,
    /// One JSON object as the last line instead of the table.
    #[arg(long)]
    json: bool,
    /// Do not ask glibc for transparent huge pages (see `main`).
    #[arg(long)]
    small_pages: bool,
    /// Build a host enclave of this SIZE before the guest (docs/SCRIPT.md SIZE
    /// syntax), and report how much vEPC fits beside it and the write-backs it costs.
    #[arg(long, value_name = "SIZE")]
    host_enclave: Option<String>,
}

/// glibc's tunable that makes malloc advise transparent huge pages for its memory.
const HUGEPAGE_TUNABLE: &str = "glibc.malloc.hugetlb=1";

#[derive(Debug, Serialize)]
struct Phase {
    name: &'static str,
    pages: u64,
    wall_s: f64,
    pages_per_s: f64,
    /// EREMOVEs the phase ran, and what they would take on hardware.
    #[serde(skip_serializing_if = "Option::is_none")]
    eremoves: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hardware_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    sections: Vec<u64>,
    epc_pages: u64,
    populated_pages: u64,
    total_wall_s: f64,
    model_bytes: u64,
    model_bytes_per_page: f64,
    peak_rss_bytes: u64,
    eremove_ns: u64,
    hardware_s: f64,
    phases: Vec<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<HostLoad>,
}

/// The host enclave load beside the guest, and what the guest's faults cost it.
#[derive(Debug, Serialize)]
struct HostLoad {
    /// The enclave's size in pages (its SECS and VA pages not counted).
    enclave_pages: u64,
    /// Its pages in the EPC when the guest starts (the build itself may have written
    /// some back: a host enclave may be larger than the EPC), and after the guest's
    /// fault-in.
    resident_before: u64,
    resident_after: u64,
    /// The guest pages asked for, and those that got an EPC page (the rest: SIGBUS).
    wanted_pages: u64,
    fitted_pages: u64,
    /// During the guest's fault-in: pages ksgxd wrote back (EWB), times it was woken,
    /// vEPC faults retried.
    written_back: u64,
    ksgxd_wakeups: u64,
    fault_retries: u64,
}

/// Enclave sizes the guest cycles through, in pages (SECS included).
const ENCLAVE_SIZES: [u64; 6] = [8, 64, 512, 4096, 32_768, 262_144];
/// One page in this many is a VA page.
const VA_EVERY: u64 = 1024;
/// Pages faulted in per progress tick.
const TICK: u64 = 1 << 20;

pub fn main(args: &Args) -> ExitCode {
    // The model's big arrays (the EPCM, the page maps) are touched for the first time
    // during the run, 4 KiB at a time unless the kernel gives huge pages, which it does
    // here only when asked (THP in madvise mode). Measured on this project's machines
    // for 1 TiB: build 2.7-3.3 s with huge pages, 4.3-9.3 s without. glibc asks on
    // malloc's behalf when this tunable is set, and tunables are read at start: so
    // start again with it, once.
    if !args.small_pages && !hugepages_asked() {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let tunables = match std::env::var("GLIBC_TUNABLES") {
                Ok(t) if !t.is_empty() => format!("{t}:{HUGEPAGE_TUNABLE}"),
                _ => HUGEPAGE_TUNABLE.to_owned(),
            };
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("GLIBC_TUNABLES", tunables)
                .exec();
            // Only reached if exec failed: carry on with small pages.
            eprintln!("vepc bench: could not restart with huge pages ({err}); going on without");
        }
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vepc bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn phase(
    name: &'static str,
    pages: u64,
    wall: Duration,
    eremoves: Option<u64>,
    cost: u64,
) -> Phase {
    let wall_s = wall.as_secs_f64();
    Phase {
        name,
        pages,
        wall_s,
        pages_per_s: if wall_s > 0.0 {
            pages as f64 / wall_s
        } else {
            0.0
        },
        eremoves,
        hardware_s: eremoves.map(|n| n as f64 * cost as f64 * 1e-9),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {human_pos}/{human_len} pages, {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

/// The guest's life, phase by phase, each phase timed into `phases`.
fn run(args: &Args) -> Result<(), String> {
    let sections =
        vepc::model::Epc::parse_sizes(&args.sections).map_err(|e| format!("--sections: {e}"))?;
    let total = Instant::now();
    let mut phases = Vec::new();

    let t = Instant::now();
    let epc = Epc::new(&sections).map_err(|e| format!("--sections: {e}"))?;
    let device = Device::new(epc, KernelVersion::DEFAULT);
    let epc_pages = u64::from(device.epc().pages());
    phases.push(phase("epc", epc_pages, t.elapsed(), None, 0));

    let host = match &args.host_enclave {
        None => None,
        Some(size) => {
            let bytes =
                vepc::number::parse_size(size).map_err(|e| format!("--host-enclave: {e}"))?;
            if bytes > vepc::driver::MAX_HOST_ENCLAVE_BYTES {
                return Err(format!(
                    "--host-enclave {size}: a host enclave is at most 64G (the model builds it page by page)"
                ));
            }
            let pages = bytes.div_ceil(PAGE_SIZE);
            let t = Instant::now();
            let id = device.host_enclave_create(pages).map_err(|e| {
                format!(
                    "--host-enclave {size}: the host enclave does not fit ({e}): its VA \
                     pages, one per 512 pages, cannot be written back"
                )
            })?;
            phases.push(phase("host", pages, t.elapsed(), None, 0));
            Some((id, pages, device.host_pages(), device.reclaim_stats()))
        }
    };

    // One instance per section, mapped whole, its vCPUs on that section's node.
    let mut guest: Vec<ModelSection> = sections
        .iter()
        .enumerate()
        .map(|(node, &bytes)| ModelSection::open_on_node(&device, node, bytes))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("open: {e}"))?;
    let share = args
        .populate
        .map_or(u64::MAX, |n| n.div_ceil(guest.len() as u64));
    let want: Vec<u64> = sections
        .iter()
        .map(|&b| (b / PAGE_SIZE).min(share))
        .collect();
    let wanted: u64 = want.iter().sum();

    phases.push(fault_in(&guest, &want, wanted));
    // A host load can leave some of the guest's pages without EPC.
    let populated: u64 = guest.iter().map(|g| g.file.vepc().present_pages()).sum();
    let host = host.map(|(id, enclave_pages, resident_before, before)| {
        let r = device.reclaim_stats();
        let load = HostLoad {
            enclave_pages,
            resident_before,
            resident_after: device.host_pages(),
            wanted_pages: wanted,
            fitted_pages: populated,
            written_back: r.written_back - before.written_back,
            ksgxd_wakeups: r.ksgxd_wakeups - before.ksgxd_wakeups,
            fault_retries: r.fault_retries - before.fault_retries,
        };
        (id, load)
    });
    phases.push(build_enclaves(&device, &guest, &want, populated));
    let model_bytes = device.heap_bytes() as u64;
    phases.push(reset_guest(&mut guest, args, populated)?);

    let t = Instant::now();
    let spinner = ProgressBar::new_spinner().with_message("release");
    spinner.enable_steady_tick(Duration::from_millis(100));
    drop(guest);
    spinner.finish_and_clear();
    let host = host.map(|(id, load)| {
        device.host_enclave_release(id);
        load
    });
    phases.push(phase(
        "release",
        populated,
        t.elapsed(),
        Some(populated),
        args.eremove_ns,
    ));
    let stats = device.stats();
    if stats.free != epc_pages {
        return Err(format!("after release: {stats}; every page should be free"));
    }

    let report = Report {
        sections,
        epc_pages,
        populated_pages: populated,
        total_wall_s: total.elapsed().as_secs_f64(),
        model_bytes,
        model_bytes_per_page: model_bytes as f64 / epc_pages as f64,
        peak_rss_bytes: peak_rss(),
        eremove_ns: args.eremove_ns,
        hardware_s: phases.iter().filter_map(|p| p.hardware_s).sum(),
        phases,
        host,
    };
    print(&report, args.json);
    Ok(())
}

/// Fault-in: every guest section on its own vCPU thread.
fn fault_in(guest: &[ModelSection], want: &[u64], populated: u64) -> Phase {
    let t = Instant::now();
    let pb = bar(populated, "fault-in");
    std::thread::scope(|s| {
        for (inst, &n) in guest.iter().zip(want) {
            let pb = &pb;
            s.spawn(move || {
                let map = &inst.maps[0];
                let mut at = 0;
                while at < n {
                    let step = TICK.min(n - at);
                    let _ = map.vepc().populate(at, step);
                    at += step;
                    pb.inc(step);
                }
            });
        }
    });
    pb.finish_and_clear();
    phase("fault_in", populated, t.elapsed(), None, 0)
}

/// The guest builds each section's enclaves on a vCPU of its node, as fault-in does;
/// a spanning enclave's SECS is a page reserved for it alone in the next section, so
/// the builders share no page. (Until 2026-12-06 one vCPU built everything: a
/// builder per section had been measured slower, 5.45 s against 4.61 s for 1 TiB,
/// when the first writes to the EPCM dominated the build. Measured again side by
/// side after the reclaim and release work of that day, two builders took 1.13-1.38 s
/// and one 1.63-1.65 s, three runs each.)
fn build_enclaves(
    device: &Arc<Device>,
    guest: &[ModelSection],
    want: &[u64],
    populated: u64,
) -> Phase {
    let t = Instant::now();
    let pb = bar(populated, "build");
    let plans = plan(want);
    std::thread::scope(|s| {
        for (i, plan) in plans.iter().enumerate() {
            let pb = &pb;
            s.spawn(move || build(device, guest, i, plan, pb));
        }
    });
    pb.finish_and_clear();
    phase("build", populated, t.elapsed(), None, 0)
}

/// The reset protocol over every section, then the check that nothing is left valid.
fn reset_guest(guest: &mut [ModelSection], args: &Args, populated: u64) -> Result<Phase, String> {
    let present: Vec<u64> = guest
        .iter()
        .map(|g| g.file.vepc().present_pages())
        .collect();
    let t = Instant::now();
    let spinner = ProgressBar::new_spinner().with_message("reset");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let opts = ResetOptions {
        strategy: if args.parallel {
            Strategy::Parallel
        } else {
            Strategy::Serial
        },
        ..ResetOptions::default()
    };
    let report = reset(guest, &opts, None).map_err(|e| format!("reset: {e}"))?;
    spinner.finish_and_clear();
    let eremoves: u64 = report.calls.iter().map(|c| present[c.instance]).sum();
    let timed = phase(
        "reset",
        populated,
        t.elapsed(),
        Some(eremoves),
        args.eremove_ns,
    );
    // The check reads every page's EPCM entry: a thread per section, as fault-in.
    let valid: u64 = std::thread::scope(|s| {
        let counts: Vec<_> = guest
            .iter()
            .map(|g| s.spawn(|| g.file.vepc().valid_pages()))
            .collect();
        counts
            .into_iter()
            .map(|c| c.join().map_err(|_| "reset: the check of a section failed"))
            .sum::<Result<u64, _>>()
    })?;
    if valid != 0 {
        return Err(format!("{valid} pages still valid after the reset"));
    }
    Ok(timed)
}

/// One enclave: where its SECS goes and which pages are its children.
struct Enclave {
    /// Section and page index of the SECS.
    secs: (usize, u64),
    /// Page indices of the children, all in the planning section; the first is a TCS.
    children: std::ops::Range<u64>,
}

/// Lays out each section: enclaves of cycling sizes with the SECS on their last page,
/// except one in eight whose SECS goes to a page reserved at the end of the next
/// section; a VA page every `VA_EVERY` pages.
fn plan(pages: &[u64]) -> Vec<(Vec<Enclave>, Vec<u64>)> {
    let n = pages.len();
    // Pages at the end of each section reserved for SECS pages of spanning enclaves.
    let reserved: Vec<u64> = pages.iter().map(|&p| (p / 8_192).min(p / 4)).collect();
    let mut foreign_next = vec![0u64; n];
    let mut plans = Vec::with_capacity(n);
    for s in 0..n {
        let usable = pages[s] - reserved[s];
        let (mut enclaves, mut va) = (Vec::new(), Vec::new());
        let mut at = 0;
        let mut k = 0usize;
        while at < usable {
            if at.is_multiple_of(VA_EVERY) {
                va.push(at);
                at += 1;
                continue;
            }
            let size = ENCLAVE_SIZES[k % ENCLAVE_SIZES.len()]
                .min(usable - at)
                .min(VA_EVERY - at % VA_EVERY);
            k += 1;
            let next = (s + 1) % n;
            let spanning = n > 1 && k.is_multiple_of(8) && foreign_next[next] < reserved[next];
            if spanning {
                let slot = pages[next] - reserved[next] + foreign_next[next];
                foreign_next[next] += 1;
                enclaves.push(Enclave {
                    secs: (next, slot),
                    children: at..at + size,
                });
            } else if size >= 2 {
                enclaves.push(Enclave {
                    secs: (s, at + size - 1),
                    children: at..at + size - 1,
                });
            } else {
                va.push(at);
            }
            at += size;
        }
        plans.push((enclaves, va));
    }
    plans
}

fn build(
    device: &Arc<Device>,
    guest: &[ModelSection],
    s: usize,
    (enclaves, va): &(Vec<Enclave>, Vec<u64>),
    pb: &ProgressBar,
) {
    let epc = device.epc();
    let page = |inst: usize, i: u64| guest[inst].maps[0].backing(i);
    let mut batch: Vec<EpcPage> = Vec::new();
    for e in enclaves {
        let Some(secs) = page(e.secs.0, e.secs.1) else {
            continue;
        };
        if epc.ecreate(secs).is_err() {
            continue;
        }
        batch.clear();
        guest[s]
            .file
            .vepc()
            .each_page(e.children.clone(), |_, p| batch.push(p));
        if let Some((&tcs, regs)) = batch.split_first() {
            let _ = epc.eadd(tcs, secs, AddType::Tcs);
            let _ = epc.eadd_batch(regs, secs, AddType::Reg);
        }
        let _ = epc.einit(secs);
        pb.inc(e.children.end - e.children.start);
    }
    for &i in va {
        if let Some(p) = page(s, i) {
            let _ = epc.epa(p);
        }
    }
    pb.inc(va.len() as u64);
}

fn hugepages_asked() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.hugetlb"))
}

/// Peak resident set (`VmHWM`), in bytes; 0 where /proc does not say.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn print(r: &Report, json: bool) {
    if json {
        out(&serde_json::to_string(r).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
        return;
    }
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    out(&format!(
        "vepc bench: {} section{}, {:.0} GiB of EPC ({} pages), {} populated",
        r.sections.len(),
        if r.sections.len() == 1 { "" } else { "s" },
        gib(r.epc_pages * PAGE_SIZE),
        r.epc_pages,
        r.populated_pages
    ));
    out(&format!(
        "{:<9} {:>12} {:>9} {:>14} {:>14}",
        "phase", "pages", "wall s", "pages/s", "hardware s"
    ));
    for p in &r.phases {
        out(&format!(
            "{:<9} {:>12} {:>9.3} {:>14.0} {:>14}",
            p.name,
            p.pages,
            p.wall_s,
            p.pages_per_s,
            p.hardware_s.map_or("-".into(), |h| format!("{h:.1}"))
        ));
    }
    out(&format!(
        "total     {:.3} s wall on the model; the EREMOVEs alone would take {:.0} s on hardware at {} ns each",
        r.total_wall_s, r.hardware_s, r.eremove_ns
    ));
    out(&format!(
        "memory    model {:.2} GiB = {:.2} bytes per EPC page; peak RSS {:.2} GiB",
        gib(r.model_bytes),
        r.model_bytes_per_page,
        gib(r.peak_rss_bytes)
    ));
    if let Some(h) = &r.host {
        let pct = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                100.0 * n as f64 / of as f64
            }
        };
        out(&format!(
            "host      an enclave of {} pages, {} in the EPC: {} of {} guest pages fitted ({:.2}%), {} got SIGBUS",
            h.enclave_pages,
            h.resident_before,
            h.fitted_pages,
            h.wanted_pages,
            pct(h.fitted_pages, h.wanted_pages),
            h.wanted_pages - h.fitted_pages
        ));
        out(&format!(
            "          for the guest ksgxd wrote {} pages back in {} wake-ups, {} faults retried; {} host pages still resident",
            h.written_back, h.ksgxd_wakeups, h.fault_retries, h.resident_after
        ));
    }
}
