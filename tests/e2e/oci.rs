//! `gateway plugin pull` against a real OCI registry (Debian's
//! `docker-registry`, the CNCF distribution registry, which `make setup`
//! installs) on loopback: a plugin pushed as a wasm artifact by the
//! registry's HTTP API is pulled by digest byte for byte, taken up by a
//! running gateway only as its pin allows, and every way the content could
//! differ from what the digest names is refused with nothing written.

use crate::common::{Gateway, RawResponse, Upstream, gateway_command, plugin_dir, raw, tempdir};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ARTIFACT_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `docker-registry` on a loopback port, storing in a folder of its own;
/// killed when dropped.
struct Registry {
    addr: SocketAddr,
    child: Child,
    _dir: tempdir::Dir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempdir::Dir::new();
        let storage = dir.path().join("storage");
        let registry = Registry::serve(dir, &storage, None);
        let deadline = Instant::now() + Duration::from_secs(15);
        while registry.request("GET", "/v2/", &[], b"").status != 200 {
            assert!(Instant::now() < deadline, "docker-registry did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// A second registry serving this one's storage over TLS, with a
    /// certificate for 127.0.0.1 from `ca`: what is pushed here is pulled
    /// there (the test pushes over plain HTTP only).
    fn tls_twin(&self, ca: &crate::tls::Ca) -> Registry {
        let dir = tempdir::Dir::new();
        ca.server("registry", &["127.0.0.1"])
            .write(dir.path(), "registry");
        let tls = (
            dir.path().join("registry.pem"),
            dir.path().join("registry.key"),
        );
        Registry::serve(dir, &self._dir.path().join("storage"), Some(tls))
    }

    /// Starts `docker-registry` with a config file in `dir`, storing in
    /// `storage`, and waits until it accepts connections.
    fn serve(
        dir: tempdir::Dir,
        storage: &Path,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Registry {
        // The registry binds its own socket, so the port is picked free
        // and tried; another process taking it meanwhile fails the start
        // loudly rather than silently.
        let port = crate::common::free_port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((cert, key)) = tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (install it with `make setup`)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut registry = Registry {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).is_err() {
            assert!(
                registry.child.try_wait().unwrap().is_none(),
                "docker-registry exited at start"
            );
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        raw(self.addr, &bytes)
    }

    /// A monolithic blob upload (POST for an upload URL, PUT with the
    /// digest); returns the digest.
    fn push_blob(&self, repo: &str, blob: &[u8]) -> String {
        let digest = format!("sha256:{}", sha256_hex(blob));
        let started = self.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
        assert_eq!(started.status, 202, "{}", started.body_text());
        let location = started.header("location").expect("an upload location");
        // The registry answers with an absolute URL on its own address.
        let path = location
            .strip_prefix(&format!("http://{}", self.addr))
            .unwrap_or(location);
        let sep = if path.contains('?') { '&' } else { '?' };
        let put = self.request(
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("content-type", "application/octet-stream")],
            blob,
        );
        assert_eq!(put.status, 201, "{}", put.body_text());
        digest
    }

    /// Pushes `manifest` under `tag`; returns its digest as the registry
    /// reports it.
    fn push_manifest(&self, repo: &str, tag: &str, manifest: &[u8]) -> String {
        let put = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            manifest,
        );
        assert_eq!(put.status, 201, "{}", put.body_text());
        let digest = put
            .header("docker-content-digest")
            .expect("the manifest's digest")
            .to_string();
        assert_eq!(digest, format!("sha256:{}", sha256_hex(manifest)));
        digest
    }

    /// `wasm` as a wasm OCI artifact (config `{}` of the wasm config type,
    /// one `application/wasm` layer) under `tag`; returns the manifest and
    /// its digest.
    fn push_plugin(&self, repo: &str, tag: &str, wasm: &[u8]) -> (Vec<u8>, String) {
        let config = b"{}";
        let config_digest = self.push_blob(repo, config);
        let layer_digest = self.push_blob(repo, wasm);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": ARTIFACT_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/wasm", "digest": layer_digest, "size": wasm.len()}],
        }))
        .unwrap();
        let digest = self.push_manifest(repo, tag, &manifest);
        (manifest, digest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn headers_plugin() -> Vec<u8> {
    crate::common::build_plugins();
    std::fs::read(plugin_dir().join("headers.wasm")).unwrap()
}

/// The same component with a custom section appended: another file (and
/// hash) that behaves the same, as a rebuild with new metadata would be.
fn with_custom_section(component: &[u8], note: &str) -> Vec<u8> {
    let name = b"gateway-test-build";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(note.as_bytes());
    assert!(payload.len() < 128, "one LEB128 byte of length");
    let mut out = component.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

fn pull(reference: &str, dir: &Path, name: &str, env: &[(&str, &str)]) -> Output {
    pull_with(reference, dir, name, env, &["--plain-http"])
}

fn pull_with(
    reference: &str,
    dir: &Path,
    name: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> Output {
    let mut c = gateway_command();
    c.args(["plugin", "pull", reference, "--dir"])
        .arg(dir)
        .args(["--name", name])
        .args(flags);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run gateway plugin pull")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What the folder holds, by name: a refused pull leaves nothing, not
/// even its temporary file.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_plugin_pulled_by_digest_is_the_pushed_file_and_prints_its_pin() {
    let registry = Registry::start();
    let wasm = headers_plugin();
    let (_, digest) = registry.push_plugin("plugins/headers", "v1", &wasm);
    let dir = tempdir::Dir::new();
    let reference = format!("{}/plugins/headers@{digest}", registry.addr);
    let out = pull(&reference, dir.path(), "hdr", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(files(dir.path()), ["hdr.wasm"]);
    assert!(std::fs::read(dir.path().join("hdr.wasm")).unwrap() == wasm);
    let hash = sha256_hex(&wasm);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("{hash}  ")), "{stdout}");
    assert!(stdout.contains(&format!("sha256 = \"{hash}\"")), "{stdout}");
    // The pin printed is what `gateway plugin hash` says of the file.
    let hashed = gateway_command()
        .args(["plugin", "hash"])
        .arg(dir.path().join("hdr.wasm"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&hashed.stdout).starts_with(&hash));

    // `repo:tag@digest`, as some tools print it: the digest decides.
    let tagged = format!("{}/plugins/headers:v1@{digest}", registry.addr);
    let out = pull(&tagged, dir.path(), "again", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(dir.path().join("again.wasm")).unwrap() == wasm);
}

#[test]
fn a_running_gateway_takes_up_a_pulled_version_only_when_its_pin_says_so() {
    let registry = Registry::start();
    let v1 = headers_plugin();
    let v2 = with_custom_section(&v1, "v2");
    let (_, d1) = registry.push_plugin("plugins/headers", "v1", &v1);
    let (_, d2) = registry.push_plugin("plugins/headers", "v2", &v2);
    let (h1, h2) = (sha256_hex(&v1), sha256_hex(&v2));
    let upstream = Upstream::start("app");
    let dir = tempdir::Dir::new();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let out = pull(
        &format!("{}/plugins/headers@{d1}", registry.addr),
        &plugins,
        "hdr",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));

    let config = move |listen: SocketAddr, admin: SocketAddr, pin: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[plugins]\ndir = \"plugins\"\n\n[reload]\nwatch = true\n\n\
             [filters.hdr]\nplugin = \"hdr\"\nsha256 = \"{pin}\"\n\n[filters.hdr.config]\nadd_response = {{ \"x-pulled\" = \"yes\" }}\n\n\
             [upstreams.app]\ninstances = [\"{}\"]\n\n[[route]]\nid = \"all\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"hdr\"]\n",
            upstream.addr
        )
    };
    let gw = Gateway::start_with(dir, |listen, admin| config(listen, admin, &h1));
    let plugin = |gw: &Gateway| -> serde_json::Value {
        let r = gw.admin("GET", "/admin/plugins");
        assert_eq!(r.status, 200, "{}", r.body_text());
        let all: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        all["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "hdr")
            .cloned()
            .unwrap_or_else(|| panic!("no plugin hdr in {all}"))
    };
    assert_eq!(plugin(&gw)["sha256"], h1.as_str());
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-pulled"), Some("yes"), "the pulled filter runs");

    // v2 lands in the folder; the watcher reloads and the pin refuses it,
    // so v1 serves on.
    let out = pull(
        &format!("{}/plugins/headers@{d2}", registry.addr),
        &plugins,
        "hdr",
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(plugins.join("hdr.wasm")).unwrap() == v2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let p = plugin(&gw);
        if let Some(e) = p["last_reload_error"]["error"].as_str() {
            break e.to_string();
        }
        assert!(Instant::now() < deadline, "no reload refused v2: {p}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refused.contains(&h1) && refused.contains(&h2), "{refused}");
    assert_eq!(plugin(&gw)["sha256"], h1.as_str());
    assert_eq!(gw.get("/", &[]).header("x-pulled"), Some("yes"));

    // The pin moves to v2: the next reload takes it up.
    let listen = gw.addr;
    let admin = gw.admin;
    std::fs::write(gw.config_path(), config(listen, admin, &h2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin(&gw)["sha256"] != h2.as_str() {
        assert!(
            Instant::now() < deadline,
            "v2 not taken up after the pin moved: {}",
            plugin(&gw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(gw.get("/", &[]).header("x-pulled"), Some("yes"));
}

#[test]
fn tags_missing_digests_and_blobs_that_are_no_component_are_refused_and_write_nothing() {
    let registry = Registry::start();
    let dir = tempdir::Dir::new();

    // A tag, even one that exists.
    let wasm = headers_plugin();
    registry.push_plugin("plugins/headers", "v1", &wasm);
    let out = pull(
        &format!("{}/plugins/headers:v1", registry.addr),
        dir.path(),
        "hdr",
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("a tag can be moved"), "{}", text(&out));

    // A digest the registry does not hold: the URL and the 404 are named.
    let absent = sha256_hex(b"no such manifest");
    let out = pull(
        &format!("{}/plugins/headers@sha256:{absent}", registry.addr),
        dir.path(),
        "hdr",
        &[],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "http://{}/v2/plugins/headers/manifests/sha256:{absent}",
            registry.addr
        )) && said.contains("404"),
        "{said}"
    );

    // A layer that is not a component: fetched and checked, then refused.
    let garbage = b"\0asm\x01\0\0\0 this is no component".to_vec();
    let (_, digest) = registry.push_plugin("plugins/garbage", "v1", &garbage);
    let out = pull(
        &format!("{}/plugins/garbage@{digest}", registry.addr),
        dir.path(),
        "hdr",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not a filter plugin"),
        "{}",
        text(&out)
    );

    // Nothing was written by any of them.
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

/// A registry front on loopback, for what the real registry never does:
/// it asks for a bearer token (from its own `/token`), answers the
/// manifests it is given, and sends blobs to the real registry by a
/// redirect, or answers them itself when given other bytes. Each request
/// is one connection.
struct Front {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
}

struct FrontRoutes {
    token: &'static str,
    /// Path → body.
    bodies: Vec<(String, Vec<u8>)>,
    /// Where blobs not in `bodies` are sent.
    blobs_at: SocketAddr,
}

impl Front {
    fn start(routes: FrontRoutes) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    Front::answer(conn, addr, &routes, &seen);
                }
            })
        };
        Front {
            addr,
            stop,
            thread: Some(thread),
            seen,
        }
    }

    fn answer(
        conn: TcpStream,
        me: SocketAddr,
        routes: &FrontRoutes,
        seen: &std::sync::Mutex<Vec<String>>,
    ) {
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut authorization = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("authorization")
            {
                authorization = Some(v.trim().to_string());
            }
        }
        seen.lock().unwrap().push(format!(
            "{target} {}",
            authorization.as_deref().unwrap_or("-")
        ));
        let reply = |status: &str, headers: &[(&str, String)], body: &[u8]| {
            let mut head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut c = &conn;
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(body);
        };
        if target.starts_with("/token?") {
            let body = format!("{{\"token\":\"{}\"}}", routes.token);
            return reply(
                "200 OK",
                &[("content-type", "application/json".into())],
                body.as_bytes(),
            );
        }
        if authorization.as_deref() != Some(&format!("Bearer {}", routes.token)) {
            let challenge = format!(
                "Bearer realm=\"http://{me}/token\",service=\"front\",scope=\"repository:plugins/headers:pull\""
            );
            return reply(
                "401 Unauthorized",
                &[("www-authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        if let Some((_, body)) = routes.bodies.iter().find(|(p, _)| *p == target) {
            return reply("200 OK", &[("content-type", OCI_MANIFEST.into())], body);
        }
        if target.contains("/blobs/") {
            let to = format!("http://{}{target}", routes.blobs_at);
            return reply("307 Temporary Redirect", &[("location", to)], b"");
        }
        reply("404 Not Found", &[], b"")
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_token_challenge_and_a_redirected_blob_are_followed_and_altered_content_is_refused() {
    let registry = Registry::start();
    let wasm = headers_plugin();
    let (manifest, digest) = registry.push_plugin("plugins/headers", "v1", &wasm);
    let manifest_path = format!("/v2/plugins/headers/manifests/{digest}");

    // The manifest as pushed, the blob through a redirect to the registry.
    let front = Front::start(FrontRoutes {
        token: "t0ken",
        bodies: vec![(manifest_path.clone(), manifest.clone())],
        blobs_at: registry.addr,
    });
    let dir = tempdir::Dir::new();
    let reference = format!("{}/plugins/headers@{digest}", front.addr);
    let out = pull(&reference, dir.path(), "hdr", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(dir.path().join("hdr.wasm")).unwrap() == wasm);
    let seen = front.seen.lock().unwrap().clone();
    assert!(seen[0].ends_with(" -"), "first anonymous: {seen:?}");
    assert!(
        seen.iter()
            .any(|s| s.starts_with("/token?service=front&scope=repository:plugins/headers:pull")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with(&manifest_path) && s.ends_with("Bearer t0ken")),
        "{seen:?}"
    );
    drop(front);

    // Credentials, when given, go to the token service as basic auth.
    let front = Front::start(FrontRoutes {
        token: "t0ken",
        bodies: vec![(manifest_path.clone(), manifest.clone())],
        blobs_at: registry.addr,
    });
    let reference = format!("{}/plugins/headers@{digest}", front.addr);
    let out = pull(
        &reference,
        dir.path(),
        "hdr",
        &[
            ("GATEWAY_REGISTRY_USER", "ci"),
            ("GATEWAY_REGISTRY_PASSWORD", "s3cret"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // base64("ci:s3cret")
    assert!(
        front
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.starts_with("/token?") && s.ends_with("Basic Y2k6czNjcmV0")),
        "{:?}",
        front.seen.lock().unwrap()
    );
    drop(front);

    let clean = tempdir::Dir::new();
    // A manifest other than the one the digest names (one byte more).
    let mut tampered = manifest.clone();
    tampered.push(b'\n');
    let front = Front::start(FrontRoutes {
        token: "t0ken",
        bodies: vec![(manifest_path.clone(), tampered)],
        blobs_at: registry.addr,
    });
    let out = pull(
        &format!("{}/plugins/headers@{digest}", front.addr),
        clean.path(),
        "hdr",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("not {digest}; refusing it")),
        "{}",
        text(&out)
    );
    drop(front);

    // The right manifest, but a blob of the same size with other bytes.
    let layer = format!("sha256:{}", sha256_hex(&wasm));
    let mut other = wasm.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let front = Front::start(FrontRoutes {
        token: "t0ken",
        bodies: vec![
            (manifest_path.clone(), manifest.clone()),
            (format!("/v2/plugins/headers/blobs/{layer}"), other),
        ],
        blobs_at: registry.addr,
    });
    let out = pull(
        &format!("{}/plugins/headers@{digest}", front.addr),
        clean.path(),
        "hdr",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("not {layer}; refusing it")),
        "{}",
        text(&out)
    );
    assert!(files(clean.path()).is_empty(), "{:?}", files(clean.path()));
}

#[test]
fn https_is_the_default_and_the_registry_certificate_is_verified() {
    let registry = Registry::start();
    let wasm = headers_plugin();
    let (_, digest) = registry.push_plugin("plugins/headers", "v1", &wasm);
    let ca = crate::tls::Ca::new("registry test CA");
    let twin = registry.tls_twin(&ca);
    let cas = tempdir::Dir::new();
    let ca_file = cas.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let dir = tempdir::Dir::new();
    let reference = format!("{}/plugins/headers@{digest}", twin.addr);

    // Trusting the test's CA (the system's CAs, as SSL_CERT_FILE names them).
    let trusted = [("SSL_CERT_FILE", ca_file.to_str().unwrap())];
    let out = pull_with(&reference, dir.path(), "hdr", &trusted, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(dir.path().join("hdr.wasm")).unwrap() == wasm);

    // The same registry, with a CA bundle that does not hold its issuer.
    let other = cas.path().join("other.pem");
    std::fs::write(&other, crate::tls::Ca::new("another CA").pem).unwrap();
    let untrusted = [("SSL_CERT_FILE", other.to_str().unwrap())];
    let out = pull_with(&reference, dir.path(), "other", &untrusted, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "https://{}/v2/plugins/headers/manifests/",
            twin.addr
        )) && text(&out).contains("TLS: "),
        "{}",
        text(&out)
    );

    // A plain-HTTP registry without --plain-http: refused, with the hint.
    let out = pull_with(
        &format!("{}/plugins/headers@{digest}", registry.addr),
        dir.path(),
        "plain",
        &trusted,
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("pass --plain-http"), "{}", text(&out));
    assert_eq!(files(dir.path()), ["hdr.wasm"]);
}
