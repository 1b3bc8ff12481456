//! Filter projects made by `gateway plugin new`, as a filter author outside
//! this repository has them: each language scaffolded into a temporary
//! directory, built with the commands its README gives, accepted by
//! `gateway plugin check`, passing its own `gateway plugin test`, and
//! serving through a gateway. The Rust SDK is used the three ways its
//! README offers: vendored (the scaffold), by path and by git.

use crate::common::{Gateway, Upstream, componentize, gateway_command, repo, tempdir};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// The WAT template as `ua-check`, componentized by its README's command
/// into `ua-check.wasm` in the project.
fn wat_project(dir: &Path) -> PathBuf {
    let wat = scaffold("wat", "ua-check", dir);
    componentize(&wat.join("filter.wat"), &wat.join("ua-check.wasm"));
    wat
}

/// `gateway plugin new NAME --lang LANG --dir DIR/NAME`.
fn scaffold(lang: &str, name: &str, dir: &Path) -> PathBuf {
    let project = dir.join(name);
    run(
        "plugin new",
        gateway_command()
            .args(["plugin", "new", name, "--lang", lang, "--dir"])
            .arg(&project),
    );
    assert!(project.join("README.md").is_file());
    project
}

/// Cargo's output for the scaffolds goes to one directory under target/,
/// so dependencies compile once per machine rather than once per test.
fn cargo_target() -> PathBuf {
    repo().join("target/scaffolds")
}

fn cargo(project: &Path, args: &[&str]) -> String {
    run(
        &format!("cargo {}", args.join(" ")),
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(project)
            .env("CARGO_TARGET_DIR", cargo_target()),
    )
}

/// `plugin check`, then the project's own requests file through `plugin
/// test`, which must pass.
fn check_and_test(project: &Path, wasm: &Path) -> String {
    let said = run(
        "plugin check",
        gateway_command().args(["plugin", "check"]).arg(wasm),
    );
    assert!(said.contains("filter"), "{said}");
    let report = run(
        "plugin test",
        gateway_command()
            .args(["plugin", "test"])
            .arg(wasm)
            .args(["--config", "filter.toml", "--request", "requests.toml"])
            .current_dir(project),
    );
    assert!(
        report.contains("2 requests: 2 as expected, 0 not"),
        "{report}"
    );
    report
}

/// The filter in a gateway, in the plugin folder under its name, on a route
/// with the settings from the project's `filter.toml`.
fn serve(project: &Path, wasm: &Path, name: &str) -> (Gateway, Upstream, tempdir::Dir) {
    let up = Upstream::start("app");
    let plugins = tempdir::Dir::new();
    std::fs::copy(wasm, plugins.path().join(format!("{name}.wasm"))).unwrap();
    let settings = std::fs::read_to_string(project.join("filter.toml")).unwrap();
    let addr = up.addr;
    let gw = Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        let preamble = crate::common::preamble_with_plugins(listen, admin, plugins.path());
        format!(
            "{preamble}[upstreams.app]\ninstances = [\"{addr}\"]\n\
             [filters.{name}]\nplugin = \"{name}\"\n[filters.{name}.config]\n{settings}\n\
             [[route]]\nid = \"api\"\nupstream = \"app\"\nfilters = [\"{name}\"]\n"
        )
    });
    (gw, up, plugins)
}

/// The behaviour every non-WAT template has: a request without the header
/// `require` names is refused, the others reach the upstream tagged.
fn serves_as_written(project: &Path, wasm: &Path, name: &str) {
    let (gw, up, _plugins) = serve(project, wasm, name);
    let r = gw.get("/hello", &[]);
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert_eq!(r.body_text(), "missing header x-client\n");
    let r = gw.get("/hello", &[("x-client", "demo")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header(&format!("x-{name}")), Some("seen"));
}

#[test]
fn a_rust_project_builds_on_its_own_and_the_sdk_works_vendored_by_path_and_by_git() {
    let dir = tempdir::Dir::new();
    let project = scaffold("rust", "tagger", dir.path());
    assert!(
        project.join("filter-sdk/wit/filter.wit").is_file(),
        "the SDK and its WIT travel with it"
    );
    // So does the 0.2 API, which the vendored crate builds with `v2`.
    assert!(project.join("filter-sdk/wit-0.2/filter.wit").is_file());
    cargo(&project.join("filter-sdk"), &["check", "--features", "v2"]);
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("workspace = true") && !manifest.contains("../"),
        "{manifest}"
    );

    // Its own unit test, natively, then the plugin.
    let tested = cargo(&project, &["test"]);
    assert!(tested.contains("test result: ok. 1 passed"), "{tested}");
    cargo(
        &project,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = cargo_target().join("wasm32-wasip2/release/tagger.wasm");
    let report = check_and_test(&project, &wasm);
    assert!(report.contains("x-tagger: seen"), "{report}");
    serves_as_written(&project, &wasm, "tagger");

    // The SDK by path: this repository's plugins/sdk.
    let by_path = scaffold("rust", "tagger-path", dir.path());
    std::fs::remove_dir_all(by_path.join("filter-sdk")).unwrap();
    let sdk = repo().join("plugins/sdk");
    edit_dependency(&by_path, &format!("{{ path = \"{}\" }}", sdk.display()));
    // A panic on one path, to see the SDK's panic hook at work.
    let source = by_path.join("src/lib.rs");
    let code = std::fs::read_to_string(&source).unwrap();
    let panicking = code.replace(
        "        let _ = req.set_header(",
        "        if req.path() == \"/panic\" {\n            panic!(\"tagger-path panics on {}\", req.path());\n        }\n        let _ = req.set_header(",
    );
    assert_ne!(code, panicking);
    std::fs::write(&source, panicking).unwrap();
    cargo(
        &by_path,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = cargo_target().join("wasm32-wasip2/release/tagger_path.wasm");
    check_and_test(&by_path, &wasm);
    let (gw, _up, _plugins) = serve(&by_path, &wasm, "tagger-path");
    let r = gw.get("/panic", &[("x-client", "demo")]);
    assert_eq!(r.status, 500, "{}", r.body_text());
    let id = r.header("x-request-id").unwrap().to_string();
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains("panicked at"))
        .unwrap_or_else(|| panic!("no panic line for {id}:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("src/lib.rs:"), "the location: {line}");
    assert!(
        line.contains("tagger-path panics on /panic"),
        "the message: {line}"
    );
    assert!(line.contains("filter=\"tagger-path\""), "{line}");

    // The SDK by git: a repository holding the folder as this one does.
    let git_repo = dir.path().join("sdk-repo");
    copy_dir(&sdk, &git_repo.join("plugins/sdk"));
    let git = |args: &[&str]| {
        run(
            &format!("git {}", args.join(" ")),
            Command::new("git")
                .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
                .args(args)
                .current_dir(&git_repo),
        )
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "sdk"]);
    let by_git = scaffold("rust", "tagger-git", dir.path());
    std::fs::remove_dir_all(by_git.join("filter-sdk")).unwrap();
    edit_dependency(
        &by_git,
        &format!("{{ git = \"file://{}\" }}", git_repo.display()),
    );
    cargo(
        &by_git,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    check_and_test(
        &by_git,
        &cargo_target().join("wasm32-wasip2/release/tagger_git.wasm"),
    );
}

fn edit_dependency(project: &Path, dependency: &str) {
    let path = project.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let edited = manifest.replace(
        "filter-sdk = { path = \"filter-sdk\" }",
        &format!("filter-sdk = {dependency}"),
    );
    assert_ne!(edited, manifest);
    std::fs::write(path, edited).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn javascript_python_and_wat_projects_build_test_and_serve() {
    let dir = tempdir::Dir::new();

    let js = scaffold("js", "js-tagger", dir.path());
    run(
        "npm install",
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&js),
    );
    run(
        "npm run build",
        Command::new("npm").args(["run", "build"]).current_dir(&js),
    );
    let wasm = js.join("js-tagger.wasm");
    check_and_test(&js, &wasm);
    serves_as_written(&js, &wasm, "js-tagger");
    let refused = refused_at(&wasm, "js-tagger", "requir = \"x-client\"");
    assert!(
        refused.contains(
            "gateway.toml:8:10: filter `js-tagger` refused its configuration: at `requir`:"
        ),
        "{refused}"
    );

    let py = scaffold("python", "py-tagger", dir.path());
    run(
        "python3 -m venv",
        Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(&py),
    );
    run(
        "pip install",
        Command::new(py.join(".venv/bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                "requirements.txt",
            ])
            .current_dir(&py),
    );
    run(
        "componentize-py",
        Command::new(py.join(".venv/bin/componentize-py"))
            .args([
                "-d",
                "wit",
                "-w",
                "plugin",
                "componentize",
                "app",
                "-o",
                "py-tagger.wasm",
            ])
            .current_dir(&py),
    );
    let wasm = py.join("py-tagger.wasm");
    check_and_test(&py, &wasm);
    serves_as_written(&py, &wasm, "py-tagger");
    // A setting the Python filter refuses is reported at its TOML line,
    // by the convention the template follows.
    let refused = refused_at(&wasm, "py-tagger", "requir = \"x-client\"");
    assert!(
        refused.contains(
            "gateway.toml:8:10: filter `py-tagger` refused its configuration: at `requir`:"
        ),
        "{refused}"
    );

    let wat = wat_project(dir.path());
    let wasm = wat.join("ua-check.wasm");
    check_and_test(&wat, &wasm);
    let (gw, _up, _plugins) = serve(&wat, &wasm, "ua-check");
    assert_eq!(gw.get("/", &[]).status, 403);
    assert_eq!(gw.get("/", &[("user-agent", "curl/8")]).status, 200);
}

/// `gateway check` on a config giving the filter `settings`; answers what
/// it printed. Line 8 of the file holds the settings.
fn refused_at(wasm: &Path, name: &str, settings: &str) -> String {
    let dir = tempdir::Dir::new();
    std::fs::copy(wasm, dir.path().join(format!("{name}.wasm"))).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[plugins]\ndir = \".\"\n\
             [filters.{name}]\nplugin = \"{name}\"\n[filters.{name}.config]\n{settings}\n"
        ),
    )
    .unwrap();
    let out = gateway_command()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--log-format json` writes one JSON object per line; `--log-level`
/// chooses the gateway's own lines.
#[test]
fn log_format_and_level_are_chosen_on_the_command_line() {
    let dir = tempdir::Dir::new();
    let wat = wat_project(dir.path());
    let check = |args: &[&str]| {
        let out = gateway_command()
            .args(args)
            .args(["plugin", "check", "ua-check.wasm"])
            .env_remove("GATEWAY_LOG")
            .current_dir(&wat)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let json = check(&["--log-format", "json"]);
    let lines: Vec<&str> = json.lines().collect();
    assert!(!lines.is_empty(), "the compile cache's line at info");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "INFO", "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    assert_eq!(
        check(&["--log-level", "warn"]),
        "",
        "nothing at warn or above"
    );
}

#[test]
fn plugin_new_refuses_bad_names_and_occupied_folders() {
    let dir = tempdir::Dir::new();
    let out = gateway_command()
        .args(["plugin", "new", "Bad Name", "--lang", "rust", "--dir"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot name a filter"));
    std::fs::write(dir.path().join("taken"), "").unwrap();
    let out = gateway_command()
        .args(["plugin", "new", "ok", "--lang", "wat", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists and is not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `plugin test` reports a request that does not get what it expects, with
/// the difference, and exits 1.
#[test]
fn plugin_test_fails_on_an_unmet_expectation() {
    let dir = tempdir::Dir::new();
    let wat = wat_project(dir.path());
    std::fs::write(
        wat.join("wrong.toml"),
        "[[request]]\nname = \"wrongly expected\"\npath = \"/\"\nexpect = { action = \"respond\", status = 401 }\n",
    )
    .unwrap();
    let out = gateway_command()
        .args(["plugin", "test", "ua-check.wasm", "--request", "wrong.toml"])
        .current_dir(&wat)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("FAILED: on-request: expected status 401, got 403"),
        "{said}"
    );
    assert!(said.contains("1 requests: 0 as expected, 1 not"), "{said}");

    std::fs::write(
        wat.join("typo.toml"),
        "[[request]]\npath = \"/\"\nexpcet = {}\n",
    )
    .unwrap();
    let out = gateway_command()
        .args(["plugin", "test", "ua-check.wasm", "--request", "typo.toml"])
        .current_dir(&wat)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("typo.toml:3:1"), "{said}");
}
