//! The shim's configuration, read once from the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `VEPC_EPC` | EPC section sizes, as docs/SCRIPT.md's `epc` line (`64M 32M`; commas also separate) | the script's `epc` line, else 128M |
//! | `VEPC_KERNEL` | the kernel the device behaves like (`5.15`, `6.18`) | the script's `kernel` line, else 6.18 |
//! | `VEPC_SCRIPT` | a docs/SCRIPT.md file of guest actions, run once before the first REMOVE_ALL | none |
//! | `VEPC_INJECT` | REMOVE_ALL answers to force, poisoned EPC pages and host enclaves at start ([`crate::inject`]) | none |
//! | `VEPC_LOG` | a file to append one JSON object per intercepted call to | none |
//! | `VEPC_FAULTS` | `auto`, `userfaultfd` or `eager` ([`FaultMode`]) | `auto` |

use std::path::PathBuf;

use vepc::abi::KernelVersion;
use vepc::model::{Epc, EpcError};
use vepc::script::{self, DEFAULT_EPC, Script};

use crate::inject::{InjectError, Injections};

/// How many instance names (`S0`…) a script is checked against before the program
/// has mapped anything; the run itself binds exactly the mapped ones.
pub const CHECK_NAMES: usize = 64;

/// How first touches reach the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// userfaultfd if the host allows it, else [`FaultMode::Eager`].
    Auto,
    /// userfaultfd or nothing: a mapping fails with the reason if it cannot be had.
    Userfaultfd,
    /// No userfaultfd: every page of a mapping is faulted in when it is mapped.
    Eager,
}

/// Everything the environment asked for.
#[derive(Debug)]
pub struct Config {
    /// EPC section sizes in bytes.
    pub epc: Vec<u64>,
    /// The kernel the device behaves like.
    pub kernel: KernelVersion,
    /// The guest script, its path and text (checked already).
    pub script: Option<(PathBuf, String)>,
    /// Forced REMOVE_ALL answers.
    pub inject: Injections,
    /// Where the call log goes.
    pub log: Option<PathBuf>,
    /// How faults are served.
    pub faults: FaultMode,
}

/// A variable the shim cannot use. The program is stopped with this message: running
/// it on a model other than the one asked for would make its results meaningless.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `VEPC_EPC` is not a list of sizes the model can hold.
    #[error("VEPC_EPC={value:?}: {why}")]
    Epc {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        why: EpcError,
    },
    /// `VEPC_KERNEL` is not a version, or names a fix the model does not know.
    #[error("VEPC_KERNEL={value:?}: {why}")]
    Kernel {
        /// The variable's value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A variable's value is not UTF-8 text.
    #[error("{var}={value:?}: not UTF-8 text")]
    NotText {
        /// The variable.
        var: &'static str,
        /// Its value, with what is not text replaced.
        value: String,
    },
    /// `VEPC_SCRIPT` cannot be read.
    #[error("VEPC_SCRIPT={path}: cannot read it: {err}")]
    ScriptRead {
        /// The path.
        path: String,
        /// Why.
        err: vepc::script::SourceError,
    },
    /// `VEPC_SCRIPT` is not a valid script.
    #[error("VEPC_SCRIPT={path}: line {line}, column {col}: {msg}")]
    Script {
        /// The path.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What was expected.
        msg: String,
    },
    /// `VEPC_INJECT` is not a list of rules.
    #[error("VEPC_INJECT={value:?}: {err}")]
    Inject {
        /// The variable's value.
        value: String,
        /// The rule that is wrong.
        err: InjectError,
    },
    /// `VEPC_FAULTS` is not one of the modes.
    #[error("VEPC_FAULTS={0:?}: expected auto, userfaultfd or eager")]
    Faults(String),
}

/// The names a program's instances get, in the order it maps them: `S0`, `S1`, …
pub fn instance_name(n: usize) -> String {
    format!("S{n}")
}

impl Config {
    /// Reads the configuration through `var` (the environment, in the shim). Every
    /// value must be UTF-8 text: one that is not is an error naming the variable,
    /// never a default in its place.
    pub fn from_vars(
        var_os: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, ConfigError> {
        let var = |name: &'static str| -> Result<Option<String>, ConfigError> {
            var_os(name)
                .map(|v| {
                    v.into_string().map_err(|v| ConfigError::NotText {
                        var: name,
                        value: v.to_string_lossy().into_owned(),
                    })
                })
                .transpose()
        };
        let script = match var("VEPC_SCRIPT")?.filter(|p| !p.is_empty()) {
            None => None,
            Some(path) => {
                let text = vepc::script::read_file(std::path::Path::new(&path)).map_err(|err| {
                    ConfigError::ScriptRead {
                        path: path.clone(),
                        err,
                    }
                })?;
                let names: Vec<String> = (0..CHECK_NAMES).map(instance_name).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let parsed =
                    script::parse_attached(&text, &names).map_err(|e| ConfigError::Script {
                        path: path.clone(),
                        line: e.line,
                        col: e.col,
                        msg: e.msg,
                    })?;
                Some((PathBuf::from(path), text, parsed))
            }
        };
        // The environment first, then the script's own `epc` and `kernel` lines (a
        // parsed script has the defaults where it has no such line).
        let parsed: Option<&Script> = script.as_ref().map(|(_, _, s)| s);
        let epc = match var("VEPC_EPC")? {
            Some(value) => {
                Epc::parse_sizes(&value).map_err(|why| ConfigError::Epc { value, why })?
            }
            None => parsed.map_or(vec![DEFAULT_EPC], |s| s.epc.clone()),
        };
        let kernel = match var("VEPC_KERNEL")? {
            Some(v) => KernelVersion::parse_with_fixes(v.trim())
                .map_err(|why| ConfigError::Kernel { value: v, why })?,
            None => parsed.map_or(KernelVersion::DEFAULT, |s| s.kernel),
        };
        let inject = match var("VEPC_INJECT")? {
            Some(value) => {
                let inject = Injections::parse(&value)
                    .and_then(|i| i.within(epc.iter().map(|b| b / vepc::abi::PAGE_SIZE).sum()));
                inject.map_err(|err| ConfigError::Inject { value, err })?
            }
            None => Injections::default(),
        };
        let faults = match var("VEPC_FAULTS")?.as_deref().map(str::trim) {
            None | Some("" | "auto") => FaultMode::Auto,
            Some("userfaultfd") => FaultMode::Userfaultfd,
            Some("eager") => FaultMode::Eager,
            Some(other) => return Err(ConfigError::Faults(other.to_owned())),
        };
        Ok(Self {
            epc,
            kernel,
            script: script.map(|(p, t, _)| (p, t)),
            inject,
            log: var("VEPC_LOG")?
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            faults,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned().map(Into::into))
    }

    fn script_file(text: &str) -> (tempdir::Dir, String) {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("guest.vsim");
        std::fs::write(&path, text).expect("write the script");
        let p = path.to_string_lossy().into_owned();
        (dir, p)
    }

    /// A directory removed when dropped (no extra dependency for one test module).
    mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "vepc-preload-config-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).expect("create a temp dir");
                Self { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    #[test]
    fn defaults_are_128m_and_the_newest_kernel() {
        let c = config(&[]).expect("empty environment");
        assert_eq!(c.epc, vec![128 << 20]);
        assert_eq!(c.kernel, KernelVersion::DEFAULT);
        assert_eq!(c.faults, FaultMode::Auto);
        assert!(c.script.is_none() && c.log.is_none());
    }

    #[test]
    fn a_value_that_is_not_text_names_its_variable() {
        use std::os::unix::ffi::OsStringExt;
        let e = Config::from_vars(|k| {
            (k == "VEPC_EPC").then(|| std::ffi::OsString::from_vec(vec![b'6', 0xff, b'M']))
        })
        .expect_err("not UTF-8");
        assert!(e.to_string().starts_with("VEPC_EPC="), "{e}");
    }

    #[test]
    fn epc_takes_spaces_or_commas() {
        let c = config(&[("VEPC_EPC", "64M 32M"), ("VEPC_KERNEL", "5.15")]).expect("valid");
        assert_eq!(c.epc, vec![64 << 20, 32 << 20]);
        assert_eq!(c.kernel, KernelVersion::new(5, 15));
        let c = config(&[("VEPC_EPC", "4K,0x2000")]).expect("valid");
        assert_eq!(c.epc, vec![4096, 8192]);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value, says) in [
            ("VEPC_EPC", "12K3", "VEPC_EPC"),
            ("VEPC_EPC", "6000", "multiple of 4K"),
            ("VEPC_EPC", "", "no section size"),
            ("VEPC_EPC", "15T", "VEPC_EPC"),
            ("VEPC_KERNEL", "five", "VEPC_KERNEL"),
            ("VEPC_FAULTS", "lazy", "expected auto, userfaultfd or eager"),
            ("VEPC_INJECT", "remove-all=EWHAT", "VEPC_INJECT"),
            ("VEPC_SCRIPT", "/nonexistent/guest.vsim", "cannot read it"),
            ("VEPC_SCRIPT", "/dev/zero", "larger than"),
            ("VEPC_INJECT", "poison=0-100000", "the EPC has 32768 pages"),
            (
                "VEPC_INJECT",
                "poison=0-18446744073709551615",
                "the EPC has 32768 pages",
            ),
        ] {
            let err = config(&[(var, value)]).expect_err(value).to_string();
            assert!(err.contains(says), "{var}={value}: {err}");
        }
    }

    #[test]
    fn the_script_may_name_instances_and_set_the_epc() {
        let (_dir, path) = script_file("epc 1M 1M\nkernel 6.1\necreate S0 0 E\neadd S1 0 E reg\n");
        let c = config(&[("VEPC_SCRIPT", &path)]).expect("valid script");
        assert_eq!(c.epc, vec![1 << 20, 1 << 20]);
        assert_eq!(c.kernel, KernelVersion::new(6, 1));
        // The environment wins over the script's lines.
        let c = config(&[("VEPC_SCRIPT", &path), ("VEPC_EPC", "2M")]).expect("valid");
        assert_eq!(c.epc, vec![2 << 20]);
    }

    #[test]
    fn a_script_error_gives_line_and_column() {
        let (_dir, path) = script_file("ecreate S0 0 E\neadd S0 1 F reg\n");
        let err = config(&[("VEPC_SCRIPT", &path)]).expect_err("F is unknown");
        let msg = err.to_string();
        assert!(msg.contains("line 2, column 11"), "{msg}");
        assert!(msg.contains("unknown enclave 'F'"), "{msg}");
        // An FD name that is not an instance name is unknown too.
        let (_dir2, path) = script_file("touch G 0\n");
        let msg = config(&[("VEPC_SCRIPT", &path)])
            .expect_err("G")
            .to_string();
        assert!(msg.contains("unknown FD 'G'"), "{msg}");
    }
}
