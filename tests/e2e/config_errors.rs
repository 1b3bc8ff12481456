//! Every bad configuration in tests/config-errors against the exact message
//! `gateway check` gives for it (see that folder's README). `BLESS=1`
//! rewrites the `.err` files from the current output, for a reviewed diff.

use crate::common::{build_plugins, gateway_command, repo};

#[test]
fn each_bad_config_is_refused_with_its_exact_message_and_position() {
    build_plugins();
    let dir = repo().join("tests/config-errors");
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            Some(name.strip_suffix(".toml")?.to_string())
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 100, "only {} cases found", cases.len());
    let bless = std::env::var_os("BLESS").is_some();
    let mut wrong = Vec::new();
    for case in &cases {
        let out = gateway_command()
            .current_dir(repo())
            .args(["check", "--config"])
            .arg(format!("tests/config-errors/{case}.toml"))
            .env("GATEWAY_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let got = if out.status.success() {
            "ACCEPTED\n".to_string()
        } else {
            stderr
        };
        let expected_path = dir.join(format!("{case}.err"));
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{case}.toml has no {case}.err"));
        // An accepted case must not print an error either.
        if got != expected || (got == "ACCEPTED\n" && !out.status.success()) {
            wrong.push(format!("{case}\n  expected: {expected}  got:      {got}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ (BLESS=1 rewrites them):\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}
