//! Every script under `scenarios/` is part of the spec: it must pass, with the model's
//! consistency check after every step, and it must say which rule it shows.

use std::path::PathBuf;

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenarios/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "vsim"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_passes_with_the_consistency_check_on() {
    let all = scenarios();
    assert!(all.len() >= 15, "only {} scenarios", all.len());
    for path in all {
        let src = std::fs::read_to_string(&path).expect("readable scenario");
        let report =
            vepc::script::run(&src, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let failed: Vec<_> = report.mismatches().collect();
        assert!(failed.is_empty(), "{}: {failed:?}", path.display());
        assert!(
            report.inconsistencies.is_empty(),
            "{}: {:?}",
            path.display(),
            report.inconsistencies
        );
        let expects = report
            .outcomes
            .iter()
            .filter(|o| o.command.starts_with("expect "))
            .count();
        assert!(expects > 0, "{} checks nothing", path.display());
        assert!(
            src.contains("docs/SEMANTICS.md §") || src.contains("docs/SCRIPT.md"),
            "{} cites no rule",
            path.display()
        );
    }
}

#[test]
fn every_rule_of_sections_2_and_3_has_a_scenario() {
    let text: String = scenarios()
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("readable"))
        .collect();
    for rule in [
        "§2 open",
        "§2 mmap",
        "§2 fault",
        "§2 ioctl",
        "§2 REMOVE_ALL",
        "§2 release",
        "§3 rule 3",
        "§3 rule 4",
        "§3 rule 5",
        "§3 rule 6",
        "§3 rule 7",
        "§4.3",
        "§4.1",
    ] {
        assert!(
            text.contains(rule),
            "no scenario cites docs/SEMANTICS.md {rule}"
        );
    }
}

/// The rules of docs/SEMANTICS.md §7 a scenario's header cites: "§7.2 rule 6" or
/// "§7.2 rules 1, 3 and 4", each as (7.2, 6) and so on.
fn cited_section_7_rules(text: &str) -> Vec<(String, u32)> {
    let mut cited = Vec::new();
    for (at, _) in text.match_indices("§7.") {
        let rest = &text[at + "§".len()..];
        let section: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let section = section.trim_end_matches('.').to_string();
        let mut words = rest[section.len()..].split_whitespace();
        if !matches!(words.next(), Some("rule" | "rules")) {
            continue;
        }
        for w in words {
            match w.trim_end_matches([',', ':']).parse::<u32>() {
                Ok(n) => cited.push((section.clone(), n)),
                Err(_) if w == "and" => {}
                Err(_) => break,
            }
            if w.ends_with(':') {
                break;
            }
        }
    }
    cited
}

/// Every rule of §7 (the host around vEPC) is cited by a scenario's header.
#[test]
fn every_rule_of_section_7_has_a_scenario() {
    let cited: Vec<(String, u32)> = scenarios()
        .iter()
        .flat_map(|p| cited_section_7_rules(&std::fs::read_to_string(p).expect("readable")))
        .collect();
    for (section, rules) in [("7.1", 5), ("7.2", 6), ("7.3", 4)] {
        for rule in 1..=rules {
            assert!(
                cited.iter().any(|(s, r)| s == section && *r == rule),
                "no scenario cites docs/SEMANTICS.md §{section} rule {rule}"
            );
        }
    }
}

#[test]
fn section_7_citations_are_read_as_written() {
    assert_eq!(
        cited_section_7_rules("# §7.2 rules 1, 3 and 4: x\n# §7.1 rule 5 and §7.3: y"),
        [
            ("7.2".into(), 1),
            ("7.2".into(), 3),
            ("7.2".into(), 4),
            ("7.1".into(), 5)
        ]
    );
}

/// A scenario whose expectation is wrong must fail: the runner really compares.
#[test]
fn a_wrong_expectation_fails_and_names_both_results() {
    let report = vepc::script::run("open G\nioctl G remove-all\nexpect 1\n", false).expect("valid");
    let (o, m) = report.mismatches().next().expect("a mismatch");
    assert_eq!(
        (o.line, m.of_line, m.expected.as_str(), m.actual.as_str()),
        (3, 2, "1", "0")
    );
    assert!(!report.passed());
}

/// `src` run again on the same kernel with `fix` applied too: a `kernel` line gets
/// `+fix`; a script without one gets `kernel 6.18+fix` after its `epc` line.
fn with_fix(src: &str, fix: &str) -> String {
    let mut found = false;
    let mut out: Vec<String> = src
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            if words.first() == Some(&"kernel") && words.len() >= 2 {
                found = true;
                format!("kernel {}+{fix}", words[1])
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        // After the `epc` line, which comes first.
        let at = out
            .iter()
            .position(|l| l.starts_with("epc "))
            .map_or(0, |i| i + 1);
        out.insert(at, format!("kernel 6.18+{fix}"));
    }
    out.join("\n")
}

/// Results without `expect` lines (which differ with the results they check) and
/// `kernel` lines (which differ by the fix).
fn results(src: &str) -> Vec<String> {
    vepc::script::run(src, true)
        .expect("runs")
        .outcomes
        .iter()
        .filter(|o| !o.command.starts_with("expect") && !o.command.starts_with("kernel"))
        .map(|o| format!("{}: {}", o.command, o.result))
        .collect()
}

/// Each proposed kernel fix (docs/findings/) changes only what its finding is about:
/// every scenario run again with the fix gives the same results as without, but for
/// exactly the listed ones, each of which shows the finding.
#[test]
fn each_fix_changes_only_its_findings_scenarios() {
    let cases: [(&str, &[&str]); 3] = [
        (
            "poison-count",
            &[
                "s7-ksgxd-hang-exits",
                "s7-ksgxd-never-woken",
                "s7-ksgxd-woken",
            ],
        ),
        ("zombie-retry", &[]),
        ("zombie-drain", &[]),
    ];
    for (fix, expected) in cases {
        let mut changed = Vec::new();
        for path in scenarios() {
            let src = std::fs::read_to_string(&path).expect("readable scenario");
            if src.contains(&format!("+{fix}")) {
                continue;
            }
            let fixed = with_fix(&src, fix);
            let (before, after) = (results(&src), results(&fixed));
            assert_eq!(before.len(), after.len(), "{}", path.display());
            if before != after {
                let name = path
                    .file_stem()
                    .expect("name")
                    .to_string_lossy()
                    .into_owned();
                let first = before.iter().zip(&after).find(|(b, a)| b != a);
                eprintln!("{fix}: {name}: {first:?}");
                changed.push(name);
            }
        }
        assert_eq!(changed, expected, "scenarios {fix} changes");
    }
}
