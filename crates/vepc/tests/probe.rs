//! CPUID decoding on registers recorded on real SGX machines (no SGX host is here),
//! and the probe's verdict on the facts it can meet.

use vepc::abi::KernelVersion;
use vepc::probe::cpuid::{EpcSection, Regs, SectionProperty, decode};
use vepc::probe::host::{DeviceNode, HostFacts, node_epc};
use vepc::probe::verdict;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Xeon Gold 5315Y (Ice Lake SP), as recorded in the public SGX-hardware list
/// (ayeks/SGX-hardware PR #87): leaf 7 and leaf 0x12 sub-leaves 0-3.
fn ice_lake_5315y() -> (Regs, Vec<Regs>) {
    (
        Regs::new(0, 0xf3bf_b7ef, 0x4041_7f5e, 0xbc04_0412),
        vec![
            Regs::new(0x403, 0x1, 0x0, 0x381f),
            Regs::new(0xb6, 0x0, 0x2e7, 0x0),
            Regs::new(0x1800_0001, 0x70, 0xe780_0002, 0xf),
            Regs::new(0, 0, 0, 0),
        ],
    )
}

#[test]
fn ice_lake_server_with_a_confidentiality_only_section() {
    let (l7, l12) = ice_lake_5315y();
    let cpu = decode(l7, &l12);
    assert!(cpu.sgx && cpu.sgx_lc && cpu.sgx1 && cpu.sgx2);
    assert_eq!(cpu.max_enclave_size_64_log2, 0x38);
    assert_eq!(
        cpu.sections,
        [EpcSection {
            base: 0x70_1800_0000,
            size: 0xf_e780_0000,
            property: SectionProperty::ConfidentialityOnly,
        }]
    );
    assert_eq!(cpu.epc_bytes() / MIB, 65144, "the recording's own reading");
    assert!(cpu.notes.is_empty());
}

/// A 2-socket Ice Lake host has one section per socket. No such recording was to be
/// had: this one is CONSTRUCTED from the 5315Y's registers, with a second section of
/// the same size at a higher base (sub-leaf 3), as a second socket reports it.
#[test]
fn two_socket_ice_lake_gives_two_sections_in_order() {
    let (l7, mut l12) = ice_lake_5315y();
    l12.insert(3, Regs::new(0x1800_0001, 0xf0, 0xe780_0002, 0xf));
    let cpu = decode(l7, &l12);
    assert_eq!(cpu.sections.len(), 2);
    assert_eq!(cpu.sections[1].base, 0xf0_1800_0000);
    assert_eq!(cpu.epc_bytes(), 2 * 0xf_e780_0000);
    assert!(
        cpu.sections
            .iter()
            .all(|s| s.property == SectionProperty::ConfidentialityOnly)
    );
}

/// Sapphire Rapids reports section property 3, which sgx-detect rejected
/// (fortanix/rust-sgx#938, registers quoted there). It is still a section.
#[test]
fn sapphire_rapids_property_3_is_accepted() {
    let (l7, mut l12) = ice_lake_5315y();
    l12[2] = Regs::new(0x00c0_0001, 0x20, 0x7e1f_f003, 0);
    let cpu = decode(l7, &l12);
    assert_eq!(cpu.sections.len(), 1);
    let s = cpu.sections[0];
    assert_eq!(
        (s.base, s.size, s.property),
        (0x20_00c0_0000, 0x7e1f_f000, SectionProperty::Other(3))
    );
    assert!(s.property.to_string().contains("accepted"));
}

/// Xeon E-2276G (Coffee Lake, ayeks/SGX-hardware PR #88): SGX1 only, one 93.5 MiB
/// section with integrity.
#[test]
fn coffee_lake_xeon_e_has_sgx1_and_an_integrity_protected_section() {
    let cpu = decode(
        Regs::new(0, 0x029c_6fbf, 0x4000_0000, 0x9c00_2e00),
        &[
            Regs::new(1, 0, 0, 0x241f),
            Regs::new(0x36, 0, 0x1f, 0),
            Regs::new(0x7020_0001, 0, 0x05d8_0001, 0),
            Regs::default(),
        ],
    );
    assert!(cpu.sgx1 && !cpu.sgx2 && cpu.sgx_lc);
    assert_eq!(
        cpu.sections[0].property,
        SectionProperty::ConfidentialityIntegrity
    );
    assert_eq!(cpu.sections[0].size, 93 * MIB + MIB / 2);
}

/// Alibaba Cloud's Ice Lake SGX guest (ayeks/SGX-hardware PR #81): 23808 MiB.
#[test]
fn an_ice_lake_guest_sees_its_virtual_section() {
    let cpu = decode(
        Regs::new(0, 0xf03f_07af, 0x4040_5f42, 0x10),
        &[
            Regs::new(3, 1, 0, 0x381f),
            Regs::new(0xb6, 0, 0xe7, 0),
            Regs::new(0x4000_0001, 6, 0xd000_0002, 5),
            Regs::default(),
        ],
    );
    assert_eq!(cpu.sections[0].base, 0x6_4000_0000);
    assert_eq!(cpu.sections[0].size / MIB, 23808);
}

/// A MacBook whose CPU has SGX but firmware left it off (PR #85): leaf 0x12 all zero.
#[test]
fn sgx_present_but_off_in_firmware() {
    let cpu = decode(
        Regs::new(0, 0x029c_67af, 0x4000_0000, 0),
        &[Regs::default(); 4],
    );
    assert!(cpu.sgx && !cpu.sgx1 && cpu.sections.is_empty());
    let f = facts(Some(cpu));
    assert!(verdict(&f).reasons[0].contains("enable SGX in the firmware"));
}

#[test]
fn an_unknown_subleaf_type_stops_the_walk_like_linux() {
    let (l7, mut l12) = ice_lake_5315y();
    l12[3] = Regs::new(0x2, 0, 0, 0);
    let cpu = decode(l7, &l12);
    assert_eq!(cpu.sections.len(), 1);
    assert!(cpu.notes[0].contains("unknown type 2"));
}

fn node(path: &str, exists: bool, open_error: Option<&str>) -> DeviceNode {
    DeviceNode {
        path: path.into(),
        exists,
        owner: exists.then(|| "root".into()),
        group: exists.then(|| "sgx".into()),
        mode: exists.then_some(0o660),
        open_error: open_error.map(Into::into),
    }
}

fn facts(cpu: Option<vepc::probe::cpuid::SgxCpu>) -> HostFacts {
    HostFacts {
        cpu,
        devices: vec![node("/dev/sgx_vepc", true, None)],
        kernel_release: "6.18.0".into(),
        kernel: Some(KernelVersion::new(6, 18)),
        node_epc: vec![],
        kvm: Ok(12),
    }
}

#[test]
fn a_good_host_is_a_yes() {
    let (l7, l12) = ice_lake_5315y();
    let v = verdict(&facts(Some(decode(l7, &l12))));
    assert!(v.ok, "{:?}", v.reasons);
}

#[test]
fn every_missing_piece_is_a_reason() {
    let (l7, l12) = ice_lake_5315y();
    let cpu = decode(l7, &l12);
    let mut f = facts(Some(cpu.clone()));
    f.kernel = Some(KernelVersion::new(5, 15));
    f.kernel_release = "5.15.0-91-generic".into();
    f.devices = vec![node("/dev/sgx_vepc", true, Some("EACCES"))];
    f.kvm = Err("no /dev/kvm".into());
    let v = verdict(&f);
    assert!(!v.ok);
    assert_eq!(v.reasons.len(), 3, "{:?}", v.reasons);
    assert!(
        v.reasons[0].contains("add this user to the group `sgx`, which owns it"),
        "{:?}",
        v.reasons
    );
    assert!(v.reasons[1].contains("older than 5.16"));
    assert!(v.reasons[2].contains("KVM"));

    let mut no_lc = cpu;
    no_lc.sgx_lc = false;
    assert!(verdict(&facts(Some(no_lc))).reasons[0].contains("launch control"));
    let mut f = facts(None);
    f.devices = vec![node("/dev/sgx_vepc", false, Some("does not exist"))];
    let v = verdict(&f);
    assert!(v.reasons[0].contains("not an x86-64") && v.reasons[1].contains("CONFIG_X86_SGX_KVM"));
}

#[test]
fn per_node_epc_is_read_from_sysfs() {
    let root = std::env::temp_dir().join(format!("vepc-sysfs-{}", std::process::id()));
    for (n, bytes) in [(1, 64 * GIB), (0, 64 * GIB)] {
        let d = root.join(format!("node{n}/x86"));
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("sgx_total_bytes"), format!("{bytes}\n")).expect("file");
    }
    std::fs::create_dir_all(root.join("node2")).expect("a node without EPC");
    let v = node_epc(&root);
    assert_eq!(
        v.iter().map(|n| (n.node, n.bytes)).collect::<Vec<_>>(),
        [(0, 64 * GIB), (1, 64 * GIB)]
    );
    let _ = std::fs::remove_dir_all(root);
}

/// The holders scan finds a process by the file its fd leads to (stat through
/// `/proc/PID/fd`), names it, and finds no one for a node that does not exist.
#[test]
fn holders_are_found_by_the_file_their_fd_leads_to() {
    use std::path::Path;
    use vepc::probe::holders::scan;

    let node = std::env::temp_dir().join(format!("vepc-holder-{}", std::process::id()));
    std::fs::write(&node, b"").expect("a stand-in device node");
    let stdin = std::fs::File::open(&node).expect("open it");
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdin(stdin)
        .spawn()
        .expect("spawn sleep");
    // Until it has exec'd, the child still bears this test's comm.
    let comm = format!("/proc/{}/comm", child.id());
    while std::fs::read_to_string(&comm).is_ok_and(|c| c.trim_end() != "sleep") {
        std::thread::yield_now();
    }
    let found = scan(Path::new("/proc"), &[&node]);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&node);

    let held: Vec<_> = found
        .holders
        .iter()
        .filter(|h| h.pid == child.id())
        .collect();
    assert_eq!(held.len(), 1, "{found:?}");
    assert_eq!(held[0].comm, "sleep");
    assert_eq!(held[0].fds, [0], "its stdin is the file");
    assert_eq!(held[0].path, node.display().to_string());
    assert!(
        found.holders.iter().all(|h| h.path == held[0].path),
        "only the node asked for"
    );

    let gone = scan(Path::new("/proc"), &[&node]);
    assert!(
        gone.holders.is_empty(),
        "a node that does not exist is held by no one"
    );
}
