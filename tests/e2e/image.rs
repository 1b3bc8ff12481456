//! The container image: the gateway built as one static binary (musl) that
//! needs nothing from the system it runs on, and the image `make image`
//! builds from it (Containerfile, deploy/container/build.sh), run with
//! podman the way an orchestrator runs it: as user 10001, addresses from
//! the environment, stopped by SIGTERM.
//!
//! The static binary is built by `make static` (a dependency of
//! `make test`), never here: a cold musl build takes minutes.

use crate::common::*;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `make static` leaves the binary the image holds.
fn static_bin() -> PathBuf {
    let bin = repo().join("target/x86_64-unknown-linux-musl/release/gateway");
    assert!(
        bin.exists(),
        "{} is missing; `make static` builds it",
        bin.display()
    );
    bin
}

/// What an executable asks of the dynamic loader: the interpreter it names
/// (PT_INTERP) and the shared libraries it needs (DT_NEEDED). A static
/// binary, static-pie included, has neither.
#[derive(Debug)]
struct Linking {
    interpreter: Option<String>,
    needed: Vec<String>,
}

/// Reads `Linking` from a 64-bit little-endian ELF file.
fn linking(path: &Path) -> Linking {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    let elf = std::fs::read(path).unwrap();
    assert!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let cstr = |at: usize| {
        let end = at + elf[at..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8_lossy(&elf[at..end]).into_owned()
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    // (type, file offset, virtual address, size in the file)
    let segments: Vec<(u32, usize, u64, usize)> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .map(|h| {
            (
                u32_at(h),
                u64_at(h + 8) as usize,
                u64_at(h + 16),
                u64_at(h + 32) as usize,
            )
        })
        .collect();
    let interpreter = segments
        .iter()
        .find(|s| s.0 == PT_INTERP)
        .map(|&(_, offset, _, _)| cstr(offset));
    let mut needed = Vec::new();
    if let Some(&(_, offset, _, size)) = segments.iter().find(|s| s.0 == PT_DYNAMIC) {
        let entries: Vec<(u64, u64)> = (offset..offset + size)
            .step_by(16)
            .map(|e| (u64_at(e), u64_at(e + 8)))
            .take_while(|&(tag, _)| tag != 0)
            .collect();
        // Library names are offsets into the string table, which the
        // dynamic section names by its address once loaded.
        let strtab = entries.iter().find(|e| e.0 == DT_STRTAB).map(|&(_, addr)| {
            let &(_, offset, vaddr, _) = segments
                .iter()
                .find(|s| s.0 == PT_LOAD && s.2 <= addr && addr < s.2 + s.3 as u64)
                .expect("the string table lies in a loaded segment");
            offset + (addr - vaddr) as usize
        });
        for &(_, name) in entries.iter().filter(|e| e.0 == DT_NEEDED) {
            needed.push(cstr(
                strtab.expect("DT_NEEDED without DT_STRTAB") + name as usize,
            ));
        }
    }
    Linking {
        interpreter,
        needed,
    }
}

#[test]
fn the_static_binary_needs_no_shared_libraries() {
    let musl = linking(&static_bin());
    assert!(
        musl.interpreter.is_none() && musl.needed.is_empty(),
        "the musl build is dynamically linked: {musl:?}"
    );
    // The same reading of the usual (glibc) build finds its loader and
    // libc: the check above can tell the two apart.
    let glibc = linking(Path::new(&gateway_bin()));
    assert!(
        glibc.interpreter.is_some() && glibc.needed.iter().any(|l| l.starts_with("libc.so")),
        "the glibc build read as {glibc:?}"
    );
}

/// config/gateway.toml, the configuration the image runs.
fn shipped_config() -> toml::Table {
    let text = std::fs::read_to_string(repo().join("config/gateway.toml")).unwrap();
    text.parse().unwrap()
}

/// How many plugins the shipped configuration's filters load (a plugin
/// shared by two filters is compiled once).
fn plugins_used() -> usize {
    let config = shipped_config();
    let plugins: std::collections::BTreeSet<&str> = config["filters"]
        .as_table()
        .unwrap()
        .values()
        .map(|f| f["plugin"].as_str().unwrap())
        .collect();
    plugins.len()
}

/// A GET on a fresh connection.
fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n").as_bytes(),
    )
}

/// The status `path` on `addr` answers with, or None while nothing
/// answers (not listening yet, or a connection closed before an answer).
fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut head = [0; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Waits until `/ready` on `admin` answers 200; `exited` says whether the
/// process serving it is gone (then waiting is over) and what it said.
fn wait_ready(admin: SocketAddr, mut exited: impl FnMut() -> Option<String>) {
    // Compiling the shipped plugins without a compile cache takes seconds
    // on two cores; the bound only turns a hang into a failure.
    let deadline = Instant::now() + Duration::from_secs(90);
    while status_of(admin, "/ready") != Some(200) {
        if let Some(why) = exited() {
            panic!("the gateway exited before it was ready:\n{why}");
        }
        assert!(Instant::now() < deadline, "/ready not 200 within 90 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/echo` through the default configuration: the echo upstream's account
/// of the request, after the header filter (which adds
/// X-Content-Type-Options) and the rate limit.
fn assert_echo_serves(addr: SocketAddr) {
    let r = get(addr, "/echo/from-outside");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let seen: serde_json::Value = serde_json::from_slice(&r.body).expect("the echo's JSON");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["uri"], "/echo/from-outside");
}

/// Three free loopback addresses, for LISTEN, ADMIN_LISTEN and ECHO_LISTEN:
/// what the image is configured with. (Chosen, then released: the image
/// binds its own sockets, so these cannot be handed over.)
fn free_addrs() -> [SocketAddr; 3] {
    [(); 3].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
}

/// The musl build stopped and waited for when dropped.
struct Running(Child, PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_static_binary_checks_and_serves_the_default_config() {
    let bin = static_bin();
    let config = repo().join("config/gateway.toml");
    // The musl build's own compile cache: its entries never meet the glibc
    // build's in target/test-cache.
    let cache = repo().join("target/test-cache-musl");

    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("gateway {}", env!("CARGO_PKG_VERSION"))
    );

    let shipped = shipped_config();
    let routes = shipped["route"].as_array().unwrap().len();
    let filters = shipped["filters"].as_table().unwrap().len();
    let checked = Command::new(&bin)
        .args(["check", "--config"])
        .arg(&config)
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout).trim(),
        format!("configuration OK: {routes} routes, {filters} filters loaded")
    );

    let [listen, admin, echo] = free_addrs();
    let dir = tempdir::Dir::new();
    let log = dir.path().join("gateway.log");
    let child = Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("LISTEN", listen.to_string())
        .env("ADMIN_LISTEN", admin.to_string())
        .env("ECHO_LISTEN", echo.to_string())
        .env("XDG_CACHE_HOME", &cache)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut gw = Running(child, log);
    let log = |gw: &Running| std::fs::read_to_string(&gw.1).unwrap_or_default();
    wait_ready(admin, || {
        gw.0.try_wait()
            .unwrap()
            .map(|status| format!("{status}\n{}", log(&gw)))
    });
    assert_echo_serves(listen);
    assert_eq!(status_of(admin, "/health"), Some(200));

    let stopped = Command::new("kill")
        .args(["-TERM", &gw.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = gw.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 40 s after SIGTERM:\n{}",
            log(&gw)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", log(&gw));
}

/// podman with the project's settings (deploy/container/containers.conf:
/// runc, and limits a root without CAP_SYS_RESOURCE may grant).
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .env(
            "CONTAINERS_CONF",
            repo().join("deploy/container/containers.conf"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman ({e}); `make setup` installs it"))
}

/// `podman ARGS`, which must succeed; its standard output.
fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An image tag of this test's own, removed when dropped (the layers it
/// shares with localhost/gateway:latest stay).
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "--force", &self.0]);
    }
}

/// A container, removed (killed first if need be) when dropped, failed
/// test or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

impl Container {
    /// `podman run --detach` of `image` on the host's network, with the
    /// listen addresses from `addrs` and `extra` options.
    fn run(image: &Image, addrs: [SocketAddr; 3], extra: &[&str]) -> Container {
        let name = format!("gateway-e2e-{}-{}", std::process::id(), addrs[0].port());
        let env = [
            ("LISTEN", addrs[0]),
            ("ADMIN_LISTEN", addrs[1]),
            ("ECHO_LISTEN", addrs[2]),
        ]
        .map(|(k, v)| format!("{k}={v}"));
        let mut args = vec!["run", "--detach", "--name", &name, "--network", "host"];
        for e in &env {
            args.extend(["--env", e]);
        }
        args.extend(extra);
        args.push(&image.0);
        // Named before it starts, so a failed start is removed too.
        let container = Container(name.clone());
        podman_ok(&args);
        container
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "--format", format, &self.0])
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.0]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn wait_ready(&self, admin: SocketAddr) {
        wait_ready(admin, || {
            (self.inspect("{{.State.Running}}") != "true").then(|| self.logs())
        });
    }

    /// The container's main process as the host sees it.
    fn pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }
}

/// The `Uid:` or `Gid:` line of /proc/PID/status: real, effective, saved
/// and filesystem ids.
fn ids(pid: u32, which: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(which))
        .unwrap_or_else(|| panic!("no {which} in /proc/{pid}/status"));
    line.split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The compiled plugins in a running container's compile cache, read
/// through its root as /proc shows it to the host: (file name, owner).
fn cache_entries(pid: u32) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let dir = format!("/proc/{pid}/root/var/cache/gateway/plugins");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .map(|e| {
            let owner = e.metadata().unwrap().uid();
            (e.file_name().to_string_lossy().into_owned(), owner)
        })
        .collect()
}

/// The image's whole promise: built from the static binary, small, run as
/// user 10001 with its addresses from the environment, serving the default
/// configuration with the shipped plugins, keeping compiled plugins in its
/// cache folder (also with a read-only root and that folder mounted, as
/// Kubernetes runs it), drained by `gateway drain` run inside it, and
/// stopped by SIGTERM with status 0.
#[test]
fn the_image_serves_as_a_non_root_user_and_stops_on_sigterm() {
    // The image is built here from the current static binary and plugins
    // (a second or two: only COPY steps, cached while their inputs stay).
    let image = Image(format!("localhost/gateway-e2e:{}", std::process::id()));
    let built = Command::new(repo().join("deploy/container/build.sh"))
        .arg(&image.0)
        .env(
            "CONTAINERS_CONF",
            repo().join("deploy/container/containers.conf"),
        )
        .output()
        .expect("run deploy/container/build.sh");
    assert!(
        built.status.success(),
        "building the image failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let inspected: serde_json::Value =
        serde_json::from_str(&podman_ok(&["image", "inspect", &image.0])).unwrap();
    let config = &inspected[0]["Config"];
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/gateway"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["run", "--config", "/etc/gateway/config/gateway.toml"])
    );
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for e in ["LISTEN=0.0.0.0:8080", "ADMIN_LISTEN=0.0.0.0:9901"] {
        assert!(env.contains(&e), "{e} not in {env:?}");
    }
    let ports = config["ExposedPorts"].as_object().unwrap();
    assert!(
        ports.contains_key("8080/tcp") && ports.contains_key("9901/tcp"),
        "{ports:?}"
    );
    let size = inspected[0]["Size"].as_u64().unwrap();
    println!("image size: {:.1} MB", size as f64 / 1e6);
    assert!(size < 80_000_000, "the image is {size} bytes");

    // As `podman run` with no options but the addresses and an admin
    // token: the image's own writable cache folder.
    let token = "GATEWAY_ADMIN_TOKEN=image-test-admin-token";
    let [listen, admin, echo] = free_addrs();
    let container = Container::run(&image, [listen, admin, echo], &["--env", token]);
    container.wait_ready(admin);
    assert_echo_serves(listen);

    let pid = container.pid();
    assert_eq!(ids(pid, "Uid:"), [10001; 4], "the gateway's user ids");
    assert_eq!(ids(pid, "Gid:"), [10001; 4], "the gateway's group ids");
    // The name comes from the image's /etc/passwd.
    let user = podman_ok(&["top", &container.0, "user"]);
    assert_eq!(
        user.lines().nth(1).map(str::trim),
        Some("gateway"),
        "{user}"
    );
    let plugins = plugins_used();
    let cached = cache_entries(pid);
    assert_eq!(cached.len(), plugins, "{cached:?}");
    assert!(
        cached.iter().all(|(_, owner)| *owner == 10001),
        "{cached:?}"
    );

    // What a Kubernetes preStop hook runs (the image has no shell): the
    // gateway's own drain command, with the token from the container's
    // environment. Readiness fails while traffic is still served.
    let admin_arg = admin.to_string();
    podman_ok(&[
        "exec",
        &container.0,
        "/usr/local/bin/gateway",
        "drain",
        "--admin",
        &admin_arg,
        "--wait",
        "0s",
    ]);
    assert_eq!(status_of(admin, "/ready"), Some(503));
    assert_echo_serves(listen);

    let begun = Instant::now();
    podman_ok(&["stop", "--time", "40", &container.0]);
    let took = begun.elapsed();
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "{}",
        container.logs()
    );
    // podman stop sends SIGKILL when the grace runs out; the exit status
    // is then 137, so 0 means the gateway stopped by itself.
    println!("stopped in {took:?}");
    drop(container);

    // As Kubernetes runs it with readOnlyRootFilesystem and an emptyDir
    // on the cache folder: a host folder, root's and world-writable,
    // mounted there.
    let empty_dir = tempdir::Dir::new();
    std::fs::set_permissions(empty_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let volume = format!("{}:/var/cache/gateway", empty_dir.path().display());
    let [listen, admin, echo] = free_addrs();
    let container = Container::run(
        &image,
        [listen, admin, echo],
        &["--read-only", "--volume", &volume],
    );
    container.wait_ready(admin);
    assert_echo_serves(listen);
    let cached = cache_entries(container.pid());
    assert_eq!(cached.len(), plugins, "{cached:?}");
    assert!(
        cached.iter().all(|(_, owner)| *owner == 10001),
        "{cached:?}"
    );
}
