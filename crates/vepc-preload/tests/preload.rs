//! The shim under a program that calls libc as C programs do: this test binary runs
//! itself again with `LD_PRELOAD` (`--child NAME`) and checks what the child printed,
//! how it ended, and the shim's log.
//!
//! A custom harness: a child may die of SIGBUS on purpose, which only a separate
//! process can show.

#![allow(unsafe_code)]

mod common;

use std::ffi::{CStr, c_int, c_void};
use std::process::{Command, Output};

use common::{Scratch, read_log, remove_alls, shim_path};
use serde_json::Value;
use vepc::abi::Errno;

const PAGE: usize = vepc::abi::PAGE_SIZE as usize;
const PATH: &CStr = c"/dev/sgx_vepc";
const REMOVE_ALL: libc::c_ulong = 0xa404;

// ---- the child half -----------------------------------------------------------------

fn errno() -> String {
    let raw = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    Errno::from_raw(raw).to_string()
}

/// `name=<value>` for a call that returns >= 0, `name=<ERRNO>` otherwise.
fn show(name: &str, r: i64) -> i64 {
    if r < 0 {
        println!("{name}={}", errno());
    } else {
        println!("{name}={r}");
    }
    r
}

/// `name=mapped` or `name=<ERRNO>`.
fn show_map(name: &str, p: *mut u8) {
    if p.is_null() {
        println!("{name}={}", errno());
    } else {
        println!("{name}=mapped");
    }
}

fn open_vepc(flags: c_int) -> c_int {
    // SAFETY: a C string and flags.
    unsafe { libc::open(PATH.as_ptr(), flags) }
}

fn map(fd: c_int, pages: usize, prot: c_int, flags: c_int, off: i64) -> *mut u8 {
    // SAFETY: a new mapping chosen by the kernel.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), pages * PAGE, prot, flags, fd, off) };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

fn rw_shared(fd: c_int, pages: usize) -> *mut u8 {
    let p = map(
        fd,
        pages,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
        0,
    );
    assert!(!p.is_null(), "mmap: {}", errno());
    p
}

fn touch(p: *mut u8, page: usize) {
    // SAFETY: `p` maps at least `page + 1` pages; a volatile write is a guest touch.
    unsafe { p.add(page * PAGE).write_volatile(1) };
}

fn remove_all(fd: c_int, arg: libc::c_ulong) -> i64 {
    // SAFETY: an ioctl with an integer argument.
    i64::from(unsafe { libc::ioctl(fd, REMOVE_ALL, arg) })
}

extern "C" fn on_sigbus(_: c_int, info: *mut libc::siginfo_t, _: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    println!("sigbus=code={code} addr={addr:#x}");
    // SAFETY: ends the process without unwinding out of the handler.
    unsafe { libc::_exit(42) };
}

fn catch_sigbus() {
    // SAFETY: installs a handler with SA_SIGINFO; the struct is zeroed then filled.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction =
            on_sigbus as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

fn child(name: &str) {
    let scenarios: &[(&str, fn())] = &[
        ("node", child_node),
        ("mmap", child_mmap),
        ("sigbus", child_sigbus),
        ("populate", child_populate),
        ("touch16", child_touch16),
        ("read16", child_read16),
        ("release", child_release),
        ("script", child_script),
        ("kernel", child_kernel),
        ("threads", child_threads),
        ("vfs", child_vfs),
        ("passthrough", child_passthrough),
        ("cycles", child_cycles),
    ];
    match scenarios.iter().find(|(n, _)| *n == name) {
        Some((_, scenario)) => scenario(),
        None => panic!("no child scenario {name}"),
    }
}

fn child_node() {
    // SAFETY: stat into a zeroed struct; access with a C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        show("stat", i64::from(libc::stat(PATH.as_ptr(), &mut st)));
        println!("chr={}", st.st_mode & libc::S_IFMT == libc::S_IFCHR);
        println!(
            "rdev={}:{}",
            libc::major(st.st_rdev),
            libc::minor(st.st_rdev)
        );
        println!("mode={:o}", st.st_mode & 0o777);
        show(
            "access_rw",
            i64::from(libc::access(PATH.as_ptr(), libc::R_OK | libc::W_OK)),
        );
        show(
            "access_x",
            i64::from(libc::access(PATH.as_ptr(), libc::X_OK)),
        );
        let fd = open_vepc(libc::O_RDWR | libc::O_CLOEXEC);
        show("open", i64::from(fd));
        let mut fst: libc::stat = std::mem::zeroed();
        show("fstat", i64::from(libc::fstat(fd, &mut fst)));
        println!("fstat_chr={}", fst.st_mode & libc::S_IFMT == libc::S_IFCHR);
        show(
            "fd_cloexec",
            i64::from(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC),
        );
        show(
            "excl",
            i64::from(open_vepc(libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)),
        );
        show(
            "dir",
            i64::from(open_vepc(libc::O_RDONLY | libc::O_DIRECTORY)),
        );
    }
    // std's metadata goes through statx.
    let m = std::fs::metadata("/dev/sgx_vepc");
    println!(
        "std_chr={}",
        m.map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
            .unwrap_or(false)
    );
}

fn child_mmap() {
    let fd = open_vepc(libc::O_RDWR);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    show_map("private", map(fd, 4, rw, libc::MAP_PRIVATE, 0));
    // SAFETY: a zero-length mapping request fails before anything is mapped.
    let zero = unsafe { libc::mmap(std::ptr::null_mut(), 0, rw, libc::MAP_SHARED, fd, 0) };
    show("len0", if zero == libc::MAP_FAILED { -1 } else { 0 });
    show_map("unaligned", map(fd, 4, rw, libc::MAP_SHARED, 100));
    let ro = open_vepc(libc::O_RDONLY);
    show_map("ro_write", map(ro, 4, rw, libc::MAP_SHARED, 0));
    println!(
        "ro_read={}",
        !map(ro, 4, libc::PROT_READ, libc::MAP_SHARED, 0).is_null()
    );
    let p = rw_shared(fd, 16);
    for page in [0, 5, 15] {
        touch(p, page);
    }
    // A second mapping of the same pages is the same memory, with no new fault.
    // SAFETY: page 0 of both mappings is mapped and was written above.
    unsafe { p.write_volatile(0xAB) };
    let q = rw_shared(fd, 2);
    // SAFETY: as above.
    println!("shared_byte={:#x}", unsafe { q.read_volatile() });
    show("remove_all", remove_all(fd, 0));
    show("remove_all_arg", remove_all(fd, 1));
    // SAFETY: integer-argument ioctls.
    unsafe {
        show("unknown", i64::from(libc::ioctl(fd, 0xa405, 0)));
        show("fioclex", i64::from(libc::ioctl(fd, libc::FIOCLEX)));
        show(
            "cloexec",
            i64::from(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC),
        );
        show("fionclex", i64::from(libc::ioctl(fd, libc::FIONCLEX)));
        show(
            "cloexec_after",
            i64::from(libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC),
        );
    }
}

fn child_sigbus() {
    catch_sigbus();
    let fd = open_vepc(libc::O_RDWR);
    let p = rw_shared(fd, 32);
    println!("base={:#x}", p as usize);
    for page in 0..16 {
        touch(p, page);
    }
    println!("touched=16");
    touch(p, 16);
    println!("touched=17");
}

/// Writes each of 16 pages in order; a SIGBUS ends the process (42) with its address.
fn child_touch16() {
    pages16(touch);
}

/// Reads each of 16 pages in order, as [`child_touch16`] writes them.
fn child_read16() {
    pages16(|p, page| {
        // SAFETY: `p` maps 16 pages; a volatile read is a guest's read.
        let _ = unsafe { p.add(page * PAGE).read_volatile() };
    });
}

fn pages16(access: fn(*mut u8, usize)) {
    catch_sigbus();
    let fd = open_vepc(libc::O_RDWR);
    let p = rw_shared(fd, 16);
    println!("base={:#x}", p as usize);
    for page in 0..16 {
        access(p, page);
    }
    println!("touched=16");
    show("remove_all", remove_all(fd, 0));
    // SAFETY: unmaps the 16 pages mapped above, which nothing uses after this.
    show(
        "munmap",
        i64::from(unsafe { libc::munmap(p.cast(), 16 * PAGE) }),
    );
    // SAFETY: closes the descriptor opened above: the instance's release.
    show("close", i64::from(unsafe { libc::close(fd) }));
}

fn child_populate() {
    let fd = open_vepc(libc::O_RDWR);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let p = map(fd, 8, rw, libc::MAP_SHARED | libc::MAP_POPULATE, 0);
    println!("mapped={}", !p.is_null());
    show("remove_all", remove_all(fd, 0));
    // More than the EPC holds: the mapping still succeeds, as a failed
    // MAP_POPULATE does not fail mmap.
    let fd2 = open_vepc(libc::O_RDWR);
    let q = map(fd2, 32, rw, libc::MAP_SHARED | libc::MAP_POPULATE, 0);
    println!("mapped_more={}", !q.is_null());
    show("remove_all_more", remove_all(fd2, 0));
}

fn child_release() {
    let fd = open_vepc(libc::O_RDWR);
    let p = rw_shared(fd, 4);
    touch(p, 0);
    touch(p, 3);
    // SAFETY: descriptor calls on our own descriptors.
    unsafe {
        let copy = libc::dup(fd);
        show("close", i64::from(libc::close(fd)));
        // The copy is the same open file.
        show("remove_all_on_dup", remove_all(copy, 0));
        show("close_dup", i64::from(libc::close(copy)));
        // The mapping still holds the instance: unmapping the middle keeps it,
        // unmapping the rest releases it.
        show(
            "munmap_middle",
            i64::from(libc::munmap(p.add(PAGE).cast(), 2 * PAGE)),
        );
        println!("still_there={}", p.read_volatile());
        show("munmap_first", i64::from(libc::munmap(p.cast(), PAGE)));
        println!("before_last_munmap");
        show(
            "munmap_last",
            i64::from(libc::munmap(p.add(3 * PAGE).cast(), PAGE)),
        );
    }
}

fn child_script() {
    let a = open_vepc(libc::O_RDWR);
    let b = open_vepc(libc::O_RDWR);
    rw_shared(a, 8);
    rw_shared(b, 8);
    show("s0", remove_all(a, 0));
    show("s1", remove_all(b, 0));
    show("s0_again", remove_all(a, 0));
}

fn child_kernel() {
    let fd = open_vepc(libc::O_RDWR);
    show("open", i64::from(fd));
    // SAFETY: stat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    show(
        "stat",
        i64::from(unsafe { libc::stat(PATH.as_ptr(), &mut st) }),
    );
    if fd >= 0 {
        show("remove_all", remove_all(fd, 0));
    }
}

fn child_threads() {
    let fd = open_vepc(libc::O_RDWR);
    let p = rw_shared(fd, 256) as usize;
    let workers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for page in (t..256).step_by(4) {
                    touch(p as *mut u8, page);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    show("remove_all", remove_all(fd, 0));
}

fn child_vfs() {
    // Every request do_vfs_ioctl() handles, on the shim's /dev/sgx_vepc and on
    // /dev/null, a devtmpfs character device without ioctls of its own, which
    // the kernel answers exactly as it would /dev/sgx_vepc: with a NULL
    // argument, a pointer to 0 and a pointer to 1. Descriptor 0 is closed, so
    // no argument names an open file by chance.
    let vepc = open_vepc(libc::O_RDWR);
    // SAFETY: a C string; then closing our own stdin.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
    // SAFETY: as above.
    unsafe { libc::close(0) };
    if std::env::var_os("VFS_UNPRIVILEGED").is_some() {
        // SAFETY: dropping to nobody; both calls only change our credentials.
        unsafe {
            libc::setgid(65534);
            libc::setuid(65534);
        }
    }
    let mut buf = vec![0u8; 4096];
    for (name, req) in vepc::driver::vfs::VFS_REQUESTS {
        for (how, value) in [("null", None), ("zero", Some(0i32)), ("one", Some(1))] {
            let answers: Vec<String> = [vepc, null]
                .iter()
                .map(|&fd| {
                    buf.fill(0);
                    let arg = match value {
                        None => 0,
                        Some(v) => {
                            buf[..4].copy_from_slice(&v.to_ne_bytes());
                            buf.as_mut_ptr() as libc::c_ulong
                        }
                    };
                    // SAFETY: the argument is NULL or a 4 KiB buffer of ours.
                    let r = unsafe { libc::ioctl(fd, libc::c_ulong::from(req), arg) };
                    if r < 0 { errno() } else { r.to_string() }
                })
                .collect();
            println!("{name}.{how}={} {}", answers[0], answers[1]);
        }
    }
}

/// `CYCLES_THREADS` threads each open, map 16 KiB, touch every page, munmap and
/// close, over and over, as a multi-threaded VMM's helpers might. SIGALRM after a
/// minute ends a run that stalls. Prints the number of cycles done.
fn child_cycles() {
    let threads: usize = std::env::var("CYCLES_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    // SAFETY: alarm only schedules a signal.
    unsafe { libc::alarm(60) };
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..1000 {
                    let fd = open_vepc(libc::O_RDWR);
                    assert!(fd >= 0, "open: {}", errno());
                    let p = rw_shared(fd, 4);
                    for page in 0..4 {
                        touch(p, page);
                    }
                    // SAFETY: the mapping and descriptor made above, used no more.
                    unsafe {
                        assert_eq!(libc::munmap(p.cast(), 4 * PAGE), 0);
                        assert_eq!(libc::close(fd), 0);
                    }
                }
            })
        })
        .collect();
    let done = workers.into_iter().filter_map(|w| w.join().ok()).count();
    println!("threads_done={done}");
}

fn child_passthrough() {
    let dir = std::env::temp_dir().join(format!("vepc-pass-{}", std::process::id()));
    std::fs::write(&dir, b"hello").expect("write a file through the shim");
    let text = std::fs::read_to_string(&dir).expect("read it back");
    let _ = std::fs::remove_file(&dir);
    println!("file={text}");
    // SAFETY: an ioctl on stdin's descriptor number: not the shim's.
    let r = unsafe { libc::ioctl(0, REMOVE_ALL, 0) };
    show("ioctl_other", i64::from(r));
}

// ---- the parent half ----------------------------------------------------------------

struct Ran {
    out: Output,
    stdout: String,
    log: Vec<Value>,
}

impl Ran {
    fn get(&self, key: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("child printed no {key}=: {}", self.stdout))
    }
}

fn run(scenario: &str, env: &[(&str, &str)]) -> Ran {
    run_with_script(scenario, None, env)
}

/// [`run`] with `script` as the child's `VEPC_SCRIPT`.
fn run_with_script(scenario: &str, script: Option<&str>, env: &[(&str, &str)]) -> Ran {
    let dir = Scratch::new(scenario);
    let log = dir.path.join("vepc.log");
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.args(["--child", scenario])
        .env("LD_PRELOAD", shim_path())
        .env("VEPC_LOG", &log)
        .env_remove("VEPC_SCRIPT")
        .env_remove("VEPC_INJECT")
        .env_remove("VEPC_EPC")
        .env_remove("VEPC_KERNEL")
        .env_remove("VEPC_FAULTS");
    if let Some(text) = script {
        cmd.env("VEPC_SCRIPT", dir.file("guest.vsim", text));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ran {
        log: read_log(&log),
        stdout,
        out,
    }
}

fn ok(r: &Ran) {
    assert!(
        r.out.status.success(),
        "child failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        r.out.status,
        r.stdout,
        String::from_utf8_lossy(&r.out.stderr)
    );
}

fn the_node_is_a_character_device() {
    let r = run("node", &[]);
    ok(&r);
    assert_eq!(r.get("stat"), "0");
    assert_eq!(r.get("chr"), "true");
    assert_eq!(r.get("rdev"), "10:125");
    assert_eq!(r.get("mode"), "600");
    assert_eq!(r.get("access_rw"), "0");
    assert_eq!(r.get("access_x"), "EACCES");
    assert_ne!(r.get("open"), "-1");
    assert_eq!(r.get("fstat_chr"), "true");
    assert_eq!(r.get("fd_cloexec"), "1", "O_CLOEXEC is kept");
    assert_eq!(r.get("excl"), "EEXIST");
    assert_eq!(r.get("dir"), "ENOTDIR");
    assert_eq!(r.get("std_chr"), "true", "statx answers too");
    let calls: Vec<&str> = r.log.iter().filter_map(|l| l["call"].as_str()).collect();
    for c in ["init", "stat", "access", "open", "statx"] {
        assert!(calls.contains(&c), "{c} not logged: {calls:?}");
    }
}

fn mmap_answers_as_the_driver() {
    let r = run("mmap", &[]);
    ok(&r);
    assert_eq!(r.get("private"), "EINVAL");
    assert_eq!(r.get("len0"), "EINVAL");
    assert_eq!(r.get("unaligned"), "EINVAL");
    assert_eq!(r.get("ro_write"), "EACCES");
    // do_mmap takes VM_SHARED from a read-only open's shared mapping, and
    // sgx_vepc_mmap refuses what is not VM_SHARED.
    assert_eq!(r.get("ro_read"), "false");
    assert_eq!(r.get("shared_byte"), "0xab");
    assert_eq!(r.get("remove_all"), "0");
    assert_eq!(r.get("remove_all_arg"), "EINVAL");
    assert_eq!(r.get("unknown"), "ENOTTY");
    assert_eq!(r.get("fioclex"), "0");
    assert_eq!(r.get("cloexec"), "1");
    assert_eq!(r.get("cloexec_after"), "0");
    // Three pages touched, one of them through two mappings: three faults.
    let first = remove_alls(&r.log)[0];
    assert_eq!(first["present_pages"], 3, "{first}");
    assert_eq!(first["arg"], "0x0");
    assert_eq!(remove_alls(&r.log)[1]["arg"], "0x1");
}

fn exhaustion_is_sigbus_at_the_touched_page(faults: &str) {
    let r = run("sigbus", &[("VEPC_EPC", "64K"), ("VEPC_FAULTS", faults)]);
    assert_eq!(r.out.status.code(), Some(42), "{faults}: {}", r.stdout);
    assert_eq!(r.get("touched"), "16");
    let base = usize::from_str_radix(r.get("base").trim_start_matches("0x"), 16).expect("hex");
    let want = format!("code={} addr={:#x}", libc::BUS_ADRERR, base + 16 * PAGE);
    assert_eq!(r.get("sigbus"), want, "{faults}");
    let mode = r
        .log
        .iter()
        .find(|l| l["call"] == "faults")
        .expect("mode logged");
    let expected = if faults == "eager" {
        "eager"
    } else {
        "userfaultfd"
    };
    assert_eq!(mode["mode"], expected);
}

/// The page (0-based) whose touch got the child's SIGBUS, and its si_code.
fn sigbus_page(r: &Ran) -> (usize, i32) {
    let base = usize::from_str_radix(r.get("base").trim_start_matches("0x"), 16).expect("hex");
    let sig = r.get("sigbus");
    let field = |key: &str| {
        sig.split(' ')
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {sig}"))
    };
    let addr = usize::from_str_radix(field("addr=0x"), 16).expect("hex");
    let code = field("code=").parse().expect("number");
    ((addr - base) / PAGE, code)
}

/// docs/SEMANTICS.md §7.1 through the shim. From 5.17 a page poisoned while free is
/// never handed out, so 16 pages of EPC hold 15 of the child's: the 16th page's
/// touch, read or write, gets SIGBUS. Before, the page stays in service and all 16
/// fit; no access of the child's consumes the poison, since a program's accesses to
/// EPC get abort-page semantics, not the page's data.
fn a_poisoned_free_page_through_the_shim(faults: &str) {
    for (kernel, child) in [
        ("6.18", "touch16"),
        ("6.18", "read16"),
        ("5.15", "touch16"),
        ("5.15", "read16"),
    ] {
        let r = run(
            child,
            &[
                ("VEPC_EPC", "64K"),
                ("VEPC_KERNEL", kernel),
                ("VEPC_INJECT", "poison=3"),
                ("VEPC_FAULTS", faults),
            ],
        );
        let case = format!("{kernel} {child} {faults}");
        if kernel == "6.18" {
            assert_eq!(r.out.status.code(), Some(42), "{case}: {}", r.stdout);
            assert_eq!(sigbus_page(&r), (15, libc::BUS_ADRERR), "{case}");
        } else {
            ok(&r);
            assert_eq!(r.get("touched"), "16", "{case}");
        }
        let injected: Vec<&Value> = r.log.iter().filter(|l| l["call"] == "inject").collect();
        let want = if kernel == "6.18" { "ok" } else { "ENXIO" };
        assert_eq!(injected.len(), 1, "{case}: {injected:?}");
        assert_eq!(injected[0]["poison"], 3);
        assert_eq!(injected[0]["result"], want, "{case}");
    }
}

/// docs/SEMANTICS.md §7.2 through the shim: a host enclave holds half the EPC, and
/// the child's 16 pages still all arrive, ksgxd writing the host's pages back; the
/// release says how many.
fn a_host_enclave_gives_way_to_vepc() {
    let r = run(
        "touch16",
        &[("VEPC_EPC", "128K"), ("VEPC_INJECT", "host-enclave=96K")],
    );
    ok(&r);
    assert_eq!(r.get("touched"), "16");
    let injected = r
        .log
        .iter()
        .find(|l| l["call"] == "inject")
        .expect("inject logged");
    assert_eq!(injected["host_enclave"], 98304);
    assert_eq!(injected["result"], "ok");
    let released: Vec<&Value> = r.log.iter().filter(|l| l["call"] == "release").collect();
    assert_eq!(released.len(), 1, "{:?}", r.log);
    let stats = &released[0]["stats"];
    assert!(stats["written_back"].as_u64() > Some(0), "{stats}");
    assert_eq!(
        stats["free"].as_u64().unwrap_or(0) + stats["host"].as_u64().unwrap_or(0),
        32,
        "{stats}: after the release every page is free or the host's"
    );
}

/// `__mm_populate` skips `VM_IO | VM_PFNMAP` mappings: `MAP_POPULATE` faults
/// nothing in on vEPC, whatever fits.
fn map_populate_faults_nothing_in() {
    let r = run("populate", &[("VEPC_EPC", "64K")]);
    ok(&r);
    assert_eq!(r.get("mapped"), "true");
    assert_eq!(r.get("mapped_more"), "true");
    let calls = remove_alls(&r.log);
    assert_eq!(calls[0]["present_pages"], 0);
    assert_eq!(calls[1]["present_pages"], 0);
}

fn release_waits_for_the_last_reference() {
    let r = run("release", &[("VEPC_EPC", "64K")]);
    ok(&r);
    assert_eq!(r.get("remove_all_on_dup"), "0");
    assert_eq!(r.get("still_there"), "1");
    let calls: Vec<&str> = r.log.iter().filter_map(|l| l["call"].as_str()).collect();
    let released: Vec<&Value> = r.log.iter().filter(|l| l["call"] == "release").collect();
    assert_eq!(released.len(), 1, "{calls:?}");
    assert_eq!(released[0]["stats"]["free"], 16);
    assert_eq!(released[0]["stats"]["used"], 0);
    // Released after both closes (the mapping held it), i.e. by the last munmap.
    let last_close = calls
        .iter()
        .rposition(|&c| c == "close")
        .expect("closes logged");
    let release = calls.iter().position(|&c| c == "release").expect("release");
    assert!(release > last_close, "{calls:?}");
}

fn the_script_runs_before_the_first_remove_all() {
    let split = "ecreate S0 0 E\neadd S1 0 E tcs\neadd S1 1 E reg\n\
                 stats\nexpect free=29 used=3 zombie=0\n";
    let r = run_with_script("script", Some(split), &[("VEPC_EPC", "128K")]);
    ok(&r);
    assert_eq!(
        (r.get("s0"), r.get("s1"), r.get("s0_again")),
        ("1", "0", "0")
    );
    let first_script = r.log.iter().position(|l| l["call"] == "script");
    let first_ioctl = r.log.iter().position(|l| l["call"] == "ioctl");
    assert!(first_script < first_ioctl, "script first");
    assert_eq!(
        r.log.iter().filter(|l| l["call"] == "script").count(),
        5,
        "once"
    );
    assert!(
        r.log
            .iter()
            .all(|l| l["call"] != "script" || l.get("expected").is_none()),
        "every expect held"
    );
    // An instance the program never mapped cannot be named: said on stderr.
    let r = run_with_script("script", Some("touch S2 0\n"), &[]);
    ok(&r);
    let stderr = String::from_utf8_lossy(&r.out.stderr);
    assert!(
        stderr.contains("VEPC_SCRIPT not run") && stderr.contains("unknown FD 'S2'"),
        "{stderr}"
    );
}

fn a_failed_expect_is_reported() {
    let failing = "touch S0 0\nstats\nexpect free=0 used=0 zombie=0\n";
    let r = run_with_script("script", Some(failing), &[("VEPC_EPC", "64K")]);
    ok(&r);
    let stderr = String::from_utf8_lossy(&r.out.stderr);
    assert!(
        stderr.contains(
            "VEPC_SCRIPT line 2: expected free=0 used=0 zombie=0, got free=15 used=1 zombie=0"
        ),
        "{stderr}"
    );
}

fn injection_and_old_kernels() {
    let r = run(
        "script",
        &[("VEPC_INJECT", "S1:remove-all=ENOTTY,remove-all=EBUSY@1")],
    );
    ok(&r);
    assert_eq!(
        (r.get("s0"), r.get("s1"), r.get("s0_again")),
        ("EBUSY", "ENOTTY", "0")
    );
    let calls = remove_alls(&r.log);
    let injected: Vec<bool> = calls.iter().map(|l| l["injected"] == true).collect();
    assert_eq!(injected, [true, true, false]);

    let r = run("kernel", &[("VEPC_KERNEL", "5.15")]);
    ok(&r);
    assert_eq!(r.get("remove_all"), "ENOTTY");
    let r = run("kernel", &[("VEPC_KERNEL", "5.12")]);
    ok(&r);
    assert_eq!((r.get("open"), r.get("stat")), ("ENOENT", "ENOENT"));
}

fn a_bad_configuration_stops_the_program() {
    let r = run("kernel", &[("VEPC_EPC", "12Q")]);
    assert_eq!(r.out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&r.out.stderr);
    assert!(
        stderr.starts_with("vepc-preload: VEPC_EPC=\"12Q\""),
        "{stderr}"
    );
}

fn concurrent_first_touches_each_count_once() {
    let r = run("threads", &[]);
    ok(&r);
    assert_eq!(remove_alls(&r.log)[0]["present_pages"], 256);
}

/// docs/SEMANTICS.md §2 ioctl: the VFS first. For every request of the table, the
/// shim answers as the kernel answers /dev/null, privileged or not, and `vepc sim`
/// (an unprivileged process without other descriptors) as the shim does.
/// Issue 23's first finding through the shim: two threads cycling open, mmap, touch,
/// munmap, close hung every time. 2 to 8 threads, in each fault mode, with an EPC of
/// 64 pages (16 per thread at most: exact from the first cycles on for 8 threads).
fn threads_cycling_through_the_shim() {
    for (threads, faults) in [
        ("2", "auto"),
        ("2", "userfaultfd"),
        ("8", "auto"),
        ("8", "userfaultfd"),
        ("8", "eager"),
    ] {
        let r = run(
            "cycles",
            &[
                ("CYCLES_THREADS", threads),
                ("VEPC_FAULTS", faults),
                ("VEPC_EPC", "256K"),
                ("VEPC_LOG", ""),
            ],
        );
        ok(&r);
        assert_eq!(
            r.get("threads_done"),
            threads,
            "{threads} threads, {faults}"
        );
    }
}

fn vfs_ioctls_answer_as_fs_ioctl_c_does() {
    let mut runs = vec![("as this user", run("vfs", &[]))];
    // SAFETY: geteuid only reads our credentials.
    if unsafe { libc::geteuid() } == 0 {
        runs.push(("unprivileged", run("vfs", &[("VFS_UNPRIVILEGED", "1")])));
    }
    for (who, r) in &runs {
        ok(r);
        for (name, _) in vepc::driver::vfs::VFS_REQUESTS {
            for how in ["null", "zero", "one"] {
                let got = r.get(&format!("{name}.{how}"));
                let (shim, kernel) = got.split_once(' ').expect("two answers");
                assert_eq!(
                    shim, kernel,
                    "{who}: {name} with a {how} argument: shim vs /dev/null"
                );
            }
        }
    }
    // vepc sim, on the same requests: ARG 0 is NULL, any other ARG points at zeroes.
    let unprivileged = &runs.last().expect("a run").1;
    let mut script = String::from("open G\n");
    for (_, req) in vepc::driver::vfs::VFS_REQUESTS {
        script.push_str(&format!("ioctl G {req:#x} 0\nioctl G {req:#x} 0x1000\n"));
    }
    let report = vepc::script::run(&script, true).expect("a valid script");
    let results: Vec<&str> = report
        .outcomes
        .iter()
        .skip(1)
        .map(|o| o.result.as_str())
        .collect();
    for (i, (name, _)) in vepc::driver::vfs::VFS_REQUESTS.iter().enumerate() {
        for (j, how) in ["null", "zero"].iter().enumerate() {
            let shim = unprivileged
                .get(&format!("{name}.{how}"))
                .split(' ')
                .next()
                .unwrap_or("");
            assert_eq!(
                results[2 * i + j],
                shim,
                "{name} with a {how} argument: vepc sim vs shim"
            );
        }
    }
}

fn other_files_pass_through() {
    let r = run("passthrough", &[]);
    ok(&r);
    assert_eq!(r.get("file"), "hello");
    assert_ne!(r.get("ioctl_other"), "0");
    assert!(
        r.log.is_empty(),
        "nothing about the device, nothing logged: {:?}",
        r.log
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args.get(i + 1).map_or("", String::as_str));
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    let tests: &[(&str, fn())] = &[
        (
            "the_node_is_a_character_device",
            the_node_is_a_character_device,
        ),
        ("mmap_answers_as_the_driver", mmap_answers_as_the_driver),
        (
            "exhaustion_is_sigbus_at_the_touched_page_userfaultfd",
            || exhaustion_is_sigbus_at_the_touched_page("userfaultfd"),
        ),
        ("exhaustion_is_sigbus_at_the_touched_page_eager", || {
            exhaustion_is_sigbus_at_the_touched_page("eager")
        }),
        (
            "map_populate_faults_nothing_in",
            map_populate_faults_nothing_in,
        ),
        ("a_poisoned_free_page_through_the_shim_userfaultfd", || {
            a_poisoned_free_page_through_the_shim("userfaultfd")
        }),
        ("a_poisoned_free_page_through_the_shim_eager", || {
            a_poisoned_free_page_through_the_shim("eager")
        }),
        ("a_poisoned_free_page_through_the_shim_auto", || {
            a_poisoned_free_page_through_the_shim("auto")
        }),
        (
            "a_host_enclave_gives_way_to_vepc",
            a_host_enclave_gives_way_to_vepc,
        ),
        (
            "release_waits_for_the_last_reference",
            release_waits_for_the_last_reference,
        ),
        (
            "the_script_runs_before_the_first_remove_all",
            the_script_runs_before_the_first_remove_all,
        ),
        ("a_failed_expect_is_reported", a_failed_expect_is_reported),
        ("injection_and_old_kernels", injection_and_old_kernels),
        (
            "a_bad_configuration_stops_the_program",
            a_bad_configuration_stops_the_program,
        ),
        (
            "concurrent_first_touches_each_count_once",
            concurrent_first_touches_each_count_once,
        ),
        (
            "vfs_ioctls_answer_as_fs_ioctl_c_does",
            vfs_ioctls_answer_as_fs_ioctl_c_does,
        ),
        ("other_files_pass_through", other_files_pass_through),
        (
            "threads_cycling_through_the_shim",
            threads_cycling_through_the_shim,
        ),
    ];
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
