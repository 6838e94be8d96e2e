//! Fault injection: `VEPC_INJECT` makes chosen REMOVE_ALL calls fail as a busy or old
//! kernel would, without building the guest state that causes it, and gives the host
//! around the program the state docs/SEMANTICS.md §7 describes before the program
//! starts.
//!
//! Rules are separated by commas; each is one of
//!
//! ```text
//! [S<n>:]remove-all=ERRNO[@FIRST[-LAST]]
//! poison=N[-M]
//! host-enclave=SIZE
//! ```
//!
//! `poison=N-M` (inclusive, 0-based over all sections, as the scenario language's
//! `poison N`) makes those EPC pages' memory fail, found asynchronously while they are
//! free, when the shim starts: from 5.17 they go to the poison lists and are never
//! handed out; before 5.17 they stay in service, and the touch that gets one dies of
//! `SIGBUS`. `host-enclave=SIZE` (a docs/SCRIPT.md SIZE) builds a host enclave of that
//! size through the model's `/dev/sgx_enclave` when the shim starts, after the
//! poisoning: its pages are ksgxd's to write back when the program's faults find no
//! free page. Both are logged (`"call":"inject"`), with their answers.
//!
//! - `S<n>:` limits the rule to one instance (named in map order); without it the rule
//!   counts the process's REMOVE_ALL calls over all instances.
//! - `ERRNO` is an errno name: `EBUSY` (the kernel's answer when an EREMOVE failed for a
//!   reason other than a SECS with children) and `ENOTTY` (a kernel before 5.16) are
//!   the two the issue asks for; any name the model knows is accepted.
//! - `@FIRST-LAST` (1-based, inclusive) picks which of the counted calls fail; without
//!   it every call does. `@2` is the second call only.
//!
//! An injected failure does no work: the model is not called, as if the kernel had
//! failed before its first EREMOVE. The first rule that matches wins.

use vepc::abi::Errno;

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Only this instance (its map-order number), or all.
    pub instance: Option<usize>,
    /// The answer.
    pub errno: Errno,
    /// Which counted calls, 1-based and inclusive.
    pub calls: std::ops::RangeInclusive<u64>,
}

/// What the host does before the program starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// An asynchronous memory error in each EPC page of the range.
    Poison(std::ops::RangeInclusive<u64>),
    /// A host enclave of this many bytes.
    HostEnclave(u64),
}

/// All rules, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Injections {
    rules: Vec<Rule>,
    at_start: Vec<AtStart>,
}

/// A rule that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rule '{rule}': {why} (the forms are [S<n>:]remove-all=ERRNO[@FIRST[-LAST]], \
     poison=N[-M] and host-enclave=SIZE)"
)]
pub struct InjectError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub why: String,
}

impl Injections {
    /// Reads `VEPC_INJECT`.
    pub fn parse(value: &str) -> Result<Self, InjectError> {
        let mut out = Self::default();
        for rule in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match parse_at_start(rule)? {
                Some(a) => out.at_start.push(a),
                None => out.rules.push(parse_rule(rule)?),
            }
        }
        Ok(out)
    }

    /// Checks that every `poison=` range lies in an EPC of `pages` pages: a page the
    /// EPC does not have is no input the shim can use (and `0-18446744073709551615`
    /// would be walked page by page).
    pub fn within(self, pages: u64) -> Result<Self, InjectError> {
        for a in &self.at_start {
            if let AtStart::Poison(r) = a
                && *r.end() >= pages
            {
                return Err(error(
                    &format!("poison={}-{}", r.start(), r.end()),
                    &format!(
                        "the EPC has {pages} pages (0 to {}); poison pages within it",
                        pages.saturating_sub(1)
                    ),
                ));
            }
        }
        Ok(self)
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.at_start.is_empty()
    }

    /// What the host does before the program starts, in the order written.
    pub fn at_start(&self) -> &[AtStart] {
        &self.at_start
    }

    /// The forced answer for a REMOVE_ALL on instance `instance`, which is that
    /// instance's `nth_here` call and the process's `nth_all` (both 1-based).
    pub fn answer(&self, instance: Option<usize>, nth_here: u64, nth_all: u64) -> Option<Errno> {
        self.rules.iter().find_map(|r| {
            let nth = match r.instance {
                Some(i) if Some(i) == instance => nth_here,
                Some(_) => return None,
                None => nth_all,
            };
            r.calls.contains(&nth).then_some(r.errno)
        })
    }
}

fn error(rule: &str, why: &str) -> InjectError {
    InjectError {
        rule: rule.to_owned(),
        why: why.to_owned(),
    }
}

/// A `poison=` or `host-enclave=` rule; `None` for any other.
fn parse_at_start(rule: &str) -> Result<Option<AtStart>, InjectError> {
    let err = |why: &str| error(rule, why);
    let (what, value) = match rule.split_once('=') {
        Some((w @ ("poison" | "host-enclave"), v)) => (w, v),
        _ => return Ok(None),
    };
    let number = |s: &str| vepc::number::parse_number(s).ok();
    if what == "poison" {
        let (first, last) = match value.split_once('-') {
            Some((a, b)) => (number(a), number(b)),
            None => (number(value), number(value)),
        };
        return match (first, last) {
            (Some(a), Some(b)) if a <= b => Ok(Some(AtStart::Poison(a..=b))),
            _ => Err(err(
                "EPC pages are numbered from 0: poison=N or poison=FIRST-LAST",
            )),
        };
    }
    match vepc::number::parse_size(value) {
        Ok(size) if size > vepc::driver::MAX_HOST_ENCLAVE_BYTES => Err(err(
            "a host enclave is at most 64G (the model builds it page by page)",
        )),
        Ok(size) if size > 0 => Ok(Some(AtStart::HostEnclave(size))),
        _ => Err(err(
            "a host enclave's SIZE is bytes with an optional K, M, G or T",
        )),
    }
}

fn parse_rule(rule: &str) -> Result<Rule, InjectError> {
    let err = |why: &str| error(rule, why);
    let (instance, rest) = match rule.split_once(':') {
        Some((name, rest)) => {
            let n = name
                .strip_prefix('S')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| err("an instance is named S0, S1, …"))?;
            (Some(n), rest)
        }
        None => (None, rule),
    };
    let (what, answer) = rest
        .split_once('=')
        .ok_or_else(|| err("expected remove-all=ERRNO"))?;
    if what != "remove-all" {
        return Err(err(if instance.is_some() {
            "only remove-all is per instance"
        } else {
            "only remove-all, poison and host-enclave can be injected"
        }));
    }
    let (name, calls) = match answer.split_once('@') {
        Some((name, calls)) => (name, Some(calls)),
        None => (answer, None),
    };
    let errno = Errno::from_name(name).ok_or_else(|| err("unknown errno name"))?;
    let calls = match calls {
        None => 1..=u64::MAX,
        Some(c) => {
            let num = |s: &str| s.parse::<u64>().ok().filter(|&n| n >= 1);
            let (first, last) = match c.split_once('-') {
                Some((a, b)) => (num(a), num(b)),
                None => (num(c), num(c)),
            };
            match (first, last) {
                (Some(a), Some(b)) if a <= b => a..=b,
                _ => return Err(err("calls are counted from 1: @N or @FIRST-LAST")),
            }
        }
    };
    Ok(Rule {
        instance,
        errno,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_unless_limited() {
        let i = Injections::parse("remove-all=EBUSY").expect("valid");
        assert_eq!(i.answer(Some(0), 1, 1), Some(Errno::EBUSY));
        assert_eq!(i.answer(Some(3), 9, 40), Some(Errno::EBUSY));
        assert_eq!(i.answer(None, 1, 1), Some(Errno::EBUSY));
    }

    #[test]
    fn instance_and_call_ranges() {
        let i = Injections::parse("S1:remove-all=ENOTTY@2-3, remove-all=EBUSY@1").expect("valid");
        // The process's first call, on S0: the second rule.
        assert_eq!(i.answer(Some(0), 1, 1), Some(Errno::EBUSY));
        // S1's first call is the process's second: no rule.
        assert_eq!(i.answer(Some(1), 1, 2), None);
        assert_eq!(i.answer(Some(1), 2, 4), Some(Errno::ENOTTY));
        assert_eq!(i.answer(Some(1), 3, 6), Some(Errno::ENOTTY));
        assert_eq!(i.answer(Some(1), 4, 8), None);
        assert_eq!(i.answer(Some(0), 2, 3), None);
        // A rule for S1 never answers for an unnamed (never mapped) instance.
        let i = Injections::parse("S1:remove-all=EBUSY").expect("valid");
        assert_eq!(i.answer(None, 1, 1), None);
    }

    #[test]
    fn host_state_at_start_in_order() {
        let i =
            Injections::parse("poison=0x10-0x11, remove-all=EBUSY@1, host-enclave=8M, poison=3")
                .expect("valid");
        assert_eq!(
            i.at_start(),
            [
                AtStart::Poison(16..=17),
                AtStart::HostEnclave(8 << 20),
                AtStart::Poison(3..=3),
            ]
        );
        // The REMOVE_ALL rule is still one.
        assert_eq!(i.answer(Some(0), 1, 1), Some(Errno::EBUSY));
        assert!(
            !Injections::parse("host-enclave=4K")
                .expect("valid")
                .is_empty()
        );
    }

    #[test]
    fn empty_means_none() {
        assert!(Injections::parse("").expect("valid").is_empty());
        assert!(Injections::parse(" , ").expect("valid").is_empty());
    }

    #[test]
    fn bad_rules_say_why() {
        for (rule, why) in [
            ("remove-all", "expected remove-all=ERRNO"),
            ("mmap=ENOMEM", "only remove-all, poison and host-enclave"),
            ("S0:poison=3", "only remove-all is per instance"),
            ("poison=x", "numbered from 0"),
            ("poison=5-2", "numbered from 0"),
            ("poison=", "numbered from 0"),
            ("host-enclave=0", "SIZE"),
            ("host-enclave=12Q", "SIZE"),
            ("remove-all=EWHAT", "unknown errno"),
            ("X1:remove-all=EBUSY", "S0, S1"),
            ("remove-all=EBUSY@0", "counted from 1"),
            ("remove-all=EBUSY@3-2", "counted from 1"),
            ("remove-all=EBUSY@x", "counted from 1"),
        ] {
            let e = Injections::parse(rule).expect_err(rule);
            assert!(e.to_string().contains(why), "{rule}: {e}");
        }
    }
}
