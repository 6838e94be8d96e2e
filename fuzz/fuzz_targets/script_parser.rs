//! The script parser on arbitrary input: it must never panic, must point inside the
//! text when it rejects it, and what it accepts must read back the same: the commands
//! of the normalized text (`Step::text`) equal the original commands.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match vepc::script::parse(src) {
        Err(e) => {
            let lines: Vec<&str> = src.lines().collect();
            assert!(e.line >= 1 && e.line <= lines.len(), "{e}");
            assert!(
                e.col >= 1 && e.col <= lines[e.line - 1].chars().count() + 2,
                "{e}"
            );
        }
        Ok(script) => {
            let normalized: String = script
                .steps
                .iter()
                .map(|s| format!("{}\n", s.text))
                .collect();
            let again = vepc::script::parse(&normalized).expect("normalized text parses");
            let a: Vec<_> = script.steps.iter().map(|s| &s.command).collect();
            let b: Vec<_> = again.steps.iter().map(|s| &s.command).collect();
            assert_eq!(a, b, "normalized text reads differently");
        }
    }
});
