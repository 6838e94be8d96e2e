//! A minimal VMM with SGX memory and no SGX: a real KVM guest on the emulated
//! `/dev/sgx_vepc`.
//!
//! ```text
//! cargo run --release -p vepc --example kvm_guest [-- --epc-pages N] [--faults MODE]
//! ```
//!
//! It creates a VM with rust-vmm's `kvm-ioctls`, gives it two EPC sections from the
//! emulated device as memory slots, and runs a few guest instructions that write to
//! every page of both: each first write is a fault the model answers, from inside a
//! real guest, through KVM. With the vCPU stopped (the guest halts), it builds an
//! enclave on the model in the guest's place (this CPU has no ENCLS), one whose SECS
//! is in section 0 and whose children are in section 1, and runs the reset protocol,
//! showing the model's state before and after.
//!
//! With an EPC smaller than the guest's writes (`--epc-pages`, fewer than 128), the
//! write to the first page the EPC has no room for gets no memory. The emulated page
//! fails KVM's fault-in exactly where the real driver's `VM_FAULT_SIGBUS` does: both
//! end as `KVM_PFN_ERR_FAULT` in KVM. What the VMM then sees depends on how KVM ran
//! the instruction: with hardware paging, `KVM_RUN` fails with `EFAULT` (and, since
//! Linux 6.8, `KVM_EXIT_MEMORY_FAULT` names the address); where KVM emulates the
//! instruction (`kvm_pvm` on this project's machines), the write it cannot make to
//! guest memory comes out as an MMIO write exit at that address. The example says
//! which it saw. `--faults` picks the emulated device's fault mode (`auto`,
//! `userfaultfd`, `eager`).
//!
//! Exit status: 0 when the guest's writes reached the model (up to the exhaustion,
//! exactly where it must come, if any) and the reset left every page uninitialized;
//! 1 otherwise; 77 when `/dev/kvm` cannot be opened.

#![allow(unsafe_code)]

use std::process::ExitCode;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
#[cfg(feature = "vm-memory")]
use std::sync::Arc;
use vepc::abi::{Errno, KernelVersion};
#[cfg(feature = "vm-memory")]
use vepc::device::guest_memory::{EpcGuestRegion, GuestMemoryWithEpc, GuestRegion};
use vepc::device::{Emulated, FaultMode, MapOptions, VepcDevice, VepcSection};
use vepc::driver::Device;
use vepc::model::{AddType, Epc};
use vepc::reset::{Quiesce, QuiesceError, ResetFailed, ResetOptions, ResetReport, reset};

const PAGE: u64 = vepc::abi::PAGE_SIZE;
/// Pages in each of the guest's two EPC sections.
const SECTION_PAGES: u64 = 64;
/// Where the guest sees them, and its code.
const SECTION_GPA: [u64; 2] = [0x10_0000, 0x20_0000];
const CODE_GPA: u64 = 0x1000;
const RAM_BYTES: usize = 0x1_0000;

/// What the run showed.
#[derive(Debug)]
struct Outcome {
    /// Pages of each section that got an EPC page.
    touched: [u64; 2],
    /// The guest address whose write found no EPC page, if one did.
    exhausted_at: Option<u64>,
    /// How KVM reported it.
    seen_as: Option<&'static str>,
    /// Each section's valid pages after the reset (0: uninitialized).
    valid_after: [u64; 2],
}

/// A real KVM guest on the emulated /dev/sgx_vepc: its writes reach the model, and
/// the reset clears them.
#[derive(Debug, clap::Parser)]
#[command(name = "kvm_guest")]
struct Args {
    /// Pages of EPC (4 to 1048576; the guest writes 128, so fewer stops it at the
    /// first page without EPC).
    #[arg(long, default_value_t = 2 * SECTION_PAGES,
          value_parser = clap::value_parser!(u64).range(4..=1 << 20))]
    epc_pages: u64,
    /// How the emulated device serves first touches.
    #[arg(long, value_enum, default_value_t = Faults::Auto)]
    faults: Faults,
    /// Keep the guest's memory (RAM and EPC) in one vm-memory collection.
    #[cfg(feature = "vm-memory")]
    #[arg(long)]
    vm_memory: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Faults {
    Auto,
    Userfaultfd,
    Eager,
}

impl From<Faults> for FaultMode {
    fn from(f: Faults) -> Self {
        match f {
            Faults::Auto => FaultMode::Auto,
            Faults::Userfaultfd => FaultMode::Userfaultfd,
            Faults::Eager => FaultMode::Eager,
        }
    }
}

/// How the VMM keeps the guest's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memory {
    /// Its own mapping for RAM, and the sections.
    Sections,
    /// One vm-memory collection of RAM and EPC.
    #[cfg(feature = "vm-memory")]
    VmMemory,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let (epc_pages, faults) = (args.epc_pages, args.faults.into());
    #[cfg(feature = "vm-memory")]
    let how = if args.vm_memory {
        Memory::VmMemory
    } else {
        Memory::Sections
    };
    #[cfg(not(feature = "vm-memory"))]
    let how = Memory::Sections;
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("SKIPPED: /dev/kvm cannot be opened ({e}): no guest to run");
            return ExitCode::from(77);
        }
    };
    match run(&kvm, epc_pages, faults, how) {
        Ok(o) => {
            let want = expected(epc_pages);
            let ok = o.touched == want.0 && o.exhausted_at == want.1 && o.valid_after == [0, 0];
            let exhaustion = match (o.exhausted_at, o.seen_as) {
                (Some(gpa), Some(how)) => {
                    format!(" (up to the exhaustion at GPA {gpa:#x}, seen as {how})")
                }
                _ => String::new(),
            };
            if ok {
                println!(
                    "ok: the guest's writes reached the model{exhaustion}, and the reset left every page uninitialized"
                );
            } else {
                println!(
                    "FAILED: the model does not show what the guest did: {o:?}, expected {want:?}"
                );
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kvm_guest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Pages each section must end up with, and where the exhaustion must come, for an
/// EPC of `epc_pages`: section 0's pages are written first.
fn expected(epc_pages: u64) -> ([u64; 2], Option<u64>) {
    let first = epc_pages.min(SECTION_PAGES);
    let second = (epc_pages - first).min(SECTION_PAGES);
    let exhausted = (epc_pages < 2 * SECTION_PAGES).then(|| {
        if first < SECTION_PAGES {
            SECTION_GPA[0] + first * PAGE
        } else {
            SECTION_GPA[1] + second * PAGE
        }
    });
    ([first, second], exhausted)
}

/// The guest's memory, as the VMM keeps it.
enum Guest {
    /// The sections, and RAM the VMM mapped itself.
    Sections(Vec<VepcSection>),
    /// One vm-memory collection of RAM and EPC, and the EPC regions it holds.
    #[cfg(feature = "vm-memory")]
    VmMemory {
        /// Kept for the VM's life: its memory slots point into it.
        _mem: GuestMemoryWithEpc,
        epc: Vec<Arc<EpcGuestRegion>>,
    },
}

impl Guest {
    /// Calls `f` with section `i`.
    fn with_section<T>(&self, i: usize, f: impl FnOnce(&VepcSection) -> T) -> T {
        match self {
            Self::Sections(s) => f(&s[i]),
            #[cfg(feature = "vm-memory")]
            Self::VmMemory { epc, .. } => epc[i].with_section(f),
        }
    }

    /// The guest-reboot reset over the sections, however they are kept.
    fn reset(&mut self, quiesce: Quiesce<'_>) -> Result<ResetReport, ResetFailed> {
        match self {
            Self::Sections(s) => reset(s, &ResetOptions::default(), Some(quiesce)),
            #[cfg(feature = "vm-memory")]
            Self::VmMemory { epc, .. } => reset(epc, &ResetOptions::default(), Some(quiesce)),
        }
    }
}

fn run(kvm: &Kvm, epc_pages: u64, faults: FaultMode, how: Memory) -> Result<Outcome, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // The VMM's code, unchanged on an SGX host but for this constructor:
    // `VepcDevice::host()`.
    let epc = Epc::new(&[epc_pages * PAGE]).map_err(|e| e.to_string())?;
    let model = Device::new(epc, KernelVersion::DEFAULT);
    let emulated = Emulated::new(model, faults).map_err(|e| e.to_string())?;
    let device = VepcDevice::emulated_on(&emulated);
    let sections: Vec<VepcSection> = (0..2)
        .map(|_| {
            VepcSection::open(
                &device,
                (SECTION_PAGES * PAGE) as usize,
                MapOptions::default(),
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut guest = match how {
        Memory::Sections => {
            guest_ram(&vm)?;
            for (slot, (s, gpa)) in sections.iter().zip(SECTION_GPA).enumerate() {
                add_slot(
                    &vm,
                    slot as u32 + 1,
                    gpa,
                    s.region().addr() as u64,
                    s.region().len() as u64,
                )?;
            }
            Guest::Sections(sections)
        }
        #[cfg(feature = "vm-memory")]
        Memory::VmMemory => guest_memory(&vm, sections)?,
    };
    println!(
        "guest: two EPC sections of {SECTION_PAGES} pages at GPA {:#x} and {:#x}, an EPC of {epc_pages} pages",
        SECTION_GPA[0], SECTION_GPA[1]
    );

    let exhausted = run_guest(&vm)?;
    match exhausted {
        None => println!("guest: wrote to every page of both sections and halted"),
        Some((gpa, how)) => println!(
            "guest: its write to GPA {gpa:#x} found no free EPC page; KVM reported {how}, as it \
             does for the real driver, whose fault answers VM_FAULT_SIGBUS there; the VMM stops \
             the vCPU"
        ),
    }
    let touched = [pages(&guest, 0).0, pages(&guest, 1).0];
    show("after the guest ran", &guest);

    build_enclaves(emulated.model().epc(), &guest, touched)?;
    show("with the guest's enclaves", &guest);

    // The guest reboots. The vCPU is stopped already (it halted, or its run failed);
    // a VMM with running vCPUs pauses them here.
    let mut quiesce = |_section: usize| -> Result<(), QuiesceError> { Ok(()) };
    let report = guest
        .reset(&mut quiesce)
        .map_err(|e| format!("reset: {e}"))?;
    for c in &report.calls {
        println!(
            "reset: round {} section {}: REMOVE_ALL -> {}",
            c.round,
            c.instance,
            c.answer.map_or_else(|e| e.to_string(), |n| n.to_string())
        );
    }
    show("after the reset", &guest);
    Ok(Outcome {
        touched,
        exhausted_at: exhausted.map(|(gpa, _)| gpa),
        seen_as: exhausted.map(|(_, how)| how),
        valid_after: [pages(&guest, 0).1, pages(&guest, 1).1],
    })
}

/// The guest's memory as rust-vmm VMMs keep it: one vm-memory collection of its RAM
/// (with its code, written through vm-memory) and its EPC sections, each a memory
/// slot from the collection itself. No `unsafe` for EPC: the collection owns it.
#[cfg(feature = "vm-memory")]
fn guest_memory(vm: &VmFd, sections: Vec<VepcSection>) -> Result<Guest, String> {
    use vm_memory::{
        Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionCollection,
        GuestRegionMmap, MemoryRegionAddress,
    };
    let ram = GuestRegionMmap::from_range(GuestAddress(0), RAM_BYTES, None)
        .map_err(|e| format!("guest RAM: {e}"))?;
    let epc: Vec<Arc<EpcGuestRegion>> = sections
        .into_iter()
        .zip(SECTION_GPA)
        .map(|(s, gpa)| EpcGuestRegion::new(s, GuestAddress(gpa)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let regions = std::iter::once(Arc::new(GuestRegion::Ram(ram)))
        .chain(
            epc.iter()
                .map(|e| Arc::new(GuestRegion::Epc(Arc::clone(e)))),
        )
        .collect();
    let mem: GuestMemoryWithEpc =
        GuestRegionCollection::from_arc_regions(regions).map_err(|e| e.to_string())?;
    mem.write_slice(&guest_code(), GuestAddress(CODE_GPA))
        .map_err(|e| format!("writing the guest's code: {e}"))?;
    for (slot, r) in mem.iter().enumerate() {
        let host = r
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| e.to_string())?;
        add_slot(vm, slot as u32, r.start_addr().0, host as u64, r.len())?;
    }
    println!(
        "guest: RAM and EPC in one vm-memory collection of {} regions",
        mem.num_regions()
    );
    Ok(Guest::VmMemory { _mem: mem, epc })
}

/// The guest's enclaves, built on the model in its place: SECS in section 0, a TCS
/// and a REG page in section 1 (if the guest got that far); a second enclave and a VA
/// page within section 0.
fn build_enclaves(epc: &Epc, guest: &Guest, touched: [u64; 2]) -> Result<(), String> {
    let page = |s: usize, i: u64| {
        guest
            .with_section(s, |s| s.fd().model().and_then(|f| f.vepc().page(i)))
            .ok_or(format!("page {i} was not touched"))
    };
    if touched[1] >= 2 {
        let secs = page(0, 0)?;
        epc.ecreate(secs).map_err(|e| format!("ECREATE: {e}"))?;
        epc.eadd(page(1, 0)?, secs, AddType::Tcs)
            .map_err(|e| format!("EADD: {e}"))?;
        epc.eadd(page(1, 1)?, secs, AddType::Reg)
            .map_err(|e| format!("EADD: {e}"))?;
        epc.einit(secs).map_err(|e| format!("EINIT: {e}"))?;
    }
    let local = page(0, 1)?;
    epc.ecreate(local).map_err(|e| format!("ECREATE: {e}"))?;
    epc.eadd(page(0, 2)?, local, AddType::Tcs)
        .map_err(|e| format!("EADD: {e}"))?;
    epc.epa(page(0, 3)?).map_err(|e| format!("EPA: {e}"))?;

    Ok(())
}

fn pages(guest: &Guest, i: usize) -> (u64, u64) {
    guest.with_section(i, |s| s.fd().pages().unwrap_or((0, 0)))
}

fn show(when: &str, guest: &Guest) {
    for i in 0..2 {
        let (present, valid) = pages(guest, i);
        println!(
            "model, {when}: section {i}: {present} pages touched, {valid} valid, {} uninitialized",
            present - valid
        );
    }
}

/// The guest's ordinary RAM (its code), slot 0 at GPA 0, mapped for the VM's life.
fn guest_ram(vm: &VmFd) -> Result<(), String> {
    // SAFETY: a new anonymous mapping, which nothing else uses.
    let ram = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            RAM_BYTES,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::NORESERVE,
        )
    }
    .map_err(|e| format!("mmap guest RAM: {e}"))?
    .cast::<u8>();
    let code = guest_code();
    // SAFETY: the code fits in the mapping just made (RAM_BYTES), at CODE_GPA.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), ram.add(CODE_GPA as usize), code.len()) };
    add_slot(vm, 0, 0, ram as u64, RAM_BYTES as u64)
}

fn add_slot(vm: &VmFd, slot: u32, gpa: u64, addr: u64, len: u64) -> Result<(), String> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: len,
        userspace_addr: addr,
    };
    // SAFETY: the range is a mapping this VMM owns for the VM's whole life (guest RAM,
    // or an EpcRegion kept in `sections` until the VM is gone).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))
}

/// 32-bit protected-mode code: writes "VEPC" to each page of both sections, then halts.
fn guest_code() -> Vec<u8> {
    let mut code = Vec::new();
    for gpa in SECTION_GPA {
        code.push(0xBF); // mov edi, gpa
        code.extend_from_slice(&(gpa as u32).to_le_bytes());
        code.push(0xB9); // mov ecx, pages
        code.extend_from_slice(&(SECTION_PAGES as u32).to_le_bytes());
        code.extend_from_slice(&[0xC7, 0x07]); // 1: mov dword [edi], "VEPC"
        code.extend_from_slice(b"VEPC");
        code.extend_from_slice(&[0x81, 0xC7]); // add edi, 4096
        code.extend_from_slice(&(PAGE as u32).to_le_bytes());
        code.extend_from_slice(&[0xE2, 0xF2]); // loop 1b
    }
    code.push(0xF4); // hlt
    code
}

/// Runs the vCPU until it halts (`None`) or a write finds no EPC: its page's GPA, and
/// how KVM reported it.
fn run_guest(vm: &VmFd) -> Result<Option<(u64, &'static str)>, String> {
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let flat = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(0x08, 0xB);
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        *seg = flat(0x10, 0x3);
    }
    sregs.cr0 |= 1; // protected mode, no paging
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    let in_epc = |gpa: u64| {
        SECTION_GPA
            .iter()
            .any(|&base| (base..base + SECTION_PAGES * PAGE).contains(&gpa))
    };
    match vcpu.run() {
        Ok(VcpuExit::Hlt) => Ok(None),
        Ok(VcpuExit::MemoryFault { gpa, .. }) => Ok(Some((
            gpa & !(PAGE - 1),
            "KVM_RUN: EFAULT with KVM_EXIT_MEMORY_FAULT",
        ))),
        // Guest memory KVM could not write while emulating the instruction.
        Ok(VcpuExit::MmioWrite(gpa, _)) if in_epc(gpa) => Ok(Some((
            gpa & !(PAGE - 1),
            "an MMIO write exit (KVM emulated the instruction and could not write the page)",
        ))),
        Ok(exit) => Err(format!("unexpected exit: {exit:?}")),
        Err(e) if e.errno() == Errno::EFAULT.raw() => {
            // Kernels that do not report the address: the guest's EDI has it.
            let regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
            Ok(Some((regs.rdi & !(PAGE - 1), "KVM_RUN: EFAULT")))
        }
        Err(e) => Err(format!("KVM_RUN: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm_or_skip(test: &str) -> Option<Kvm> {
        match Kvm::new() {
            Ok(k) => Some(k),
            Err(e) => {
                assert!(
                    std::env::var("VEPC_REQUIRE_KVM").as_deref() != Ok("1"),
                    "VEPC_REQUIRE_KVM=1 but /dev/kvm: {e}"
                );
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED {test}: /dev/kvm: {e}");
                None
            }
        }
    }

    #[test]
    fn the_guests_writes_reach_the_model_and_the_reset_clears_them() {
        let Some(kvm) = kvm_or_skip("the_guests_writes_reach_the_model_and_the_reset_clears_them")
        else {
            return;
        };
        for faults in [FaultMode::Auto, FaultMode::Userfaultfd, FaultMode::Eager] {
            let o = run(&kvm, 2 * SECTION_PAGES, faults, Memory::Sections).expect("run");
            assert_eq!(o.touched, [SECTION_PAGES, SECTION_PAGES], "{faults:?}");
            assert_eq!(o.exhausted_at, None, "{faults:?}");
            assert_eq!(o.valid_after, [0, 0], "{faults:?}");
        }
    }

    /// The same guest with its memory in one vm-memory collection.
    #[cfg(feature = "vm-memory")]
    #[test]
    fn the_guest_runs_on_vm_memory_with_epc_regions() {
        let Some(kvm) = kvm_or_skip("the_guest_runs_on_vm_memory_with_epc_regions") else {
            return;
        };
        for epc_pages in [2 * SECTION_PAGES, SECTION_PAGES + 20] {
            let o = run(&kvm, epc_pages, FaultMode::Auto, Memory::VmMemory).expect("run");
            assert_eq!(expected(epc_pages), (o.touched, o.exhausted_at));
            assert_eq!(o.valid_after, [0, 0]);
        }
    }

    #[test]
    fn bad_arguments_are_refused_not_clamped() {
        use clap::Parser;
        for bad in [
            &["kvm_guest", "--epc-pages", "0"][..],
            &["kvm_guest", "--epc-pages", "3"],
            &["kvm_guest", "--epc-pages", "4503599627370496"],
            &["kvm_guest", "--faults", "lazy"],
            &["kvm_guest", "--epc-pages"],
            &["kvm_guest", "--bogus"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let ok = Args::try_parse_from(["kvm_guest", "--epc-pages", "84"]).expect("valid");
        assert_eq!(ok.epc_pages, 84);
    }

    #[test]
    fn a_write_past_the_epc_stops_the_guest_at_that_page() {
        let Some(kvm) = kvm_or_skip("a_write_past_the_epc_stops_the_guest_at_that_page") else {
            return;
        };
        // Auto turns exact when the second section is mapped; eager decides at mmap.
        for faults in [FaultMode::Auto, FaultMode::Eager] {
            let o = run(&kvm, SECTION_PAGES + 20, faults, Memory::Sections).expect("run");
            assert_eq!(o.touched, [SECTION_PAGES, 20], "{faults:?}");
            assert_eq!(
                o.exhausted_at,
                Some(SECTION_GPA[1] + 20 * PAGE),
                "{faults:?}"
            );
            assert!(o.seen_as.is_some(), "{faults:?}");
            assert_eq!(o.valid_after, [0, 0], "{faults:?}");
            assert_eq!(expected(SECTION_PAGES + 20), (o.touched, o.exhausted_at));
        }
        let o = run(&kvm, 40, FaultMode::Auto, Memory::Sections).expect("run");
        assert_eq!(
            (o.touched, o.exhausted_at),
            ([40, 0], Some(SECTION_GPA[0] + 40 * PAGE))
        );
    }
}
