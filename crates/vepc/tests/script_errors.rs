//! Bad input to `vepc sim`: every class gets a message with line and column, never a
//! panic, and nothing runs.

use proptest::prelude::*;
use vepc::number::parse_size;
use vepc::script::parse;

#[track_caller]
fn rejects(src: &str, line: usize, col: usize, needle: &str) {
    let e = parse(src).expect_err("the script must be rejected");
    assert_eq!((e.line, e.col), (line, col), "{e}");
    assert!(
        e.msg.contains(needle),
        "'{}' does not say '{needle}'",
        e.msg
    );
}

#[test]
fn malformed_lines() {
    rejects(
        "open G\nfrobnicate G\n",
        2,
        1,
        "unknown command 'frobnicate'",
    );
    rejects("open G\nmmap G\n", 2, 8, "needs a SIZE");
    rejects("open G\ntouch G 1 2\n", 2, 11, "unexpected '2'");
    rejects("open G\nmmap G 4K shared\n", 2, 11, "expected `private`");
    rejects("open G\n  eadd G 1 E reg\n", 2, 12, "unknown enclave 'E'");
    rejects(
        "open G\nmmap G 4K\necreate G 0 E\neadd G 1 E data\n",
        4,
        12,
        "`reg` or `tcs`",
    );
    rejects("open 1G\n", 1, 6, "expected an FD name");
    rejects("open G\ntouch G -1\n", 2, 9, "not a number");
    rejects("open G\nioctl G remove_all\n", 2, 9, "not a number");
}

#[test]
fn bad_sizes() {
    rejects("epc 0\n", 1, 5, "non-zero multiple of 4K");
    rejects("epc 512K 6000\n", 1, 10, "not 6000 bytes");
    rejects("epc 99999999999T\n", 1, 5, "too large");
    rejects("epc 18446744073709551616\n", 1, 5, "too large");
    rejects("epc 12Q\n", 1, 5, "not a number");
    rejects("epc 16T 16T\n", 1, 1, "at most");
    // Valid in form, but its model would not fit this machine (24 GiB here; 15 TiB of
    // EPC needs 30 GiB of EPCM): a clear error, not an allocation abort.
    rejects("epc 15T\n", 1, 1, "model memory");
    rejects("epc\n", 1, 5, "needs a SIZE");
    rejects("open G\nmmap G 0x\n", 2, 8, "not a number");
}

#[test]
fn misplaced_commands() {
    rejects("open G\nepc 1M\n", 2, 1, "before any other command");
    rejects("epc 1M\nepc 1M\n", 2, 1, "before any other command");
    rejects("open G\nkernel 5.15\n", 2, 1, "before the first `open`");
    rejects("kernel five\n", 1, 8, "VERSION");
    rejects(
        "# nothing yet\nexpect ok\n",
        2,
        1,
        "needs a command before it",
    );
}

#[test]
fn unknown_names() {
    rejects("touch G 0\n", 1, 7, "unknown FD 'G'");
    rejects("open G\nclose H\n", 2, 7, "unknown FD 'H'");
    rejects("open G\nreset G H\n", 2, 9, "unknown FD 'H'");
    rejects("einit Vault\n", 1, 7, "unknown enclave 'Vault'");
    rejects("open G\neenter E G 0\n", 2, 8, "unknown enclave 'E'");
}

#[test]
fn comments_and_fault_words() {
    let s = parse("open G # a comment\n\t# only a comment\nmmap G 4K#tight\nexpect #GP # the loser\nexpect #PF\n")
        .expect("valid");
    let texts: Vec<_> = s.steps.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["open G", "mmap G 4K", "expect #GP", "expect #PF"]);
    // Only right after `expect` is a #WORD a result; elsewhere it starts a comment.
    assert_eq!(
        parse("open G #GP\n").expect("valid").steps[0].text,
        "open G"
    );
}

#[test]
fn sizes_and_numbers() {
    assert_eq!(parse_size("4K"), Ok(4096));
    assert_eq!(parse_size("0x10M"), Ok(16 << 20));
    assert_eq!(parse_size("1T"), Ok(1 << 40));
    assert_eq!(parse_size("5000"), Ok(5000));
    assert!(parse_size("16777216T").is_err(), "2^64 overflows");
    assert!(parse_size("").is_err() && parse_size("K").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary text is either a valid script or an error that points inside it.
    #[test]
    fn parse_never_panics(src in "\\PC{0,200}") {
        if let Err(e) = parse(&src) {
            let lines: Vec<_> = src.lines().collect();
            prop_assert!(e.line >= 1 && e.line <= lines.len());
            prop_assert!(e.col >= 1 && e.col <= lines[e.line - 1].chars().count() + 2);
        }
    }

    /// Scripts made of plausible words run to the end without panicking.
    #[test]
    fn plausible_scripts_run(words in proptest::collection::vec(
        prop_oneof![
            Just("open G"), Just("open H"), Just("mmap G 16K"), Just("mmap H 8K"),
            Just("touch G 1"), Just("ecreate G 0 E"), Just("eadd G 1 E tcs"),
            Just("eadd H 0 E reg"), Just("epa G 2"), Just("einit E"), Just("eenter E G 1"),
            Just("eexit E G 1"), Just("eremove G 0"), Just("eremove H 0"),
            Just("ioctl G remove-all"), Just("ioctl H 0xa404 1"), Just("close G"),
            Just("close H"), Just("reset G H"), Just("stats"),
        ], 0..60)) {
        let src = format!("epc 32K\n{}\n", words.join("\n"));
        if let Ok(report) = vepc::script::run(&src, true) {
            prop_assert!(report.inconsistencies.is_empty(), "{:?}", report.inconsistencies);
        }
    }
}
