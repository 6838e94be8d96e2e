//! Numbers and sizes as docs/SCRIPT.md writes them: a page index or request in
//! decimal or `0x` hexadecimal, a SIZE with an optional K, M, G or T suffix (powers of
//! 1024). The scenario language, `VEPC_EPC`, `vepc preload --epc` and `vepc bench
//! --sections` all read them with these.

/// Why a SIZE or number is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not digits (with an optional `0x`, and for SIZE a K/M/G/T suffix).
    #[error("'{0}' is not a number")]
    NotANumber(String),
    /// Does not fit in 64 bits.
    #[error("'{0}' is too large (at most 2^64 - 1)")]
    Overflow(String),
}

/// Parses a page index or ioctl number: decimal or `0x` hexadecimal.
pub fn parse_number(s: &str) -> Result<u64, NumberError> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(NumberError::NotANumber(s.to_owned()));
    }
    u64::from_str_radix(digits, radix).map_err(|_| NumberError::Overflow(s.to_owned()))
}

/// Parses a SIZE: a number with an optional suffix K, M, G or T (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, NumberError> {
    let shift = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        _ => 0,
    };
    let digits = if shift == 0 { s } else { &s[..s.len() - 1] };
    let n = parse_number(digits).map_err(|e| match e {
        NumberError::NotANumber(_) => NumberError::NotANumber(s.to_owned()),
        NumberError::Overflow(_) => NumberError::Overflow(s.to_owned()),
    })?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| NumberError::Overflow(s.to_owned()))
}
