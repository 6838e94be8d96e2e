//! Which processes hold an SGX device file: the SGX users of Linux 6.19's usage count.
//!
//! From 6.19 the kernel runs EUPDATESVN (the SGX security-version update after a late
//! microcode load) only when no SGX file is in use: each open `/dev/sgx_vepc` and each
//! host enclave (`/dev/sgx_enclave`) counts a user until its last reference goes
//! (docs/SEMANTICS.md §7.3). A reference is an fd, or a mapping that outlives its fd
//! (the VMA holds the file), so both are looked for: `/proc/PID/fd/*` by the inode the
//! link leads to, `/proc/PID/maps` by the inode it names.

use std::path::Path;

/// The SGX files that count a user (`/dev/sgx_provision` does not).
pub const COUNTED_NODES: [&str; 2] = ["/dev/sgx_vepc", "/dev/sgx_enclave"];

/// One process holding one SGX file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Its pid.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// The device node it holds.
    pub path: String,
    /// Its fds open on the node.
    pub fds: Vec<u32>,
    /// Mappings of the node (each counts even once its fd is closed).
    pub mappings: usize,
}

/// What a scan of `/proc` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Holders {
    /// The processes, by pid, then node.
    pub holders: Vec<Holder>,
    /// Processes whose fds or maps could not be read (another user's, without root):
    /// when not 0, the list may be incomplete.
    pub unreadable: usize,
}

/// Scans `proc_root` (normally `/proc`) for processes holding any of `nodes`. A node
/// that does not exist is held by no one.
pub fn scan(proc_root: &Path, nodes: &[&Path]) -> Holders {
    let targets: Vec<(&Path, FileId)> = nodes
        .iter()
        .filter_map(|&p| {
            rustix::fs::stat(p)
                .ok()
                .map(|st| (p, (st.st_dev, st.st_ino)))
        })
        .collect();
    let mut found = Holders::default();
    if targets.is_empty() {
        return found;
    }
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return found;
    };
    let mut pids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let proc_dir = proc_root.join(pid.to_string());
        let Some(held) = read_process(&proc_dir) else {
            // Gone since the listing (not counted), or not ours to read.
            if proc_dir.exists() {
                found.unreadable += 1;
            }
            continue;
        };
        for &(path, id) in &targets {
            let fds: Vec<u32> = held.fds.iter().filter(|f| f.1 == id).map(|f| f.0).collect();
            let mappings = held.maps.iter().filter(|&&ino| ino == id.1).count();
            if !fds.is_empty() || mappings > 0 {
                let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
                found.holders.push(Holder {
                    pid,
                    comm: comm.trim_end().to_owned(),
                    path: path.display().to_string(),
                    fds,
                    mappings,
                });
            }
        }
    }
    found
}

/// Scans `/proc` for the holders of the SGX files that count a user.
pub fn scan_host() -> Holders {
    scan(Path::new("/proc"), &COUNTED_NODES.map(Path::new))
}

/// A file's identity: (device, inode).
type FileId = (u64, u64);

/// What one process holds.
struct Held {
    /// Its fds, each with the file it leads to.
    fds: Vec<(u32, FileId)>,
    /// The inodes its file mappings name.
    maps: Vec<u64>,
}

/// What a process holds; `None` when its fd directory cannot be read.
fn read_process(proc_dir: &Path) -> Option<Held> {
    let fd_dir = proc_dir.join("fd");
    let fds = std::fs::read_dir(&fd_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            // stat follows the magic link to the open file itself.
            let st = rustix::fs::stat(e.path()).ok()?;
            Some((fd, (st.st_dev, st.st_ino)))
        })
        .collect();
    // maps: "start-end perms offset dev inode path"; an inode of 0 is anonymous.
    let maps = std::fs::read_to_string(proc_dir.join("maps"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4)?.parse().ok())
        .filter(|&ino: &u64| ino != 0)
        .collect();
    Some(Held { fds, maps })
}
