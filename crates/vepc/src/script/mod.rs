//! The scenario language of `vepc sim` (the project's `SCRIPT.md`): [`parse`] turns a
//! script into validated [`Step`]s, and a [`Runner`] plays them against a fresh model.

mod parse;
mod run;

pub use parse::{
    Command, DEFAULT_EPC, NumberError, ParseError, Script, Step, is_name, parse, parse_number,
    parse_size,
};
pub use run::{Mismatch, Outcome, Report, Runner};

/// Parses `src` and runs it on a fresh model, checking consistency after every step
/// when `check` is set.
pub fn run(src: &str, check: bool) -> Result<Report, ParseError> {
    let script = parse(src)?;
    Ok(Runner::new(&script).check_each_step(check).run(&script))
}
