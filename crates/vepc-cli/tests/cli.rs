//! The `vepc` binary as a user meets it: output lines, exit statuses, messages.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::shim_beside_vepc;

fn vepc(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vepc"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vepc runs");
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(s.as_bytes())
            .expect("write");
    }
    child.wait_with_output().expect("vepc finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// docs/SCRIPT.md's example, byte for byte.
const EXAMPLE: &str = "epc 512K
open G
mmap G 32K
ecreate G 4 Vault       # SECS above its children
eadd G 0 Vault tcs
eadd G 1 Vault reg
einit Vault
ioctl G remove-all
expect 0                # children come first in index order, then the SECS goes
stats
expect free=125 used=3 zombie=0
close G
stats
expect free=128 used=0 zombie=0
";

#[test]
fn script_md_example_gives_exactly_its_results() {
    let o = vepc(&["sim", "-"], Some(EXAMPLE));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "1: epc 512K -> ok
2: open G -> ok
3: mmap G 32K -> ok
4: ecreate G 4 Vault -> ok
5: eadd G 0 Vault tcs -> ok
6: eadd G 1 Vault reg -> ok
7: einit Vault -> ok
8: ioctl G remove-all -> 0
9: expect 0 -> ok
10: stats -> free=125 used=3 zombie=0
11: expect free=125 used=3 zombie=0 -> ok
12: close G -> ok
13: stats -> free=128 used=0 zombie=0
14: expect free=128 used=0 zombie=0 -> ok
"
    );
    assert!(o.stderr.is_empty());
}

#[test]
fn a_failed_expectation_exits_1_and_the_run_goes_on() {
    let o = vepc(
        &["sim", "-"],
        Some("open G\nioctl G 7\nexpect 0\nstats\nexpect free=1 used=0 zombie=0\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(
        out.contains("3: expect 0 -> FAILED: expected 0, line 2 gave ENOTTY"),
        "{out}"
    );
    assert!(
        out.contains("4: stats -> free=32768 used=0 zombie=0"),
        "the run went on: {out}"
    );
    assert!(text(&o.stderr).contains("2 expectation(s) failed, at line(s) 3, 5"));
}

#[test]
fn an_invalid_script_exits_2_runs_nothing_and_points_at_the_error() {
    let o = vepc(&["sim", "-"], Some("open G\nstats\nmmap G 12X\n"));
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty(), "nothing is run");
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.starts_with("-:3:8: error: expected a SIZE"), "{err}");
}

#[test]
fn unreadable_file_exits_2() {
    let o = vepc(&["sim", "/nonexistent/x.vsim"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot read /nonexistent/x.vsim"));
}

#[test]
fn json_gives_one_object_per_command() {
    let o = vepc(
        &["sim", "--json", "-"],
        Some("open G\nexpect ok\nioctl G remove-all 1\nexpect 0\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    let objs: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(objs.len(), 4);
    assert_eq!(objs[2]["line"], 3);
    assert_eq!(objs[2]["command"], "ioctl G remove-all 1");
    assert_eq!(objs[2]["result"], "EINVAL");
    assert_eq!(objs[3]["result"], "mismatch");
    assert_eq!(objs[3]["mismatch"]["actual"], "EINVAL");
}

#[test]
fn bad_arguments_are_a_usage_error_not_a_panic() {
    for args in [
        &["sim"][..],
        &["nope"],
        &["sim", "a", "b"],
        &["demo", "--frob"],
    ] {
        let o = vepc(args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!text(&o.stderr).contains("panicked"));
    }
}

#[test]
fn demo_tells_the_whole_story_and_exits_0() {
    let o = vepc(&["demo"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    let out = text(&o.stdout);
    assert!(!out.contains("BAD"), "{out}");
    assert!(out.contains("REMOVE_ALL S0: EBUSY"));
    assert!(out.contains("quiesce hook stops vCPU 0"));
    assert!(out.contains("round 1 S0 -> 1, round 1 S1 -> 0, round 2 S0 -> 0"));
    assert!(out.contains("0 of 6040 pages valid"));

    let o = vepc(&["demo", "--json"], None);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], true);
    assert_eq!(v["beats"].as_array().map(Vec::len), Some(9));
}

#[test]
fn probe_says_why_this_host_cannot_run_sgx_guests() {
    let o = vepc(&["probe"], None);
    let out = text(&o.stdout);
    let verdict = out.lines().last().unwrap_or_default();
    // No machine this project runs on has SGX: the answer must be a reasoned no.
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(verdict.starts_with("verdict   no: "), "{out}");
    let o = vepc(&["probe", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["verdict"]["ok"], false);
    assert!(
        v["verdict"]["reasons"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(v["host"]["devices"][0]["path"], "/dev/sgx_vepc");
}

#[test]
fn selftest_without_a_device_exits_77_with_a_clear_message() {
    let o = vepc(&["selftest", "--device", "/nonexistent/sgx_vepc"], None);
    assert_eq!(o.status.code(), Some(77));
    assert!(text(&o.stderr).contains("needs /nonexistent/sgx_vepc"));
    // A device that is not vEPC fails the test (exit 1), not the skip.
    let o = vepc(&["selftest", "--device", "/dev/null"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("mmap"));
}

#[test]
fn bench_json_ends_with_the_promised_object() {
    let o = vepc(&["bench", "--sections", "16M,8M", "--json"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let last = out.lines().last().expect("output");
    let v: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(v["epc_pages"], 6144);
    assert_eq!(v["populated_pages"], 6144);
    for key in ["total_wall_s", "model_bytes_per_page", "peak_rss_bytes"] {
        assert!(
            v[key].as_f64().is_some_and(|x| x > 0.0),
            "{key}: {}",
            v[key]
        );
    }
    assert!(
        v["model_bytes_per_page"]
            .as_f64()
            .is_some_and(|b| b <= 16.0)
    );
    let phases = v["phases"].as_array().expect("phases");
    let names: Vec<_> = phases
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["epc", "fault_in", "build", "reset", "release"]);
    for p in phases {
        for key in ["pages", "wall_s", "pages_per_s"] {
            assert!(p[key].is_number(), "{key} in {p}");
        }
    }
    let reset = &phases[3];
    assert!(reset["hardware_s"].as_f64().is_some_and(|h| h > 0.0));
}

#[test]
fn bench_can_populate_a_few_pages_of_a_large_epc() {
    let o = vepc(
        &["bench", "--sections", "1G", "--populate", "1000", "--json"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().last().unwrap_or_default()).expect("JSON");
    assert_eq!(
        (v["epc_pages"].as_u64(), v["populated_pages"].as_u64()),
        (Some(262_144), Some(1000))
    );
}

/// docs/SEMANTICS.md §7.2 at bench scale: a 4 MiB host enclave (1024 pages, its SECS
/// and 3 VA pages) beside a 24 MiB guest in 24 MiB of EPC. Everything but the VA
/// pages is written back, so exactly 3 guest pages get SIGBUS; the bench checks that
/// after the release (and the host enclave's) every page is free again.
#[test]
fn bench_says_what_fits_beside_a_host_enclave() {
    let o = vepc(
        &[
            "bench",
            "--sections",
            "16M,8M",
            "--host-enclave",
            "4M",
            "--json",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().last().unwrap_or_default()).expect("JSON");
    let h = &v["host"];
    assert_eq!(h["enclave_pages"], 1024, "{h}");
    assert_eq!(
        h["resident_before"],
        1024 + 1 + 3,
        "{h}: with its SECS and VA pages"
    );
    assert_eq!(h["wanted_pages"], 6144, "{h}");
    assert_eq!(h["fitted_pages"], 6144 - 3, "{h}");
    assert_eq!(h["resident_after"], 3, "{h}: the VA pages");
    assert_eq!(h["written_back"], 1025, "{h}: every child, then the SECS");
    assert!(h["ksgxd_wakeups"].as_u64() > Some(0), "{h}");
    assert_eq!(v["populated_pages"], 6144 - 3);
    let names: Vec<_> = v["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        ["epc", "host", "fault_in", "build", "reset", "release"]
    );
    // Without the option, no host object at all.
    let o = vepc(&["bench", "--sections", "16M", "--json"], None);
    let v: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().last().unwrap_or_default()).expect("JSON");
    assert!(v.get("host").is_none(), "{v}");
    // A host enclave may be larger than the EPC (it pages itself out), but not one
    // whose VA pages alone fill it (2048 pages need 5 VA pages, 16K is 4 pages):
    // one line, exit 2.
    for (bad, says) in [("8M", "does not fit"), ("12X", "--host-enclave")] {
        let o = vepc(&["bench", "--sections", "16K", "--host-enclave", bad], None);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = text(&o.stderr);
        assert!(err.contains(says) && err.lines().count() == 1, "{err}");
    }
}

#[test]
fn bench_rejects_bad_sections_with_one_line() {
    for bad in ["0", "12X", "4097", "16T,16T"] {
        let o = vepc(&["bench", "--sections", bad], None);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = text(&o.stderr);
        assert!(
            err.starts_with("vepc bench: --sections") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn preload_runs_a_program_on_the_model() {
    shim_beside_vepc();
    let dir = std::env::temp_dir().join(format!("vepc-cli-preload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let log = dir.join("calls.log");
    let log_arg = log.to_string_lossy().into_owned();
    // The program sees a character device where there is none.
    let out = vepc(
        &[
            "preload",
            "--epc",
            "64K,64K",
            "--kernel",
            "5.15",
            "--log",
            &log_arg,
            "--",
            "sh",
            "-c",
            "test -c /dev/sgx_vepc && echo char-device; exit 7",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(7), "the program's status is ours");
    assert_eq!(text(&out.stdout), "char-device\n");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let init: serde_json::Value =
        serde_json::from_str(logged.lines().next().unwrap_or("{}")).expect("JSON log");
    assert_eq!(init["call"], "init");
    assert_eq!(init["epc"], serde_json::json!([65536, 65536]));
    assert_eq!(init["kernel"], "5.15");
}

#[test]
fn preload_checks_its_options_before_the_program_starts() {
    for (args, says) in [
        (&["preload", "--epc", "12Q", "--", "true"][..], "--epc 12Q"),
        (
            &["preload", "--epc", "6000", "--", "true"][..],
            "multiple of 4K",
        ),
        (
            &["preload", "--kernel", "x", "--", "true"][..],
            "--kernel x",
        ),
        (
            &["preload", "--faults", "lazy", "--", "true"][..],
            "--faults lazy",
        ),
        (
            &["preload", "--shim", "/nonexistent.so", "--", "true"][..],
            "cargo build --release",
        ),
        (
            &["preload", "--script", "/nonexistent.vsim", "--", "true"][..],
            "--script",
        ),
    ] {
        let out = vepc(args, None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("vepc preload: ") && err.contains(says),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    shim_beside_vepc();
    let out = vepc(&["preload", "--", "/nonexistent/program"], None);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("cannot run /nonexistent/program"));
}

/// A QEMU for `qemu-check`: stock from PATH, or the patched build from
/// `$VEPC_QEMU_PATCHED`; a visible skip without it, a failure when CI promised it.
fn qemu_for_check(test: &str, patched: bool) -> Option<String> {
    let found = if patched {
        std::env::var("VEPC_QEMU_PATCHED").ok()
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|q| q.is_file())
                .map(|q| q.to_string_lossy().into_owned())
        })
    };
    let found = found.filter(|q| std::path::Path::new(q).is_file());
    if found.is_none() {
        assert!(
            std::env::var("VEPC_REQUIRE_QEMU").as_deref() != Ok("1"),
            "VEPC_REQUIRE_QEMU=1 but there is no {} QEMU",
            if patched { "patched" } else { "stock" }
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: no {} QEMU",
            if patched {
                "patched (VEPC_QEMU_PATCHED)"
            } else {
                "stock (qemu-system-x86_64 on PATH)"
            }
        );
    }
    found
}

fn qemu_check_json(qemu: &str) -> (Option<i32>, serde_json::Value) {
    shim_beside_vepc();
    let out = vepc(&["qemu-check", "--qemu", qemu, "--json"], None);
    let v = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), v)
}

#[test]
fn qemu_check_names_the_bugs_of_stock_qemu() {
    let Some(qemu) = qemu_for_check("qemu_check_names_the_bugs_of_stock_qemu", false) else {
        return;
    };
    let (code, v) = qemu_check_json(&qemu);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["status"], "bugs");
    let verdicts: Vec<(String, String)> = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let said = c["bug"]
                .as_str()
                .unwrap_or(c["verdict"].as_str().unwrap_or("?"));
            (
                c["name"].as_str().unwrap_or("?").to_owned(),
                said.to_owned(),
            )
        })
        .collect();
    let want = [
        ("split-secs", "pass"),
        ("transient-ebusy", "ebusy-ignored"),
        ("transient-ebusy-secs-first", "ebusy-ignored"),
        ("persistent-ebusy", "ebusy-silent"),
        ("enotty", "enotty-unseen"),
        ("einval", "einval-silent"),
        ("third-argument", "third-argument-implicit"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(verdicts, want, "{v}");
    // Every bug comes with the evidence from the log, and every case says whether a
    // real host reaches it with vCPUs paused.
    for c in v["cases"].as_array().expect("cases") {
        assert!(
            c["evidence"].as_array().is_some_and(|e| !e.is_empty()),
            "{c}"
        );
        assert!(
            ["reachable", "defensive"].contains(&c["reach"].as_str().unwrap_or("")),
            "{c}"
        );
        assert!(c["reach_why"].as_str().is_some_and(|w| w.len() > 20), "{c}");
    }
}

#[test]
fn qemu_check_passes_patched_qemu() {
    let Some(qemu) = qemu_for_check("qemu_check_passes_patched_qemu", true) else {
        return;
    };
    let (code, v) = qemu_check_json(&qemu);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["status"], "pass");
    assert!(
        v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .all(|c| c["verdict"] == "pass"),
        "{v}"
    );
}

#[test]
fn qemu_check_that_cannot_run_exits_2_with_one_line() {
    shim_beside_vepc();
    for (args, says) in [
        (
            &["qemu-check", "--qemu", "/nonexistent/qemu"][..],
            "cannot run /nonexistent/qemu",
        ),
        (
            &[
                "qemu-check",
                "--qemu",
                "/bin/true",
                "--shim",
                "/nonexistent.so",
            ][..],
            "cargo build --release",
        ),
    ] {
        let out = vepc(args, None);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("vepc qemu-check: ") && err.contains(says),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A program that is no QEMU: every case says why it could not run.
    let out = vepc(&["qemu-check", "--qemu", "/bin/false"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("could not run"),
        "{}",
        text(&out.stdout)
    );
}
