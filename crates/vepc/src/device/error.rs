//! Errors of `/dev/sgx_vepc`, host or emulated alike, each keeping the errno and
//! saying what to do about it.

use std::path::PathBuf;

use crate::abi::Errno;

/// A failed call on `/dev/sgx_vepc` (the host's, or the emulated one: both answer
/// with the same errnos, so both fail with the same errors). Its message is the one
/// place that says what to do about each errno: the reset protocol and the probe
/// reuse it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VepcError {
    /// `open` answered `ENOENT`/`ENODEV`/`ENXIO`.
    #[error(
        "{path} does not exist: this host has no SGX, SGX is disabled in the firmware, or the \
         kernel has no SGX virtualization (CONFIG_X86_SGX_KVM, Linux 5.13 or later)"
    )]
    NoDevice {
        /// The path opened.
        path: PathBuf,
        /// What `open` answered.
        errno: Errno,
    },
    /// `open` answered `EACCES`/`EPERM`.
    #[error(
        "permission denied opening {path}: add this user to the group {}, or grant access \
         with a udev rule, or pass the VMM an fd opened by a privileged helper",
        .group.as_deref().map_or("that owns it (`ls -l` shows it; often `sgx`)".to_string(),
            |g| format!("`{g}`, which owns it"))
    )]
    PermissionDenied {
        /// The path opened.
        path: PathBuf,
        /// What `open` answered.
        errno: Errno,
        /// The group that owns the device node, when it could be read.
        group: Option<String>,
    },
    /// `open` answered `EAGAIN` (Linux 6.19 and later, with EUPDATESVN): this was the
    /// first open of an SGX file, its EUPDATESVN found no entropy ten times, and no
    /// instance was opened.
    #[error(
        "opening {path} answered EAGAIN: the kernel's SGX security-version update \
         (EUPDATESVN, run at the first open of an SGX device) found no entropy; retry the \
         open"
    )]
    SvnUpdateRetry {
        /// The path opened.
        path: PathBuf,
    },
    /// `open` answered `EIO` (Linux 6.19 and later, with EUPDATESVN): the first open's
    /// EUPDATESVN failed, most likely because the EPC was not empty (zombie SECS pages
    /// left by an earlier vEPC release; docs/SEMANTICS.md §7.3 rule 4).
    #[error(
        "opening {path} answered EIO: the kernel's SGX security-version update (EUPDATESVN, \
         run when no SGX file is open) failed, most likely because EPC pages are still in \
         use with no SGX file open (SECS pages stranded by an earlier vEPC release); dmesg \
         shows the EUPDATESVN error; every SGX open will fail until the host reboots"
    )]
    SvnUpdateFailed {
        /// The path opened.
        path: PathBuf,
    },
    /// REMOVE_ALL answered `ENOTTY`.
    #[error(
        "SGX_IOC_VEPC_REMOVE_ALL is not supported (ENOTTY): the kernel is older than 5.16, or \
         this fd is not /dev/sgx_vepc; reset by opening a new instance and mapping it over the \
         old range"
    )]
    NoRemoveAll,
    /// REMOVE_ALL answered `EBUSY`.
    #[error(
        "REMOVE_ALL answered EBUSY: a vCPU is running inside an enclave of this guest, or \
         another REMOVE_ALL or a close() of a vEPC fd ran at the same time; stop the vCPUs, \
         serialize the calls, and retry"
    )]
    Busy,
    /// A call answered `EINVAL`.
    #[error("{op} answered EINVAL: {hint}")]
    InvalidArgument {
        /// Which call.
        op: &'static str,
        /// What is usually wrong.
        hint: &'static str,
    },
    /// The model already backs another emulated device: two would each count on the
    /// same free EPC.
    #[error(
        "this model already backs an emulated device: open every instance through that \
         one (VepcDevice::emulated_on), or give this one its own model"
    )]
    ModelTaken,
    /// `mmap` answered `ENOMEM`: the address space has no room for the mapping.
    #[error(
        "mmap of {len} bytes{} answered ENOMEM: the address space has no room for it \
         (past TASK_SIZE, or vm.max_map_count mappings already)",
        .at.map_or(String::new(), |a| format!(" at {a:#x}"))
    )]
    NoRoom {
        /// Bytes asked for.
        len: usize,
        /// The fixed address asked for, if any.
        at: Option<usize>,
    },
    /// An emulated device's EPC cannot be built as asked.
    #[error("the emulated EPC: {0}")]
    Epc(#[from] crate::model::EpcError),
    /// Any other failure.
    #[error("{op} failed: {errno} ({})", std::io::Error::from_raw_os_error(errno.raw()))]
    Os {
        /// Which call.
        op: &'static str,
        /// What it answered.
        errno: Errno,
    },
}

impl VepcError {
    /// The errno behind the error.
    pub fn errno(&self) -> Errno {
        match self {
            Self::NoDevice { errno, .. }
            | Self::PermissionDenied { errno, .. }
            | Self::Os { errno, .. } => *errno,
            Self::SvnUpdateRetry { .. } => Errno::EAGAIN,
            Self::SvnUpdateFailed { .. } => Errno::EIO,
            Self::NoRemoveAll => Errno::ENOTTY,
            Self::Busy | Self::ModelTaken => Errno::EBUSY,
            Self::Epc(_) => Errno::EINVAL,
            Self::NoRoom { .. } => Errno::ENOMEM,
            Self::InvalidArgument { .. } => Errno::EINVAL,
        }
    }

    /// The error for an `open` of `path` that failed with `errno`.
    pub fn open(path: PathBuf, errno: Errno) -> Self {
        match errno {
            Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => Self::NoDevice { path, errno },
            Errno::EACCES | Errno::EPERM => {
                let group = crate::sys::users::group_of(&path);
                Self::PermissionDenied { path, errno, group }
            }
            Errno::EAGAIN => Self::SvnUpdateRetry { path },
            Errno::EIO => Self::SvnUpdateFailed { path },
            _ => Self::Os { op: "open", errno },
        }
    }

    /// The error for an `mmap` of `len` bytes (at `fixed`, with `MAP_FIXED`) that
    /// failed with `errno`, with what is wrong with those arguments.
    pub fn mmap(errno: Errno, len: usize, fixed: Option<usize>) -> Self {
        let hint = match errno {
            Errno::EINVAL if len == 0 => "the length must not be 0",
            Errno::EINVAL if fixed.is_some_and(|a| a % 4096 != 0) => {
                "a fixed address must be a multiple of the page size (4096)"
            }
            Errno::EINVAL => {
                "a vEPC is mapped MAP_SHARED from a read-write open, at a page-aligned offset"
            }
            Errno::ENOMEM => {
                return Self::NoRoom { len, at: fixed };
            }
            errno => return Self::Os { op: "mmap", errno },
        };
        Self::InvalidArgument { op: "mmap", hint }
    }

    /// The error for a REMOVE_ALL that failed with `errno`.
    pub fn remove_all(errno: Errno) -> Self {
        match errno {
            Errno::ENOTTY => Self::NoRemoveAll,
            Errno::EBUSY => Self::Busy,
            Errno::EINVAL => Self::InvalidArgument {
                op: "SGX_IOC_VEPC_REMOVE_ALL",
                hint: "the third argument must be 0 (a variadic ioctl() call without it can \
                       pass garbage)",
            },
            errno => Self::Os {
                op: "SGX_IOC_VEPC_REMOVE_ALL",
                errno,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The EUPDATESVN errnos of an open say what they are and keep the errno.
    #[test]
    fn eupdatesvn_errors_of_open_say_what_to_do() {
        let e = VepcError::open(SGX_VEPC.into(), Errno::EAGAIN);
        assert!(matches!(e, VepcError::SvnUpdateRetry { .. }), "{e:?}");
        assert_eq!(e.errno(), Errno::EAGAIN);
        assert!(e.to_string().contains("retry the open"), "{e}");
        let e = VepcError::open(SGX_VEPC.into(), Errno::EIO);
        assert!(matches!(e, VepcError::SvnUpdateFailed { .. }), "{e:?}");
        assert_eq!(e.errno(), Errno::EIO);
        assert!(e.to_string().contains("until the host reboots"), "{e}");
    }

    const SGX_VEPC: &str = "/dev/sgx_vepc";

    /// EACCES names the group that owns the node (read with stat), whoever runs the
    /// test: root is never refused by open(2), so the errno is handed in directly.
    #[test]
    fn permission_denied_names_the_owning_group() {
        let path = std::env::temp_dir().join(format!("vepc-perm-{}", std::process::id()));
        std::fs::write(&path, b"").expect("node");
        let gid = rustix::fs::stat(&path).expect("stat").st_gid;
        let e = VepcError::open(path.clone(), Errno::EACCES);
        let _ = std::fs::remove_file(&path);
        let group = crate::sys::users::group_name(gid);
        assert!(matches!(&e, VepcError::PermissionDenied { group: Some(g), .. } if *g == group));
        assert!(
            e.to_string()
                .contains(&format!("the group `{group}`, which owns it")),
            "{e}"
        );
        assert_eq!(e.errno(), Errno::EACCES);
        // With the node gone, the advice still says where to look.
        let e = VepcError::open("/nonexistent/x".into(), Errno::EPERM);
        assert!(e.to_string().contains("ls -l"), "{e}");
    }
}
