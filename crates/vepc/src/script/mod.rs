//! The scenario language of `vepc sim` (the project's `docs/SCRIPT.md`): [`parse`] turns a
//! script into validated [`Step`]s, and a [`Runner`] plays them against a fresh model.

mod parse;
mod run;
mod source;

pub use parse::{Command, DEFAULT_EPC, ParseError, Script, Step, is_name, parse, parse_attached};
pub use run::{Mismatch, Outcome, Report, Runner};
pub use source::{
    MAX_LINE_BYTES, MAX_NAME_CHARS, MAX_SCRIPT_BYTES, SourceError, escape, read_bounded, read_file,
};

/// Parses `src` and runs it on a fresh model, checking consistency after every step
/// when `check` is set.
pub fn run(src: &str, check: bool) -> Result<Report, ParseError> {
    let script = parse(src)?;
    // The parser has checked the `epc` line by the same rules.
    let runner = Runner::new(&script).map_err(|e| ParseError {
        line: 1,
        col: 1,
        msg: e.to_string(),
    })?;
    Ok(runner.check_each_step(check).run(&script))
}
