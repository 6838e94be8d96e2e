//! Reading a script, with the bounds every input has: a script is text of at most
//! [`MAX_SCRIPT_BYTES`], whose lines are at most [`MAX_LINE_BYTES`] long and whose
//! names at most [`MAX_NAME_CHARS`] characters. `vepc sim` and the shim's
//! `VEPC_SCRIPT` read through here: an endless source (`/dev/zero`) is refused after
//! the bound, not read until memory runs out.

use std::io::Read;

/// The largest script, in bytes (1 MiB: scenarios are a few hundred lines).
pub const MAX_SCRIPT_BYTES: usize = 1 << 20;
/// The longest line, in bytes.
pub const MAX_LINE_BYTES: usize = 4096;
/// The longest FD, enclave or host enclave name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Why a script could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// More than [`MAX_SCRIPT_BYTES`].
    #[error("larger than {MAX_SCRIPT_BYTES} bytes (1 MiB), the most a script may be")]
    TooLarge,
    /// Not UTF-8 text.
    #[error("not UTF-8 text (byte {at})")]
    NotText {
        /// The first byte that is not.
        at: usize,
    },
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads a script from `source`: at most [`MAX_SCRIPT_BYTES`] and one more byte are
/// read, so an endless source costs no more than that.
pub fn read_bounded(source: impl Read) -> Result<String, SourceError> {
    let mut bytes = Vec::new();
    source
        .take(MAX_SCRIPT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_SCRIPT_BYTES {
        return Err(SourceError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|e| SourceError::NotText {
        at: e.utf8_error().valid_up_to(),
    })
}

/// [`read_bounded`] of the file at `path`.
pub fn read_file(path: &std::path::Path) -> Result<String, SourceError> {
    read_bounded(std::fs::File::open(path)?)
}

/// `text` with every control character shown as an escape (`\x1b`, `\0`, `\t`):
/// what a message may quote of a script, so that the script cannot drive the
/// terminal that shows the message.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\0' => out.push_str("\\0"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_source_stops_at_the_bound() {
        let zeroes = std::io::repeat(0);
        assert!(matches!(read_bounded(zeroes), Err(SourceError::TooLarge)));
        let exact = std::io::repeat(b'#').take(MAX_SCRIPT_BYTES as u64);
        assert_eq!(
            read_bounded(exact).map(|s| s.len()).ok(),
            Some(MAX_SCRIPT_BYTES)
        );
        let bad = [b'o', b'k', 0xff];
        assert!(matches!(
            read_bounded(&bad[..]),
            Err(SourceError::NotText { at: 2 })
        ));
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\u{1b}[31mb\0"), "a\\x1b[31mb\\0");
        assert_eq!(escape("\u{9b}"), "\\x9b", "C1 controls too");
    }
}
