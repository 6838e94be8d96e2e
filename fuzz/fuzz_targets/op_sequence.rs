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
const HOSTS: [&str; 2] = ["H", "I"];
const HOST_SIZES: [&str; 4] = ["4K", "16K", "40K", "8K"];
const QUERIES: [&str; 5] = ["reclaimer", "svn", "microcode 3", "no-entropy 2", "stats"];

/// The first byte: the EPC, and how many pages fail before any is handed out. The
/// second: the kernel, and the host's CPU (EUPDATESVN) and ksgxd. Then two bytes per
/// operation: the operation, then its operands.
///
/// As in the differential test, a page is named by its physical number only before
/// any page is handed out (the model's free-page order is its own, see
/// `crates/vepc/tests/differential.rs`), later through a mapping; before 5.17 a bad
/// page goes back into service, so there a later error is a `touch` instead.
fn script(data: &[u8]) -> String {
    let first = data.first().copied().unwrap_or(0);
    let second = data.get(1).copied().unwrap_or(0);
    let epc = ["16K", "32K 32K", "64K", "48K"][usize::from(first % 4)];
    let (kernel, isolates) = match second % 16 {
        0 => ("kernel 5.15\n", false),
        1 => ("kernel 5.12\n", false),
        2 => ("kernel 6.19\n", true),
        // The proposed fixes (docs/findings/).
        3 => ("kernel 6.18+poison-count+zombie-retry\n", true),
        4 => ("kernel 6.19+poison-count+zombie-retry+zombie-drain\n", true),
        _ => ("", true),
    };
    let mut s = format!("epc {epc}\n{kernel}");
    if second & 0x10 != 0 {
        s += "cpu eupdatesvn\nmicrocode 2\n";
    }
    if second & 0x20 != 0 {
        s += "ksgxd lazy\n";
    }
    if isolates {
        // Found by the boot sanitize pass (uncounted as free) or after it.
        let when = if second & 0x40 != 0 { " boot" } else { "" };
        for k in 0..(first / 4) % 3 {
            s += &format!("poison {}{when}\nstats\n", first / 16 + k * 5);
        }
    }
    let mut hosts = [false; 2];
    for fd in FDS {
        s += &format!("open {fd}\nmmap {fd} 32K\n");
    }
    for (e, encl) in ENCL.iter().enumerate() {
        s += &format!("ecreate A {} {encl}\n", 7 - e);
    }
    for pair in data.get(2..).unwrap_or_default().chunks_exact(2) {
        let (op, arg) = (pair[0], usize::from(pair[1]));
        let (fd, page, encl) = (FDS[arg % 3], (arg / 3) % 8, ENCL[(arg / 24) % 3]);
        let host = arg % 2;
        s += &match op % 22 {
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
            15 => format!("reset {fd} {}", FDS[(arg / 3 + 1) % 3]),
            16 => format!("{} {fd} {page}", if isolates { "poison" } else { "touch" }),
            17 | 18 => {
                hosts[host] = true;
                format!("host-enclave {} {}", HOSTS[host], HOST_SIZES[(arg / 2) % 4])
            }
            19 => {
                // A host-close names an enclave an earlier host-enclave bound.
                let build = if hosts[host] {
                    String::new()
                } else {
                    format!("host-enclave {} 16K\n", HOSTS[host])
                };
                hosts[host] = true;
                format!("{build}host-close {}", HOSTS[host])
            }
            _ => QUERIES[arg % 5].to_owned(),
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
