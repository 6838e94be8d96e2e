//! The model against the plain reference model of the differential test
//! (`tests/reference/`), side by side on the same workload: one scenario script that
//! builds a two-section guest, resets it and closes it. Both parse nothing here: they
//! run the same parsed script. `cargo bench -p vepc --bench baseline`.
//!
//! The reference is written to be obviously right, not fast (it recounts a SECS's
//! children by scanning the whole EPCM), so the ratio is the price of that clarity.

#[path = "../tests/reference/mod.rs"]
mod reference;

use divan::Bencher;
use divan::counter::ItemsCount;
use vepc::script::{Runner, Script, parse};

/// Pages per guest section.
const PAGES: u64 = 2048;

fn workload() -> (Script, u64) {
    let mut s = format!(
        "epc {}K\nopen S0\nmmap S0 {}K\nopen S1\nmmap S1 {}K\n",
        PAGES * 8,
        PAGES * 4,
        PAGES * 4
    );
    let mut encl = 0;
    for (fd, other) in [("S0", "S1"), ("S1", "S0")] {
        let mut at = 0;
        while at + 64 <= PAGES {
            encl += 1;
            // Every fourth enclave keeps its SECS in the other section.
            let (sfd, spage) = if encl % 4 == 0 {
                (other, PAGES - encl / 4)
            } else {
                (fd, at + 63)
            };
            s += &format!("ecreate {sfd} {spage} E{encl}\neadd {fd} {at} E{encl} tcs\n");
            for p in at + 1..at + 63 {
                s += &format!("eadd {fd} {p} E{encl} reg\n");
            }
            s += &format!("einit E{encl}\n");
            at += 64;
        }
    }
    s += "reset S0 S1\nstats\nclose S0\nclose S1\nstats\n";
    let script = parse(&s).expect("valid workload");
    let commands = script.steps.len() as u64;
    (script, commands)
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn model(bencher: Bencher) {
    let (script, n) = workload();
    bencher
        .counter(ItemsCount::new(n))
        .bench_local(|| Runner::new(&script).expect("valid EPC").run(&script));
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn reference(bencher: Bencher) {
    let (script, n) = workload();
    bencher
        .counter(ItemsCount::new(n))
        .bench_local(|| reference::Reference::run(&script));
}

fn main() {
    let (script, _) = workload();
    let model: Vec<String> = Runner::new(&script)
        .expect("valid EPC")
        .run(&script)
        .outcomes
        .into_iter()
        .map(|o| o.result)
        .collect();
    let reference: Vec<String> = reference::Reference::run(&script)
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        model, reference,
        "the two must agree before their speed means anything"
    );
    divan::main();
}
