//! Scripts on instances opened outside the script: what the LD_PRELOAD shim does with
//! `VEPC_SCRIPT` on a program's own instances.

use std::sync::Arc;

use vepc::abi::{Errno, KernelVersion};
use vepc::device::ModelSection;
use vepc::driver::Device;
use vepc::model::Epc;
use vepc::script::{Runner, parse, parse_attached};

const SPLIT: &str = "ecreate S0 0 E\neadd S1 0 E tcs\neadd S1 1 E reg\neinit E\n";

fn device(pages: u64) -> Arc<Device> {
    Device::new(
        Epc::new(&[pages * 4096]).expect("a small EPC"),
        KernelVersion::DEFAULT,
    )
}

#[test]
fn attached_names_are_bound_before_the_first_line() {
    let err = parse(SPLIT).expect_err("S0 is unbound in a plain script");
    assert_eq!((err.line, err.col), (1, 9));
    let script = parse_attached(SPLIT, &["S0", "S1"]).expect("bound");
    assert_eq!(script.steps.len(), 4);
    // Only the names given are bound.
    let err = parse_attached(SPLIT, &["S0"]).expect_err("S1 is not bound");
    assert_eq!(err.line, 2);
    assert!(err.msg.contains("unknown FD 'S1'"), "{}", err.msg);
    // `kernel` may still come first: binding names is not an `open`.
    parse_attached("kernel 5.15\ntouch S0 0\n", &["S0"]).expect("kernel before any open");
}

#[test]
fn a_script_drives_instances_opened_outside_it() {
    let dev = device(64);
    let s0 = ModelSection::open(&dev, 8 * 4096).expect("S0");
    let s1 = ModelSection::open(&dev, 8 * 4096).expect("S1");
    let (v0, v1) = (Arc::clone(s0.file.vepc()), Arc::clone(s1.file.vepc()));
    let script = parse_attached(SPLIT, &["S0", "S1"]).expect("valid");
    let report =
        Runner::attach(Arc::clone(&dev), vec![("S0".into(), s0), ("S1".into(), s1)]).run(&script);
    assert!(report.passed());
    let results: Vec<&str> = report.outcomes.iter().map(|o| o.result.as_str()).collect();
    assert_eq!(results, ["ok", "ok", "ok", "ok"]);
    // The work happened on the instances the caller still holds.
    assert_eq!((v0.present_pages(), v0.valid_pages()), (1, 1));
    assert_eq!((v1.present_pages(), v1.valid_pages()), (2, 2));
    // The protocol's first round keeps the SECS, the second removes it.
    assert_eq!(v0.remove_all(), Ok(1));
    assert_eq!(v1.remove_all(), Ok(0));
    assert_eq!(v1.valid_pages(), 0);
    assert_eq!(v0.valid_pages(), 1);
    assert_eq!(v0.remove_all(), Ok(0));
    assert_eq!(v0.valid_pages(), 0);
    // The runner's handles are gone with it: only ours keep the instances.
    assert_eq!(Arc::strong_count(&v0), 1);
}

#[test]
fn closing_an_attached_name_drops_only_the_scripts_handle() {
    let dev = device(16);
    let s0 = ModelSection::open(&dev, 4 * 4096).expect("S0");
    let v0 = Arc::clone(s0.file.vepc());
    let script = parse_attached("touch S0 0\nclose S0\nstats\n", &["S0"]).expect("valid");
    let report = Runner::attach(Arc::clone(&dev), vec![("S0".into(), s0)]).run(&script);
    assert_eq!(report.outcomes[2].result, "free=15 used=1 zombie=0");
    assert_eq!(v0.present_pages(), 1);
}

#[test]
fn errno_names_read_back() {
    for e in [Errno::EBUSY, Errno::ENOTTY, Errno::EINVAL, Errno::ENOENT] {
        let name = e.name().expect("named");
        assert_eq!(Errno::from_name(name), Some(e));
    }
    assert_eq!(Errno::from_name("EWHAT"), None);
    assert_eq!(
        Errno::from_name("ebusy"),
        None,
        "names are upper case, as errno(3) has them"
    );
}
