//! `make test` runs the plugins' unit tests for the crates the Makefile
//! lists in `UNIT_TESTED` only (the rest have none, and building them as
//! test binaries costs a minute of a cold run). A crate that gains unit
//! tests without being listed would have them silently skipped.

use crate::common::repo;
use std::path::Path;

fn holds_unit_tests(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            holds_unit_tests(&p)
        } else {
            p.extension().is_some_and(|x| x == "rs")
                && std::fs::read_to_string(&p).unwrap().contains("#[test]")
        }
    })
}

#[test]
fn every_plugin_crate_with_unit_tests_is_run_by_make_test() {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let listed: Vec<&str> = makefile
        .lines()
        .find_map(|l| l.strip_prefix("UNIT_TESTED :="))
        .expect("the Makefile lists UNIT_TESTED")
        .split_whitespace()
        .collect();
    let workspace = std::fs::read_to_string(repo().join("plugins/Cargo.toml")).unwrap();
    let workspace: toml::Table = workspace.parse().unwrap();
    let members = workspace["workspace"]["members"].as_array().unwrap();
    let mut tested = 0;
    for member in members {
        let dir = repo().join("plugins").join(member.as_str().unwrap());
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        let name = manifest["package"]["name"].as_str().unwrap();
        if holds_unit_tests(&dir.join("src")) {
            tested += 1;
            assert!(
                listed.contains(&name),
                "{name} has unit tests but the Makefile's UNIT_TESTED does not list it"
            );
        }
    }
    assert_eq!(
        tested,
        listed.len(),
        "UNIT_TESTED lists a crate without unit tests"
    );
}
