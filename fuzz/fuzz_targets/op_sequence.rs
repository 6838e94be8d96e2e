//! Operation sequences decoded from the fuzzer's bytes, run on the model with the
//! consistency check after every step and compared, result by result, with the plain
//! reference model of the differential test.
#![no_main]

#[path = "../../crates/vepc/tests/reference/mod.rs"]
mod reference;

use libfuzzer_sys::fuzz_target;

const FDS: [&str; 3] = ["A", "B", "C"];
const ENCL: [&str; 3] = ["X", "Y", "Z"];
const REQS: [&str; 6] = [
    "remove-all",
    "remove-all 1",
    "0xa405",
    "0x5451",
    "0x10000a404",
    "remove-all",
];
const SIZES: [&str; 4] = ["32K", "16K", "0", "5000"];

/// Two bytes per operation: the operation, then its operands.
fn script(data: &[u8]) -> String {
    let epc = ["16K", "32K 32K", "64K", "48K"][usize::from(data.first().copied().unwrap_or(0) % 4)];
    let kernel = match data.get(1).copied().unwrap_or(0) % 16 {
        0 => "kernel 5.15\n",
        1 => "kernel 5.12\n",
        _ => "",
    };
    let mut s = format!("epc {epc}\n{kernel}");
    for fd in FDS {
        s += &format!("open {fd}\nmmap {fd} 32K\n");
    }
    for (e, encl) in ENCL.iter().enumerate() {
        s += &format!("ecreate A {} {encl}\n", 7 - e);
    }
    for pair in data.get(2..).unwrap_or_default().chunks_exact(2) {
        let (op, arg) = (pair[0], usize::from(pair[1]));
        let (fd, page, encl) = (FDS[arg % 3], (arg / 3) % 8, ENCL[(arg / 24) % 3]);
        s += &match op % 16 {
            0 => format!("open {fd}\nmmap {fd} {}", SIZES[(arg / 3) % 4]),
            1 => format!(
                "mmap {fd} {}{}",
                SIZES[(arg / 3) % 4],
                if arg > 200 { " private" } else { "" }
            ),
            2 => format!("touch {fd} {page}"),
            3 => format!("ecreate {fd} {page} {encl}"),
            4 | 5 => format!("eadd {fd} {page} {encl} reg"),
            6 => format!("eadd {fd} {page} {encl} tcs"),
            7 => format!("epa {fd} {page}"),
            8 => format!("einit {encl}"),
            9 => format!("eenter {encl} {fd} {page}"),
            10 => format!("eexit {encl} {fd} {page}"),
            11 => format!("eremove {fd} {page}"),
            12 | 13 => format!("ioctl {fd} {}", REQS[(arg / 3) % 6]),
            14 => format!("close {fd}"),
            _ => format!("reset {fd} {}", FDS[(arg / 3 + 1) % 3]),
        };
        s += "\nstats\n";
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let src = script(data);
    let script = vepc::script::parse(&src).expect("generated scripts are valid");
    let report = vepc::script::Runner::new(&script)
        .expect("valid EPC")
        .check_each_step(true)
        .run(&script);
    assert!(
        report.inconsistencies.is_empty(),
        "{:?}\n{src}",
        report.inconsistencies
    );
    let model: Vec<(usize, String)> = report
        .outcomes
        .iter()
        .map(|o| (o.line, o.result.clone()))
        .collect();
    let reference = reference::Reference::run(&script);
    assert_eq!(model, reference, "model and reference differ\n{src}");
});
