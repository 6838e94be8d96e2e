//! Every row of `vepc::driver::surface`'s table, run through the shim by a C client
//! (`tests/c/surface.c`, compiled here with the C compiler Rust links with): the
//! shim's answers must be the table's, and where the kernel answers for `/dev/null`
//! exactly as for the device (`fcntl`'s flags, `O_PATH`), the kernel's.

#![allow(unsafe_code)]

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{Scratch, read_log, remove_alls, shim_path};
use vepc::abi::{Errno, KernelVersion};
use vepc::driver::surface::fs::{self, Direction, Opened};
use vepc::driver::surface::mmap::{MmapRequest, ModelAddressSpace, mmap};
use vepc::driver::surface::{Access, vma};

/// The client, compiled once per test binary.
fn client() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/surface.c");
            let out = std::env::temp_dir().join(format!("vepc-surface-{}", std::process::id()));
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            let st = Command::new(&cc)
                .args(["-Wall", "-Werror", "-O1", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .unwrap_or_else(|e| panic!("{cc}: {e} (the C compiler Rust links with)"));
            assert!(st.success(), "{cc} failed on {}", src.display());
            out
        })
        .clone()
}

/// What one row printed, and the shim's log.
struct Row {
    answers: HashMap<String, String>,
    log: Vec<serde_json::Value>,
    text: String,
}

impl Row {
    fn get(&self, key: &str) -> &str {
        self.answers
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {key}= in:\n{}", self.text))
    }
}

/// Runs a row that must end the program: its exit status and stderr.
fn run_stopped(row: &str) -> (Option<i32>, String, String) {
    let out = Command::new(client())
        .arg(row)
        .env("LD_PRELOAD", shim_path())
        .env("VEPC_EPC", "64K")
        .output()
        .expect("run the client");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_with(row: &str, soft_nofile: Option<u64>) -> Row {
    let dir = Scratch::new("surface");
    let log = dir.path.join("log");
    let mut cmd = Command::new(client());
    cmd.arg(row)
        .env("LD_PRELOAD", shim_path())
        .env("VEPC_EPC", "64K")
        .env("VEPC_LOG", &log);
    if let Some(soft) = soft_nofile {
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut l: libc::rlimit = std::mem::zeroed();
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
                l.rlim_cur = soft.min(l.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                Ok(())
            });
        }
    }
    let out = cmd.output().expect("run the client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{row}: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut answers = HashMap::new();
    for line in text.lines() {
        for pair in line.split(' ') {
            if let Some((k, v)) = pair.split_once('=') {
                // "getfl=0x8802 null=0x8802": the second is the first's /dev/null.
                let k = if k == "null" {
                    format!("{}.null", line.split('=').next().unwrap_or(""))
                } else {
                    k.to_string()
                };
                answers.insert(k, v.to_string());
            }
        }
    }
    Row {
        answers,
        log: read_log(&log),
        text,
    }
}

fn run(row: &str) -> Row {
    run_with(row, None)
}

fn name(r: Result<(), Errno>) -> String {
    r.map_or_else(|e| e.to_string(), |()| "0".into())
}

fn map_answer(access: Access, req: MmapRequest) -> String {
    mmap(access, &req, &mut ModelAddressSpace::default())
        .map_or_else(|e| e.to_string(), |_| "ok".into())
}

const RW: i32 = libc::O_RDWR;

#[test]
fn open_answers_as_the_vfs_and_gives_the_lowest_number() {
    let r = run("open");
    let k = KernelVersion::DEFAULT;
    assert_eq!(r.get("lowest"), "yes", "the number the kernel would give");
    let rule = |flags| match fs::open(k, flags) {
        Ok(Opened::Instance(_)) => "ok".to_string(),
        Ok(Opened::Path) => "path".to_string(),
        Err(e) => e.to_string(),
    };
    assert_eq!(r.get("excl"), rule(RW | libc::O_CREAT | libc::O_EXCL));
    assert_eq!(r.get("directory"), rule(libc::O_DIRECTORY));
    assert_eq!(r.get("tmpfile"), rule(RW | libc::O_TMPFILE));
    for spelling in ["slashes", "dotdot", "openat_dir", "relative", "fopen"] {
        assert_eq!(r.get(spelling), "0", "{spelling}");
    }
    assert_eq!(r.get("fopen_fstat_chr"), "0");
    assert_eq!(r.get("fopen_remove_all"), "0");
}

#[test]
fn o_path_makes_no_instance() {
    let r = run("o_path");
    assert_eq!(r.get("fd"), "0");
    for call in ["ioctl", "mmap", "read"] {
        assert_eq!(r.get(call), "EBADF", "{call}");
    }
    assert_eq!(r.get("fstat_chr"), "0");
    assert_eq!(r.get("getfl"), r.get("getfl.null"), "F_GETFL: the kernel's");
    assert!(
        !r.log.iter().any(|l| l["call"] == "release"),
        "no instance, no release"
    );
}

#[test]
fn the_access_mode_decides_mmap() {
    let r = run("access");
    let req = |prot| MmapRequest {
        prot,
        ..MmapRequest::shared(4096, 0, 0)
    };
    let (ro, wo, none) = (
        Access::from_flags(libc::O_RDONLY),
        Access::from_flags(libc::O_WRONLY),
        Access::from_flags(3),
    );
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    assert_eq!(r.get("ro_read"), map_answer(ro, req(libc::PROT_READ)));
    assert_eq!(r.get("ro_read"), "EINVAL");
    assert_eq!(r.get("ro_write"), map_answer(ro, req(rw)));
    assert_eq!(r.get("wo_write"), map_answer(wo, req(rw)));
    assert_eq!(r.get("none"), map_answer(none, req(libc::PROT_READ)));
    assert_eq!(r.get("none_ioctl"), "0", "mode 3 is for ioctls");
}

#[test]
fn fcntl_is_the_kernels() {
    let r = run("fcntl");
    for k in ["getfl", "getfd", "setfl"] {
        assert_eq!(r.get(k), r.get(&format!("{k}.null")), "{k}");
    }
    assert_eq!(
        r.get("getfl"),
        "0x8802",
        "O_RDWR | O_NONBLOCK | O_LARGEFILE"
    );
    assert_eq!(r.get("dup_remove_all"), "0");
}

#[test]
fn reads_and_writes_answer_as_vfs_read_and_vfs_write() {
    let r = run("transfer");
    let rw = Access::from_flags(RW);
    let t = |a, d, p| fs::transfer(a, d, p).to_string();
    for (k, d) in [("read", Direction::Read), ("write", Direction::Write)] {
        assert_eq!(r.get(k), t(rw, d, None));
    }
    for k in ["pread", "pwrite", "preadv", "pwritev2"] {
        let d = if k.contains("write") {
            Direction::Write
        } else {
            Direction::Read
        };
        assert_eq!(r.get(k), t(rw, d, Some(0)), "{k}");
    }
    assert_eq!(r.get("pread_negative"), t(rw, Direction::Read, Some(-1)));
    assert_eq!(r.get("readv"), t(rw, Direction::Read, None));
    assert_eq!(r.get("writev"), t(rw, Direction::Write, None));
    assert_eq!(r.get("readv_too_many"), "EINVAL");
    let ro = Access::from_flags(libc::O_RDONLY);
    let wo = Access::from_flags(libc::O_WRONLY);
    assert_eq!(r.get("ro_write"), t(ro, Direction::Write, None));
    assert_eq!(r.get("wo_read"), t(wo, Direction::Read, None));
}

#[test]
fn seek_truncate_and_fallocate() {
    let r = run("seek");
    let rw = Access::from_flags(RW);
    assert_eq!(r.get("lseek"), fs::lseek().to_string());
    assert_eq!(r.get("ftruncate"), fs::truncate(8192).to_string());
    assert_eq!(r.get("ftruncate_negative"), fs::truncate(-1).to_string());
    assert_eq!(r.get("truncate"), fs::truncate(8192).to_string());
    assert_eq!(
        r.get("fallocate"),
        fs::fallocate(rw, 0, 0, 8192).to_string()
    );
    assert_eq!(
        r.get("fallocate_hole"),
        fs::fallocate(rw, fs::falloc::PUNCH_HOLE, 0, 8192).to_string()
    );
    assert_eq!(
        r.get("fallocate_zero_len"),
        fs::fallocate(rw, 0, 0, 0).to_string()
    );
    assert_eq!(
        r.get("fallocate_ro"),
        fs::fallocate(Access::from_flags(0), 0, 0, 8192).to_string()
    );
    assert_eq!(
        r.get("posix_fallocate"),
        fs::fallocate(rw, 0, 0, 8192).to_string()
    );
}

#[test]
fn fstat_finds_the_misc_device() {
    let r = run("fstat");
    assert_eq!(
        (r.get("fstat"), r.get("chr"), r.get("major")),
        ("0", "yes", "10")
    );
}

#[test]
fn mmap_checks_length_offset_and_room_in_do_mmap_order() {
    let r = run("mmap");
    let rw = Access::READ_WRITE;
    assert_eq!(r.get("len0"), map_answer(rw, MmapRequest::shared(0, 0, 0)));
    assert_eq!(
        r.get("unaligned"),
        map_answer(rw, MmapRequest::shared(4096, 100, 0))
    );
    let minus_page = (-4096i64) as u64;
    assert_eq!(
        r.get("minus_page"),
        map_answer(rw, MmapRequest::shared(4096, minus_page, 0))
    );
    assert_eq!(r.get("minus_page"), "EOVERFLOW");
    assert_eq!(
        r.get("high"),
        map_answer(rw, MmapRequest::shared(4096, 0x7fff_ffff_ffff_f000, 0))
    );
    assert_eq!(
        r.get("high"),
        "ok",
        "a character device maps up to ULONG_MAX"
    );
    // The real address space answers these; the model's agrees.
    let huge = MmapRequest::shared(200 << 40, 0, 0);
    assert_eq!(r.get("huge"), map_answer(rw, huge));
    let private = MmapRequest {
        flags: libc::MAP_PRIVATE,
        ..huge
    };
    assert_eq!(r.get("huge_private"), map_answer(rw, private));
    assert_eq!(r.get("noreplace"), "EEXIST");
    assert_eq!(r.get("fixed_same_memory"), "yes");
    // 127 TiB fit below TASK_SIZE, one fewer where the process's own mappings cut
    // the room in two places too small for the last one (ASLR decides).
    assert!(
        ["126", "127"].contains(&r.get("terabytes")),
        "the 128th TiB is past TASK_SIZE: {}",
        r.get("terabytes")
    );
}

#[test]
fn mmap_flags_as_shared_or_validated() {
    let r = run("mmap_flags");
    let rw = Access::READ_WRITE;
    let with = |flags| MmapRequest {
        flags,
        ..MmapRequest::shared(4096, 0, 0)
    };
    for (k, flags) in [
        ("validate_sync", libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC),
        ("shared_sync", libc::MAP_SHARED | libc::MAP_SYNC),
        (
            "validate_noreplace",
            libc::MAP_SHARED_VALIDATE | libc::MAP_FIXED_NOREPLACE,
        ),
        ("hugetlb", libc::MAP_SHARED | libc::MAP_HUGETLB),
        ("growsdown", libc::MAP_SHARED | libc::MAP_GROWSDOWN),
        ("private", libc::MAP_PRIVATE),
        ("no_type", 0),
    ] {
        assert_eq!(r.get(k), map_answer(rw, with(flags)), "{k}");
    }
}

#[test]
fn populate_and_locks_fault_nothing_in() {
    let r = run("populate");
    for k in [
        "map_populate",
        "map_locked",
        "mlock",
        "mlock2",
        "mlockall",
        "remove_all",
    ] {
        assert_eq!(r.get(k), "0", "{k}");
    }
    let calls = remove_alls(&r.log);
    assert_eq!(
        calls[0]["present_pages"], 0,
        "nothing faulted in: {}",
        calls[0]
    );
}

#[test]
fn madvise_answers_by_advice() {
    let r = run("madvise");
    let admin = vepc::sys::caps::has(vepc::sys::caps::SYS_ADMIN);
    let mut seen = 0;
    for (k, v) in &r.answers {
        let Some(advice) = k.strip_prefix("advice.") else {
            continue;
        };
        let n: i32 = v.parse().expect("a number");
        assert_eq!(
            r.get(&format!("madv.{advice}")),
            name(vma::madvise(n, admin)),
            "MADV_{advice}"
        );
        seen += 1;
    }
    assert_eq!(seen, 24);
    assert_eq!(
        r.get("madv.POPULATE_WRITE"),
        "EINVAL",
        "QEMU's prealloc probe"
    );
    assert_eq!(r.get("posix_dontneed"), "0", "glibc ignores it");
    assert_eq!(r.get("mprotect"), "0");
    assert_eq!(
        remove_alls(&r.log)[0]["present_pages"],
        0,
        "no advice faulted in"
    );
    assert!(
        r.log
            .iter()
            .any(|l| l["call"] == "madvise" && l["result"] == "EINVAL")
    );
}

#[test]
fn mremap_shrinks_and_moves_but_never_grows() {
    let r = run("mremap");
    let rule = |old, new, flags, moves| {
        vma::mremap(old, new, flags, moves).map_or_else(|e| e.to_string(), |_| "ok".into())
    };
    use vma::remap::{DONTUNMAP, MAYMOVE};
    assert_eq!(r.get("grow"), rule(4, 8, MAYMOVE, false));
    assert_eq!(r.get("duplicate"), rule(0, 1, MAYMOVE, false));
    assert_eq!(r.get("dontunmap"), rule(4, 4, MAYMOVE | DONTUNMAP, true));
    assert_eq!(r.get("shrink"), "0");
    assert_eq!(r.get("move"), "0");
    assert_eq!(r.get("moved_same_memory"), "yes");
    // The page touched through the moved mapping, and the one before the move.
    assert_eq!(remove_alls(&r.log)[0]["present_pages"], 2);
}

#[test]
fn a_child_has_no_mapping_after_fork() {
    let r = run("fork");
    assert_eq!(r.get("child"), "Segmentation");
    assert_eq!(r.get("parent_still"), "1");
}

#[test]
fn another_address_space_cannot_read_it() {
    let r = run("remote");
    assert_eq!(r.get("process_vm_readv"), "EFAULT");
    assert_eq!(r.get("process_vm_writev"), "EFAULT");
}

/// Issue 22's first finding: a program that closes every descriptor it does not
/// know (by number up to its limit, then `close_range`) must not turn exactness off:
/// with a 16-page EPC and 32 pages mapped, the 17th first touch gets SIGBUS.
#[test]
fn the_shims_descriptors_are_out_of_reach() {
    for soft in [None, Some(1024)] {
        let r = run_with("descriptors", soft);
        assert_eq!(
            r.get("kept"),
            "3",
            "memfd, userfaultfd, eventfd: {}",
            r.text
        );
        assert!(!r.answers.contains_key("closed_kept"), "{}", r.text);
        assert!(!r.answers.contains_key("dup2_kept"), "{}", r.text);
        if r.get("raisable") == "yes" {
            assert_eq!(r.get("above_limit"), "yes", "{}", r.text);
        }
        let base = u64::from_str_radix(r.get("base").trim_start_matches("0x"), 16).expect("hex");
        let at = u64::from_str_radix(r.get("sigbus_addr").trim_start_matches("0x"), 16)
            .expect("a SIGBUS");
        assert_eq!(at - base, 16 * 4096, "SIGBUS at the 17th page");
    }
}

/// If a descriptor of the shim's is lost anyway (a raw system call no hook sees),
/// the device fails loudly: one line, exit status 2, never exactness silently off.
#[test]
fn a_descriptor_lost_behind_the_shims_back_stops_the_program() {
    for (row, says) in [
        ("lost_userfaultfd", "userfaultfd"),
        ("lost_memfd", "instance's memory"),
    ] {
        let (code, stdout, stderr) = run_stopped(row);
        assert!(stdout.contains("found=yes"), "{row}: {stdout}");
        assert_eq!(code, Some(2), "{row}: {stdout}\n{stderr}");
        assert!(!stdout.contains("still_running"), "{row}: {stdout}");
        assert!(
            stderr.starts_with("vepc-preload: ") && stderr.contains(says),
            "{row}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{row}: one line: {stderr}");
    }
}
