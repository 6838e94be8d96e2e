//! The facts about this host that decide whether it can run SGX guests.

use std::path::Path;

use rustix::fs::{Mode, OFlags};

use super::cpuid::SgxCpu;
use crate::abi::{Errno, KernelVersion};

/// An SGX device node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceNode {
    /// Its path.
    pub path: String,
    /// Whether it exists.
    pub exists: bool,
    /// Owner and group names (numbers when they have no name).
    pub owner: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Permission bits, e.g. `0o660`.
    pub mode: Option<u32>,
    /// `None` when this user can open it read-write, else why not.
    pub open_error: Option<String>,
}

/// EPC on one NUMA node, from sysfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeEpc {
    /// The node number.
    pub node: u32,
    /// `sgx_total_bytes`.
    pub bytes: u64,
}

/// Everything `vepc probe` looks at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostFacts {
    /// What the CPU says (nothing on a non-x86 host).
    pub cpu: Option<SgxCpu>,
    /// `/dev/sgx_vepc`, `/dev/sgx_enclave`, `/dev/sgx_provision`.
    pub devices: Vec<DeviceNode>,
    /// `uname -r`.
    pub kernel_release: String,
    /// The version parsed from it.
    pub kernel: Option<KernelVersion>,
    /// Per-node EPC, where sysfs has it (`/sys/devices/system/node/node*/x86/`).
    pub node_epc: Vec<NodeEpc>,
    /// `Ok(api)` when `/dev/kvm` answered `KVM_GET_API_VERSION`, else why not.
    pub kvm: Result<i32, String>,
}

/// The SGX device nodes Linux creates.
pub const SGX_NODES: [&str; 3] = ["/dev/sgx_vepc", "/dev/sgx_enclave", "/dev/sgx_provision"];

/// Looks at this host.
pub fn gather() -> HostFacts {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    HostFacts {
        cpu: super::cpuid::read(),
        devices: SGX_NODES.iter().map(|p| device(p)).collect(),
        kernel: KernelVersion::parse(&release),
        kernel_release: release,
        node_epc: node_epc(Path::new("/sys/devices/system/node")),
        kvm: kvm_api_version().map_err(|e| match e {
            Errno::ENOENT => "no /dev/kvm (KVM module not loaded, or no VT-x)".to_string(),
            e => format!("/dev/kvm: {e}"),
        }),
    }
}

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: u32 = crate::abi::io(0xAE, 0x00);

/// Opens `/dev/kvm` and asks its API version: `Ok(12)` when KVM works.
fn kvm_api_version() -> Result<i32, Errno> {
    let fd = crate::sys::fd::open_rdwr(Path::new("/dev/kvm"))?;
    crate::sys::fd::ioctl_io(fd, KVM_GET_API_VERSION)
}

fn device(path: &str) -> DeviceNode {
    let Ok(st) = rustix::fs::stat(path) else {
        return DeviceNode {
            path: path.into(),
            exists: false,
            owner: None,
            group: None,
            mode: None,
            open_error: Some("does not exist".into()),
        };
    };
    let open_error = match rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
        Ok(_) => None,
        Err(e) => Some(Errno::from_raw(e.raw_os_error()).to_string()),
    };
    DeviceNode {
        path: path.into(),
        exists: true,
        owner: Some(crate::sys::users::user_name(st.st_uid)),
        group: Some(crate::sys::users::group_name(st.st_gid)),
        mode: Some(st.st_mode & 0o7777),
        open_error,
    }
}

/// Per-node EPC from `nodeN/x86/sgx_total_bytes` under `root`.
pub fn node_epc(root: &Path) -> Vec<NodeEpc> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<NodeEpc> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let node = e.file_name().to_str()?.strip_prefix("node")?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("x86/sgx_total_bytes")).ok()?;
            Some(NodeEpc {
                node,
                bytes: text.trim().parse().ok()?,
            })
        })
        .collect();
    v.sort_by_key(|n| n.node);
    v
}
