//! Parsing and static validation of a scenario script (docs/SCRIPT.md "Syntax").
//!
//! A script that fails here is not run at all (`vepc sim` exits 2), so every check
//! that can be made without running it is made here: the shape of each command, the
//! form of names, sizes and numbers, where `epc` and `kernel` may stand, and that each
//! FD and enclave name was bound by an earlier `open` or `ecreate`.
//!
//! Comments: `#` starts a comment, with one exception the language needs: right after
//! `expect`, a fault mnemonic such as `#GP` or `#PF` is the expected result.

use std::collections::HashSet;
use std::fmt;

use super::source::{MAX_LINE_BYTES, MAX_NAME_CHARS};
use crate::abi::{KernelVersion, PAGE_SIZE};
use crate::model::{AddType, Epc};
use crate::number::{parse_number, parse_size};

/// A parsed, validated script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// EPC section sizes in bytes (`epc`, or the default 128M).
    pub epc: Vec<u64>,
    /// The kernel the device behaves like (`kernel`, or the default).
    pub kernel: KernelVersion,
    /// Every command, in order.
    pub steps: Vec<Step>,
}

/// One command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line number.
    pub line: usize,
    /// The command's words joined by single spaces, without its comment.
    pub text: String,
    /// What it does.
    pub command: Command,
}

/// A scenario command (docs/SCRIPT.md's table).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Command {
    Epc(Vec<u64>),
    Kernel(KernelVersion),
    Open(String),
    Mmap {
        fd: String,
        size: u64,
        private: bool,
    },
    Touch {
        fd: String,
        page: u64,
    },
    Ecreate {
        fd: String,
        page: u64,
        encl: String,
    },
    Eadd {
        fd: String,
        page: u64,
        encl: String,
        ty: AddType,
    },
    Epa {
        fd: String,
        page: u64,
    },
    Einit {
        encl: String,
    },
    Eenter {
        encl: String,
        fd: String,
        page: u64,
    },
    Eexit {
        encl: String,
        fd: String,
        page: u64,
    },
    Eremove {
        fd: String,
        page: u64,
    },
    Ioctl {
        fd: String,
        request: u64,
        arg: u64,
    },
    Close(String),
    Reset(Vec<String>),
    Stats,
    Expect(String),
    /// `poison N`: an uncorrected memory error in EPC page N, found asynchronously.
    PoisonPage(u64),
    /// `poison N boot`: the same, reported before ksgxd's boot sanitize pass reached
    /// the page: it goes to the poison list uncounted in `sgx_nr_free_pages`.
    PoisonBoot(u64),
    /// `poison FD PAGE`: the same in the EPC page behind that page of the mapping.
    Poison {
        fd: String,
        page: u64,
    },
    /// `host-enclave NAME SIZE`: a host process builds an enclave of SIZE bytes.
    HostEnclave {
        name: String,
        size: u64,
    },
    /// `host-close NAME`: that process closes it.
    HostClose(String),
    /// `reclaimer`: what the reclaimer has done.
    Reclaimer,
    /// `cpu eupdatesvn`: the CPU has EUPDATESVN.
    CpuEupdatesvn,
    /// `ksgxd eager|lazy`: when a woken ksgxd runs.
    Ksgxd(crate::driver::Ksgxd),
    /// `microcode SVN`: a late microcode load with that SVN.
    Microcode(u64),
    /// `no-entropy N`: the next N EUPDATESVN executions find no entropy.
    NoEntropy(u64),
    /// `svn`: the security version and the SGX users.
    Svn,
}

/// Default EPC when a script has no `epc` line.
pub const DEFAULT_EPC: u64 = 128 << 20;

/// Why a script is not valid: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {msg}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What is wrong and what was expected.
    pub msg: String,
}

/// Whether `s` is a valid FD or enclave name: `[A-Za-z][A-Za-z0-9_]*`.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, Copy)]
struct Word<'a> {
    text: &'a str,
    col: usize,
}

/// Splits a line into words, dropping its comment.
fn words(line: &str) -> Vec<Word<'_>> {
    let mut out: Vec<Word<'_>> = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte, column) of the current word
    let mut end = line.len();
    for (col0, (byte, c)) in line.char_indices().enumerate() {
        if c == ' ' || c == '\t' {
            if let Some((b, col)) = start.take() {
                out.push(Word {
                    text: &line[b..byte],
                    col,
                });
            }
            continue;
        }
        if c == '#' {
            let at_word_start = start.is_none();
            let after_expect = out.len() == 1 && out[0].text == "expect";
            if !(at_word_start && after_expect && is_fault_word(&line[byte..])) {
                end = byte;
                break;
            }
        }
        if start.is_none() {
            start = Some((byte, col0 + 1));
        }
    }
    if let Some((b, col)) = start {
        out.push(Word {
            text: &line[b..end],
            col,
        });
    }
    out
}

/// `#` followed by capitals up to the end of the word: `#GP`, `#PF`, `#UD`.
fn is_fault_word(rest: &str) -> bool {
    let word = rest.split([' ', '\t']).next().unwrap_or("");
    word.len() > 1 && word[1..].chars().all(|c| c.is_ascii_uppercase())
}

const COMMANDS: &str = "epc, kernel, cpu, ksgxd, open, mmap, touch, ecreate, eadd, epa, einit, \
                        eenter, eexit, eremove, ioctl, close, reset, stats, expect, poison, \
                        host-enclave, host-close, reclaimer, microcode, no-entropy, svn";

struct Line<'a> {
    line: usize,
    words: Vec<Word<'a>>,
    /// Column just past the last word, for "expected X here" at the end of a line.
    end_col: usize,
}

impl<'a> Line<'a> {
    fn err(&self, col: usize, msg: impl Into<String>) -> ParseError {
        // A message quotes the script: its control characters are shown, not sent.
        ParseError {
            line: self.line,
            col,
            msg: super::escape(&msg.into()).into_owned(),
        }
    }

    fn word(&self, i: usize, what: &str) -> Result<Word<'a>, ParseError> {
        self.words.get(i).copied().ok_or_else(|| {
            self.err(
                self.end_col,
                format!("`{}` needs {what} here", self.words[0].text),
            )
        })
    }

    fn name(&self, i: usize, what: &str) -> Result<String, ParseError> {
        let w = self.word(i, what)?;
        if !is_name(w.text) {
            return Err(self.err(
                w.col,
                format!(
                    "expected {what} (a letter, then letters, digits or _), found '{}'",
                    w.text
                ),
            ));
        }
        if w.text.chars().count() > MAX_NAME_CHARS {
            return Err(self.err(
                w.col,
                format!("{what} is at most {MAX_NAME_CHARS} characters long"),
            ));
        }
        Ok(w.text.to_owned())
    }

    fn number(&self, i: usize, what: &str) -> Result<u64, ParseError> {
        let w = self.word(i, what)?;
        parse_number(w.text).map_err(|e| self.err(w.col, format!("expected {what}: {e}")))
    }

    /// A number that fits in 32 bits (an SVN, a count of EUPDATESVN executions).
    fn number32(&self, i: usize, what: &str) -> Result<u64, ParseError> {
        let n = self.number(i, what)?;
        if n > u64::from(u32::MAX) {
            return Err(self.err(
                self.words[i].col,
                format!("expected {what} from 0 to {}, found {n}", u32::MAX),
            ));
        }
        Ok(n)
    }

    fn size(&self, i: usize) -> Result<u64, ParseError> {
        let w = self.word(i, "a SIZE")?;
        parse_size(w.text).map_err(|e| {
            self.err(
                w.col,
                format!("expected a SIZE (bytes, with optional K/M/G/T): {e}"),
            )
        })
    }

    fn no_more(&self, n: usize) -> Result<(), ParseError> {
        match self.words.get(n) {
            None => Ok(()),
            Some(w) => Err(self.err(
                w.col,
                format!("unexpected '{}' after `{}`", w.text, self.words[0].text),
            )),
        }
    }
}

/// Static state while validating: which names exist, where `epc`/`kernel` may be.
#[derive(Default)]
struct Scope {
    fds: HashSet<String>,
    enclaves: HashSet<String>,
    hosts: HashSet<String>,
    commands: usize,
    opened: bool,
    has_epc: bool,
}

impl Scope {
    fn fd(&self, l: &Line<'_>, i: usize) -> Result<String, ParseError> {
        let name = l.name(i, "an FD name")?;
        if !self.fds.contains(&name) {
            return Err(l.err(
                l.words[i].col,
                format!("unknown FD '{name}': no earlier `open {name}`"),
            ));
        }
        Ok(name)
    }

    fn encl(&self, l: &Line<'_>, i: usize) -> Result<String, ParseError> {
        let name = l.name(i, "an enclave name")?;
        if !self.enclaves.contains(&name) {
            return Err(l.err(
                l.words[i].col,
                format!("unknown enclave '{name}': no earlier `ecreate … {name}`"),
            ));
        }
        Ok(name)
    }
}

/// Parses and validates a whole script.
pub fn parse(src: &str) -> Result<Script, ParseError> {
    parse_attached(src, &[])
}

/// [`parse`] for a script that drives instances a program has already opened: each of
/// `fds` is an FD name bound before the first line (the LD_PRELOAD shim names a
/// program's instances `S0`, `S1`, … in the order it maps them). Such a script may
/// still `open` more.
pub fn parse_attached(src: &str, fds: &[&str]) -> Result<Script, ParseError> {
    let mut scope = Scope {
        fds: fds.iter().map(|&n| n.to_owned()).collect(),
        ..Scope::default()
    };
    let mut steps = Vec::new();
    let mut epc = vec![DEFAULT_EPC];
    let mut kernel = KernelVersion::DEFAULT;
    for (i, raw) in src.lines().enumerate() {
        if raw.len() > MAX_LINE_BYTES {
            return Err(ParseError {
                line: i + 1,
                col: 1,
                msg: format!(
                    "the line is {} bytes long; a line is at most {MAX_LINE_BYTES}",
                    raw.len()
                ),
            });
        }
        let words = words(raw);
        let Some(first) = words.first() else { continue };
        let end_col = words
            .last()
            .map_or(1, |w| w.col + w.text.chars().count() + 1);
        let l = Line {
            line: i + 1,
            words: words.clone(),
            end_col,
        };
        let command = command(&l, &mut scope, first)?;
        match &command {
            Command::Epc(sizes) => epc.clone_from(sizes),
            Command::Kernel(v) => kernel = *v,
            _ => {}
        }
        scope.commands += 1;
        steps.push(Step {
            line: i + 1,
            text: words.iter().map(|w| w.text).collect::<Vec<_>>().join(" "),
            command,
        });
    }
    Ok(Script { epc, kernel, steps })
}

/// A command and how many of the line's words it used.
type Parsed = Result<(Command, usize), ParseError>;

const PAGE_WHAT: &str = "a PAGE (a page index into the mapping)";

fn command(l: &Line<'_>, scope: &mut Scope, first: &Word<'_>) -> Result<Command, ParseError> {
    let (cmd, used) = match first.text {
        "epc" => epc_line(l, scope, first)?,
        "kernel" => kernel_line(l, scope, first)?,
        "open" => {
            let name = l.name(1, "an FD name")?;
            scope.fds.insert(name.clone());
            scope.opened = true;
            (Command::Open(name), 2)
        }
        "mmap" => mmap_line(l, scope)?,
        "touch" | "epa" | "eremove" => fd_page_line(l, scope, first.text)?,
        "ecreate" => {
            let (fd, page) = (scope.fd(l, 1)?, l.number(2, PAGE_WHAT)?);
            let encl = l.name(3, "an enclave name")?;
            scope.enclaves.insert(encl.clone());
            (Command::Ecreate { fd, page, encl }, 4)
        }
        "eadd" => eadd_line(l, scope)?,
        "einit" => (
            Command::Einit {
                encl: scope.encl(l, 1)?,
            },
            2,
        ),
        "eenter" | "eexit" => thread_line(l, scope, first.text)?,
        "ioctl" => ioctl_line(l, scope)?,
        "close" => (Command::Close(scope.fd(l, 1)?), 2),
        "reset" => {
            let fds = (1..l.words.len().max(2))
                .map(|j| scope.fd(l, j))
                .collect::<Result<Vec<_>, _>>()?;
            (Command::Reset(fds), l.words.len())
        }
        "stats" => (Command::Stats, 1),
        "expect" => expect_line(l, scope, first)?,
        "poison" => poison_line(l, scope)?,
        "host-enclave" => {
            let (name, size) = (l.name(1, "a host enclave name")?, l.size(2)?);
            let most = crate::driver::MAX_HOST_ENCLAVE_BYTES;
            if size > most {
                return Err(l.err(
                    l.words[2].col,
                    format!(
                        "a host enclave is at most {}G here, not {size} bytes",
                        most >> 30
                    ),
                ));
            }
            scope.hosts.insert(name.clone());
            scope.opened = true;
            (Command::HostEnclave { name, size }, 3)
        }
        "host-close" => {
            let name = l.name(1, "a host enclave name")?;
            if !scope.hosts.contains(&name) {
                return Err(l.err(
                    l.words[1].col,
                    format!("unknown host enclave '{name}': no earlier `host-enclave {name}`"),
                ));
            }
            (Command::HostClose(name), 2)
        }
        "reclaimer" => (Command::Reclaimer, 1),
        "cpu" => cpu_line(l, scope, first)?,
        "ksgxd" => ksgxd_line(l, scope, first)?,
        "microcode" => (Command::Microcode(l.number32(1, "an SVN")?), 2),
        "no-entropy" => (Command::NoEntropy(l.number32(1, "a count")?), 2),
        "svn" => (Command::Svn, 1),
        other => {
            return Err(l.err(
                first.col,
                format!("unknown command '{other}' (commands: {COMMANDS})"),
            ));
        }
    };
    l.no_more(used)?;
    Ok(cmd)
}

/// `epc SIZE [SIZE ...]`: only first, each size a non-zero multiple of 4K, together an
/// EPC the model can hold.
fn epc_line(l: &Line<'_>, scope: &mut Scope, first: &Word<'_>) -> Parsed {
    if scope.commands > 0 || scope.has_epc {
        return Err(l.err(first.col, "`epc` must come before any other command"));
    }
    let sizes = (1..l.words.len().max(2))
        .map(|j| l.size(j))
        .collect::<Result<Vec<_>, _>>()?;
    for (j, &s) in sizes.iter().enumerate() {
        if s == 0 || !s.is_multiple_of(PAGE_SIZE) {
            return Err(l.err(
                l.words[j + 1].col,
                format!("an EPC section must be a non-zero multiple of 4K, not {s} bytes"),
            ));
        }
    }
    if let Err(e) = Epc::check_sizes(&sizes) {
        return Err(l.err(first.col, e.to_string()));
    }
    scope.has_epc = true;
    Ok((Command::Epc(sizes), l.words.len()))
}

/// `kernel VERSION`: only before the first `open`.
fn kernel_line(l: &Line<'_>, scope: &Scope, first: &Word<'_>) -> Parsed {
    if scope.opened {
        return Err(l.err(first.col, "`kernel` must come before the first `open`"));
    }
    let w = l.word(1, "a VERSION such as 5.15 or 6.18")?;
    let v = KernelVersion::parse_with_fixes(w.text).map_err(|why| l.err(w.col, why))?;
    Ok((Command::Kernel(v), 2))
}

/// `cpu eupdatesvn`: only before the first `open`, like `kernel`.
fn cpu_line(l: &Line<'_>, scope: &Scope, first: &Word<'_>) -> Parsed {
    if scope.opened {
        return Err(l.err(first.col, "`cpu` must come before the first `open`"));
    }
    let w = l.word(1, "a CPU feature (`eupdatesvn`)")?;
    if w.text != "eupdatesvn" {
        return Err(l.err(
            w.col,
            format!("expected the CPU feature `eupdatesvn`, found '{}'", w.text),
        ));
    }
    Ok((Command::CpuEupdatesvn, 2))
}

/// `ksgxd eager|lazy`: only before the first `open`, like `kernel`.
fn ksgxd_line(l: &Line<'_>, scope: &Scope, first: &Word<'_>) -> Parsed {
    if scope.opened {
        return Err(l.err(first.col, "`ksgxd` must come before the first `open`"));
    }
    let w = l.word(1, "`eager` or `lazy`")?;
    let when = match w.text {
        "eager" => crate::driver::Ksgxd::Eager,
        "lazy" => crate::driver::Ksgxd::Lazy,
        other => {
            return Err(l.err(
                w.col,
                format!("expected `eager` or `lazy`, found '{other}'"),
            ));
        }
    };
    Ok((Command::Ksgxd(when), 2))
}

/// `poison N` (an EPC page number: it starts with a digit, a name cannot) or
/// `poison FD PAGE`.
fn poison_line(l: &Line<'_>, scope: &Scope) -> Parsed {
    let w = l.word(1, "an EPC page number, or FD PAGE")?;
    if w.text.starts_with(|c: char| c.is_ascii_digit()) {
        let n = l.number(1, "an EPC page number")?;
        return match l.words.get(2) {
            None => Ok((Command::PoisonPage(n), 2)),
            Some(b) if b.text == "boot" && scope.opened => Err(l.err(
                b.col,
                "`poison N boot` must come before the first `open` or `host-enclave`",
            )),
            Some(b) if b.text == "boot" => Ok((Command::PoisonBoot(n), 3)),
            Some(b) => Err(l.err(
                b.col,
                format!("expected `boot` or nothing, found '{}'", b.text),
            )),
        };
    }
    let (fd, page) = (scope.fd(l, 1)?, l.number(2, PAGE_WHAT)?);
    Ok((Command::Poison { fd, page }, 3))
}

/// `mmap FD SIZE [private]`.
fn mmap_line(l: &Line<'_>, scope: &Scope) -> Parsed {
    let (fd, size) = (scope.fd(l, 1)?, l.size(2)?);
    let private = match l.words.get(3) {
        None => false,
        Some(w) if w.text == "private" => true,
        Some(w) => {
            return Err(l.err(
                w.col,
                format!("expected `private` or nothing, found '{}'", w.text),
            ));
        }
    };
    Ok((
        Command::Mmap { fd, size, private },
        3 + usize::from(private),
    ))
}

/// `touch`, `epa` and `eremove`: `FD PAGE`.
fn fd_page_line(l: &Line<'_>, scope: &Scope, which: &str) -> Parsed {
    let (fd, page) = (scope.fd(l, 1)?, l.number(2, PAGE_WHAT)?);
    let cmd = match which {
        "touch" => Command::Touch { fd, page },
        "epa" => Command::Epa { fd, page },
        _ => Command::Eremove { fd, page },
    };
    Ok((cmd, 3))
}

/// `eadd FD PAGE ENCL reg|tcs`.
fn eadd_line(l: &Line<'_>, scope: &Scope) -> Parsed {
    let (fd, page, encl) = (scope.fd(l, 1)?, l.number(2, PAGE_WHAT)?, scope.encl(l, 3)?);
    let w = l.word(4, "`reg` or `tcs`")?;
    let ty = match w.text {
        "reg" => AddType::Reg,
        "tcs" => AddType::Tcs,
        other => {
            return Err(l.err(w.col, format!("expected `reg` or `tcs`, found '{other}'")));
        }
    };
    Ok((Command::Eadd { fd, page, encl, ty }, 5))
}

/// `eenter` and `eexit`: `ENCL FD PAGE`.
fn thread_line(l: &Line<'_>, scope: &Scope, which: &str) -> Parsed {
    let (encl, fd, page) = (scope.encl(l, 1)?, scope.fd(l, 2)?, l.number(3, PAGE_WHAT)?);
    let cmd = if which == "eenter" {
        Command::Eenter { encl, fd, page }
    } else {
        Command::Eexit { encl, fd, page }
    };
    Ok((cmd, 4))
}

/// `ioctl FD REQ [ARG]`.
fn ioctl_line(l: &Line<'_>, scope: &Scope) -> Parsed {
    let fd = scope.fd(l, 1)?;
    let w = l.word(2, "a request (`remove-all` or a number)")?;
    let request = if w.text == "remove-all" {
        u64::from(crate::abi::SGX_IOC_VEPC_REMOVE_ALL)
    } else {
        l.number(2, "a request (`remove-all` or a number)")?
    };
    let arg = if l.words.len() > 3 {
        l.number(3, "an ARG number")?
    } else {
        0
    };
    Ok((Command::Ioctl { fd, request, arg }, 4))
}

/// `expect RESULT`: never first.
fn expect_line(l: &Line<'_>, scope: &Scope, first: &Word<'_>) -> Parsed {
    if scope.commands == 0 {
        return Err(l.err(first.col, "`expect` needs a command before it"));
    }
    l.word(1, "the expected RESULT")?;
    let text = l.words[1..]
        .iter()
        .map(|w| w.text)
        .collect::<Vec<_>>()
        .join(" ");
    Ok((Command::Expect(text), l.words.len()))
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.line, self.text)
    }
}
