//! `vepc demo`: a guest reboot on the built-in model, from the VMM's side.
//!
//! A host with two EPC sections runs a guest with two vEPC instances (one per guest
//! EPC section, as QEMU makes them). The guest builds enclaves, one of them with its
//! SECS in one instance and its children in the other; a vCPU is still inside an
//! enclave when the guest reboots. The reset is refused (`EBUSY`), the vCPU is
//! stopped, the two-round REMOVE_ALL runs, and every page is shown uninitialized.
//! The command exits non-zero if any of that does not happen as it must.

use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;
use vepc::abi::{Errno, KernelVersion};
use vepc::device::ModelSection;
use vepc::driver::Device;
use vepc::model::{AddType, Epc, EpcPage};
use vepc::reset::{QuiesceError, ResetOptions, reset};

use crate::out;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

const MIB: u64 = 1 << 20;

/// One step of the story and whether it went as it must.
#[derive(Debug, Serialize)]
struct Beat {
    step: String,
    outcome: String,
    ok: bool,
}

#[derive(Debug, Default, Serialize)]
struct Story {
    beats: Vec<Beat>,
    ok: bool,
}

impl Story {
    fn tell(&mut self, step: impl Into<String>, outcome: impl Into<String>, ok: bool) {
        self.beats.push(Beat {
            step: step.into(),
            outcome: outcome.into(),
            ok,
        });
    }
}

/// A guest EPC section: its vEPC instance, mapped by the VMM.
struct Section {
    name: &'static str,
    inst: ModelSection,
}

impl Section {
    /// The guest's access to page `i` of the section (faulting it in).
    fn page(&self, i: u64) -> Result<EpcPage, String> {
        self.inst.maps[0]
            .touch(i)
            .map_err(|s| format!("{}[{i}]: {s}", self.name))
    }
}

/// Builds an enclave: SECS at `secs`, a TCS and `regs` REG pages at the given places.
fn enclave(
    epc: &Epc,
    secs: (&Section, u64),
    tcs: (&Section, u64),
    regs: &[(&Section, std::ops::Range<u64>)],
) -> Result<(EpcPage, EpcPage), String> {
    let s = secs.0.page(secs.1)?;
    epc.ecreate(s).map_err(|e| format!("ECREATE: {e}"))?;
    let t = tcs.0.page(tcs.1)?;
    epc.eadd(t, s, AddType::Tcs)
        .map_err(|e| format!("EADD tcs: {e}"))?;
    for (sec, range) in regs {
        for i in range.clone() {
            epc.eadd(sec.page(i)?, s, AddType::Reg)
                .map_err(|e| format!("EADD reg: {e}"))?;
        }
    }
    epc.einit(s).map_err(|e| format!("EINIT: {e}"))?;
    Ok((s, t))
}

/// The story, step by step: each step tells its beats and hands the next what it
/// needs.
fn run(story: &mut Story) -> Result<(), String> {
    let epc = Epc::new(&[64 * MIB, 64 * MIB]).map_err(|e| e.to_string())?;
    let device = Device::new(epc, KernelVersion::DEFAULT);
    let [s0, s1] = host_and_guest_sections(&device, story)?;
    let (vault_tcs, touched) = guest_builds_enclaves(device.epc(), &s0, &s1, story)?;
    let Some(instances) = guest_reboots(device.epc(), [s0.inst, s1.inst], vault_tcs, story) else {
        return Ok(());
    };
    every_page_uninitialized(&device, &instances, touched, story);
    drop(instances);
    let stats = device.stats();
    story.tell(
        "VMM exits",
        format!("both instances released: {stats}"),
        stats.used == 0 && stats.zombie == 0 && Arc::strong_count(&device) == 1,
    );
    Ok(())
}

/// The host's EPC, and the guest's two sections the VMM maps.
fn host_and_guest_sections(
    device: &Arc<Device>,
    story: &mut Story,
) -> Result<[Section; 2], String> {
    story.tell(
        "host",
        format!(
            "Linux {} with 2 EPC sections of 64 MiB ({} pages), modelled",
            device.kernel(),
            device.epc().pages()
        ),
        true,
    );
    let open = |name, size: u64| -> Result<Section, String> {
        let inst = ModelSection::open(device, size).map_err(|e| format!("{name}: {e}"))?;
        Ok(Section { name, inst })
    };
    let sections = [open("S0", 48 * MIB)?, open("S1", 32 * MIB)?];
    story.tell(
        "VMM maps the guest's EPC",
        "S0: 48 MiB and S1: 32 MiB, each its own /dev/sgx_vepc instance, MAP_SHARED",
        true,
    );
    Ok(sections)
}

/// The guest: three enclaves and some VA pages, and a vCPU inside one of them. Vault
/// and Ledger keep their SECS above their children, so one walk in index order
/// removes them whole; Bridge spans both sections with its SECS in S0: it must wait
/// for its children in S1. Vault's TCS, and the pages touched.
fn guest_builds_enclaves(
    epc: &Epc,
    s0: &Section,
    s1: &Section,
    story: &mut Story,
) -> Result<(EpcPage, u64), String> {
    let (_, vault_tcs) = enclave(epc, (s0, 3002), (s0, 0), &[(s0, 1..3002)])?;
    enclave(epc, (s1, 1002), (s1, 0), &[(s1, 1..1002)])?;
    enclave(
        epc,
        (s0, 4000),
        (s0, 5000),
        &[(s0, 5001..6001), (s1, 2000..3000)],
    )?;
    for (sec, range) in [(s0, 8000..8016), (s1, 6000..6016)] {
        for i in range {
            epc.epa(sec.page(i)?).map_err(|e| format!("EPA: {e}"))?;
        }
    }
    let touched = s0.inst.file.vepc().present_pages() + s1.inst.file.vepc().present_pages();
    story.tell(
        "guest builds enclaves",
        format!(
            "Vault (S0, 3003 pages), Ledger (S1, 1003 pages), Bridge (SECS in S0, \
             children in S0 and S1, 2002 pages), 32 VA pages: {touched} pages touched"
        ),
        true,
    );
    epc.eenter(vault_tcs).map_err(|e| format!("EENTER: {e}"))?;
    story.tell("vCPU 0 enters Vault", "a thread is inside an enclave", true);
    Ok((vault_tcs, touched))
}

/// The reboot: the VMM resets the EPC, with a quiesce hook that stops vCPU 0 when
/// REMOVE_ALL answers EBUSY. The report shows every call. The sections, unless the
/// reset failed.
fn guest_reboots(
    epc: &Epc,
    mut instances: [ModelSection; 2],
    vault_tcs: EpcPage,
    story: &mut Story,
) -> Option<[ModelSection; 2]> {
    let mut stopped = Vec::new();
    let mut stop_vcpus = |instance: usize| -> Result<(), QuiesceError> {
        epc.eexit(vault_tcs)
            .map_err(|e| QuiesceError::new(format!("EEXIT: {e}")))?;
        stopped.push(instance);
        Ok(())
    };
    let outcome = reset(
        &mut instances,
        &ResetOptions::default(),
        Some(&mut stop_vcpus),
    );
    let report = match outcome {
        Ok(r) => r,
        Err(failed) => {
            story.tell(
                "guest reboots: the VMM resets the EPC",
                failed.to_string(),
                false,
            );
            return None;
        }
    };
    let names = ["S0", "S1"];
    let mut calls = report.calls.iter();
    let first = calls.next();
    story.tell(
        "guest reboots while vCPU 0 is still inside Vault: REMOVE_ALL S0",
        "EBUSY: EREMOVE met SGX_ENCLAVE_ACT, which the kernel reports as EBUSY",
        first.is_some_and(|c| c.instance == 0 && c.round == 1 && c.answer == Err(Errno::EBUSY)),
    );
    story.tell(
        "the reset's quiesce hook stops vCPU 0",
        "the thread has left Vault",
        stopped == [0] && report.quiesced == 1,
    );
    let rest: Vec<String> = calls
        .map(|c| {
            let answer = c.answer.map_or_else(|e| e.to_string(), |n| n.to_string());
            format!("round {} {} -> {answer}", c.round, names[c.instance])
        })
        .collect();
    // Only Bridge's SECS survives round 1 (its S1 children were still there when S0
    // was walked), so only S0 needs, and must pass, round 2.
    let expected = ["round 1 S0 -> 1", "round 1 S1 -> 0", "round 2 S0 -> 0"];
    story.tell(
        "the two-round REMOVE_ALL",
        format!("{} (the reset took {:?})", rest.join(", "), report.elapsed),
        rest == expected,
    );
    Some(instances)
}

/// After the reset: every page the guest touched is still its own, and uninitialized.
fn every_page_uninitialized(
    device: &Device,
    instances: &[ModelSection],
    touched: u64,
    story: &mut Story,
) {
    let valid: u64 = instances.iter().map(|i| i.file.vepc().valid_pages()).sum();
    let total: u64 = instances
        .iter()
        .map(|i| i.file.vepc().present_pages())
        .sum();
    let stats = device.stats();
    let consistent = device.check();
    story.tell(
        "every guest page is uninitialized again",
        format!(
            "{valid} of {total} pages valid; the guest keeps its pages ({stats}); consistency check: {}",
            match &consistent {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        ),
        valid == 0 && total == touched && stats.used == touched && consistent.is_ok(),
    );
}

pub fn main(args: &Args) -> ExitCode {
    let mut story = Story::default();
    if let Err(e) = run(&mut story) {
        story.tell("the story broke off", e, false);
    }
    story.ok = story.beats.iter().all(|b| b.ok);
    if args.json {
        out(&serde_json::to_string(&story).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")));
    } else {
        out("vepc demo: a guest reboot on the built-in model (no SGX hardware involved)");
        for (i, b) in story.beats.iter().enumerate() {
            let mark = if b.ok { "ok " } else { "BAD" };
            out(&format!("{mark} {}. {}: {}", i + 1, b.step, b.outcome));
        }
        out(if story.ok {
            "the guest's EPC is back to uninitialized, as after a real reboot"
        } else {
            "the story did not end as it must: see the lines marked BAD"
        });
    }
    if story.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
