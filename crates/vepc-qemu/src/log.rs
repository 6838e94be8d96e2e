//! The shim's log (`VEPC_LOG`, one JSON object per line) as a reset protocol reads:
//! the REMOVE_ALL calls, grouped into resets and rounds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

/// `SGX_IOC_VEPC_REMOVE_ALL` as the log writes a request.
const REMOVE_ALL: &str = "0xa404";

/// Every line of a log file (none if it does not exist yet). A line that is not
/// JSON is kept as a JSON string, so nothing a reader counts goes missing silently.
pub fn read(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::from(l)))
        .collect()
}

/// What one REMOVE_ALL answered: the count of SECS pages left, or an errno name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// The ioctl returned this count.
    Count(u64),
    /// It failed with this errno (`EBUSY`, …).
    Errno(String),
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Errno(e) => f.write_str(e),
        }
    }
}

/// One REMOVE_ALL call, as the shim logged it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Call {
    /// The instance, `S0`, `S1`, … in the order QEMU mapped them.
    pub instance: String,
    /// Its answer.
    pub answer: Answer,
    /// The third argument as the kernel would have received it.
    pub arg: u64,
    /// Whether `VEPC_INJECT` forced the answer.
    pub injected: bool,
    /// The instance's pages not uninitialized after the call (0: fully reset).
    pub valid_pages: u64,
    /// The instance's pages faulted in.
    pub present_pages: u64,
}

impl Call {
    /// The REMOVE_ALL call a log line records, if it records one.
    pub fn from_line(l: &Value) -> Option<Self> {
        if l["call"] != "ioctl" || l["request"] != REMOVE_ALL {
            return None;
        }
        let answer = match &l["result"] {
            Value::Number(n) => Answer::Count(n.as_u64()?),
            Value::String(s) => Answer::Errno(s.clone()),
            _ => return None,
        };
        let arg = l["arg"]
            .as_str()
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())?;
        Some(Self {
            instance: l["instance"].as_str().unwrap_or("?").to_owned(),
            answer,
            arg,
            injected: l["injected"] == true,
            valid_pages: l["valid_pages"].as_u64()?,
            present_pages: l["present_pages"].as_u64()?,
        })
    }

    /// The instance's number (`S1` → 1).
    fn number(&self) -> Option<u32> {
        self.instance.strip_prefix('S')?.parse().ok()
    }
}

impl fmt::Display for Call {
    /// `S0=1`, `S1=EBUSY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.instance, self.answer)
    }
}

/// The REMOVE_ALL calls of one machine reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reset {
    /// The calls, in order.
    pub calls: Vec<Call>,
}

impl Reset {
    /// The calls of `lines` that are REMOVE_ALLs.
    pub fn from_lines(lines: &[Value]) -> Self {
        Self {
            calls: lines.iter().filter_map(Call::from_line).collect(),
        }
    }

    /// The calls grouped into rounds: a round visits sections in increasing order, so
    /// a call on a section at or below the previous call's starts a new one.
    pub fn rounds(&self) -> Vec<Vec<&Call>> {
        let mut rounds: Vec<Vec<&Call>> = Vec::new();
        for c in &self.calls {
            let continues = rounds
                .last()
                .and_then(|r| r.last())
                .is_some_and(|prev| prev.number() < c.number());
            match rounds.last_mut() {
                Some(r) if continues => r.push(c),
                _ => rounds.push(vec![c]),
            }
        }
        rounds
    }

    /// The rounds as text, `[S0=1 S1=0] [S0=0 S1=0]`, or `no REMOVE_ALL`.
    pub fn rounds_text(&self) -> String {
        let rounds = self.rounds();
        if rounds.is_empty() {
            return "no REMOVE_ALL".into();
        }
        rounds
            .iter()
            .map(|r| {
                let calls: Vec<String> = r.iter().map(|c| c.to_string()).collect();
                format!("[{}]", calls.join(" "))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Each instance's valid pages after its last call of this reset.
    pub fn valid_after(&self) -> BTreeMap<String, u64> {
        self.calls
            .iter()
            .map(|c| (c.instance.clone(), c.valid_pages))
            .collect()
    }

    /// Whether every instance the reset called ended with no valid page.
    pub fn complete(&self) -> bool {
        !self.calls.is_empty() && self.valid_after().values().all(|&v| v == 0)
    }

    /// `valid pages after: S0=1 S1=0`.
    pub fn valid_text(&self) -> String {
        let v: Vec<String> = self
            .valid_after()
            .iter()
            .map(|(i, n)| format!("{i}={n}"))
            .collect();
        format!("valid pages after: {}", v.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(instance: &str, result: Value, valid: u64) -> Value {
        json!({"call": "ioctl", "instance": instance, "request": "0xa404", "arg": "0x0",
               "result": result, "injected": false, "present_pages": 4, "valid_pages": valid})
    }

    #[test]
    fn calls_group_into_rounds_by_section_order() {
        let lines = vec![
            json!({"call": "mmap", "instance": "S0"}),
            line("S0", json!(1), 1),
            line("S1", json!(0), 0),
            line("S0", json!(0), 0),
            line("S1", json!(0), 0),
            line("S0", json!("ENOTTY"), 3),
            line("S0", json!("ENOTTY"), 3),
            json!({"call": "ioctl", "request": "0x5451", "result": 0}),
        ];
        let r = Reset::from_lines(&lines);
        assert_eq!(
            r.rounds_text(),
            "[S0=1 S1=0] [S0=0 S1=0] [S0=ENOTTY] [S0=ENOTTY]"
        );
        assert_eq!(r.valid_text(), "valid pages after: S0=3 S1=0");
        assert!(!r.complete());
        assert_eq!(r.calls[4].answer, Answer::Errno("ENOTTY".into()));
        assert_eq!(Reset::default().rounds_text(), "no REMOVE_ALL");
        assert!(!Reset::default().complete(), "no call resets nothing");
    }

    #[test]
    fn the_argument_is_read_as_hex() {
        let mut l = line("S2", json!(0), 0);
        l["arg"] = json!("0xffffffff");
        let c = Call::from_line(&l).expect("a REMOVE_ALL line");
        assert_eq!((c.arg, c.number()), (0xffff_ffff, Some(2)));
        assert_eq!(c.to_string(), "S2=0");
    }
}
