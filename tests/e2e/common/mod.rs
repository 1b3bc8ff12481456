//! The harness the end-to-end tests share: it builds the plugins, starts
//! real upstreams and a real `gateway` process on ephemeral loopback ports,
//! and speaks raw HTTP/1.1 so tests can send exactly the bytes they mean.

mod config;
pub use config::{Body, Route};

use bytes::Bytes;
use command_fds::{CommandFdExt, FdMapping};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `cargo build` of the plugins workspace leaves the components.
pub fn plugin_dir() -> PathBuf {
    repo().join("target/plugins/wasm32-wasip2/release")
}

static BUILD: Once = Once::new();

/// Builds the shipped and test plugins (a no-op when they are up to date).
pub fn build_plugins() {
    BUILD.call_once(|| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(repo().join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(repo().join("target/plugins"))
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("run cargo to build the plugins");
        assert!(
            status.success(),
            "building the plugins failed; is the wasm32-wasip2 target installed? (make setup)"
        );
    });
}

/// A loopback port nothing listens on once this returns (bound, then
/// released, so another process could take it meanwhile). Only for what
/// cannot be handed a socket: an address meant to refuse connections (a
/// dead instance), or another program that binds its own and may bind it
/// again (Redis, restarted on the same port; Prometheus). The gateway's
/// listeners, `[echo]` included, are bound by the harness and handed over;
/// see [`Gateway::launch`].
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    /// "HTTP/1.1" or "HTTP/2.0".
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }
}

/// A real HTTP upstream on loopback. It answers 200 with `x-upstream: NAME`
/// and records every request. Paths ask for behaviour (anywhere in the
/// path): `/slow/MS` waits,
/// `/status/N` answers N (the two combine as `/slow/MS/status/N`), `/leaky` answers with headers a gateway must
/// scrub.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _rt: tokio::runtime::Runtime,
}

async fn upstream_answer(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    let path = parts.uri.path().to_string();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body,
    });
    let mut resp = Response::builder().header("x-upstream", &name);
    // Behaviours combine: `/slow/300/status/503` waits, then fails; either
    // may follow a route's prefix (`/api/slow/300`).
    if let Some(at) = path.find("/slow/") {
        let ms = path[at + "/slow/".len()..].split('/').next().unwrap_or("0");
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(at) = path.find("/status/") {
        let code = path[at + "/status/".len()..]
            .split('/')
            .next()
            .unwrap_or("");
        resp = resp.status(code.parse::<u16>().unwrap_or(500));
    }
    if path == "/leaky" {
        resp = resp
            .header("server", "secret-server/1.2")
            .header("x-powered-by", "php/5")
            .header("connection", "x-internal")
            .header("x-internal", "should not leave")
            .header("keep-alive", "timeout=5");
    }
    Ok(resp
        .body(Full::new(Bytes::from(format!("hello from {name}\n"))))
        .unwrap())
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Upstream::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts an upstream on a given address: to bring one back on the
    /// port it had before it was stopped (dropped).
    pub fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        Upstream::serve(name, addr, None)
    }

    /// Starts an upstream that speaks TLS with `tls` (ALPN as it says), on
    /// a free loopback port.
    pub fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        Upstream::serve(name, "127.0.0.1:0".parse().unwrap(), Some(tls))
    }

    fn serve(name: &str, addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (n, s) = (name.to_string(), seen.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, s, tls) = (n.clone(), s.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        upstream_answer(n.clone(), s.clone(), req)
                    });
                    // HTTP/1.1, or HTTP/2 with prior knowledge (h2c), or
                    // either over TLS (the client's preface tells).
                    let server = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = server.serve_connection(io, svc).await;
                        }
                        Some(tls) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = server.serve_connection(io, svc).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            name: name.into(),
            seen,
            _rt: rt,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A server of a test's own on a free loopback port, with a runtime of its
/// own (stopped when dropped): `serve` gets each accepted connection, in a
/// task of its own.
pub struct LoopbackServer {
    pub addr: SocketAddr,
    pub rt: tokio::runtime::Runtime,
}

pub fn loopback_server<F, Fut>(serve: F) -> LoopbackServer
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        }
    });
    LoopbackServer { addr, rt }
}

/// An HTTP/2 client connection over `io` (prior knowledge, or TLS that
/// chose h2), driven in the background.
pub async fn h2_client<I, B>(io: I) -> hyper::client::conn::http2::SendRequest<B>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

/// A running `gateway run` process; killed when dropped.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub child: Child,
    pub dir: tempdir::Dir,
    /// Listeners handed over besides `server` and `admin`, in the order
    /// asked for (`start_with_echo`, `start_with_listeners`).
    pub extra: Vec<SocketAddr>,
}

pub mod tempdir {
    use std::path::{Path, PathBuf};
    /// A directory removed when dropped.
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "gateway-test-{}-{:x}",
                std::process::id(),
                rand_u64()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn rand_u64() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        h.finish()
    }
}

/// The `[server]`, `[admin]` and `[plugins]` sections every test config
/// starts with; `{LISTEN}` style placeholders are filled by [`Gateway::start`].
pub fn preamble(listen: SocketAddr, admin: SocketAddr) -> String {
    preamble_with_plugins(listen, admin, &plugin_dir())
}

/// `preamble`, with the plugin folder `plugins` instead of the shared one.
pub fn preamble_with_plugins(listen: SocketAddr, admin: SocketAddr, plugins: &Path) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nheader_read_timeout = \"1s\"\nrequest_timeout = \"2s\"\nmax_body_bytes = 1024\nmax_header_bytes = 8192\nmax_headers = 50\nshutdown_grace = \"10s\"\n\n[admin]\nlisten = \"{admin}\"\n\n[plugins]\ndir = \"{}\"\n\n",
        plugins.display()
    )
}

/// Runs `gateway check` on a config of `[server]` and `[plugins]` followed by
/// `body`, and returns (success, stdout, stderr), with the temporary config
/// path in stderr replaced by `CONFIG` so messages can be matched exactly.
/// The body starts on line 7.
pub fn check_config(body: &str) -> (bool, String, String) {
    build_plugins();
    let dir = tempdir::Dir::new();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[plugins]\ndir = \"{}\"\n\n{body}",
            plugin_dir().display()
        ),
    )
    .unwrap();
    let out = gateway_command()
        .args(["check", "--config"])
        .arg(&path)
        .env("GATEWAY_LOG", "error")
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "CONFIG");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        stderr.trim().to_string(),
    )
}

/// The gateway binary this build made, or the one `GATEWAY_BIN` names (to
/// measure another build with the same harness, as benches/containment.rs
/// does for a before-and-after).
pub fn gateway_bin() -> String {
    std::env::var("GATEWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gateway").to_string())
}

/// `gateway plugin componentize WAT -o OUT`: a core module made a
/// component with the gateway's own tool; the test fails with its words.
pub fn componentize(wat: &Path, out: &Path) {
    let made = gateway_command()
        .args(["plugin", "componentize"])
        .arg(wat)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run gateway plugin componentize");
    assert!(
        made.status.success(),
        "componentize {}: {}",
        wat.display(),
        String::from_utf8_lossy(&made.stderr)
    );
}

/// The gateway binary as a command, with the suite's own compile cache
/// (target/test-cache, shared by every gateway the tests start, so a
/// plugin is compiled once per build rather than once per gateway) in
/// place of the user's.
pub fn gateway_command() -> Command {
    let mut c = Command::new(gateway_bin());
    c.env("XDG_CACHE_HOME", repo().join("target/test-cache"));
    c
}

impl Gateway {
    /// Starts a gateway with `preamble()` followed by `body`, and waits
    /// until it answers.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
            format!("{}{body}", preamble(addr, admin))
        })
    }

    /// Starts a gateway in `dir` on the whole configuration `config` makes
    /// from the proxy and admin addresses, written to `dir/gateway.toml`.
    pub fn start_with(
        dir: tempdir::Dir,
        config: impl FnOnce(SocketAddr, SocketAddr) -> String,
    ) -> Gateway {
        Gateway::start_with_env(dir, &[], config)
    }

    /// Like `start_with`, with extra environment variables for the gateway.
    pub fn start_with_env(
        dir: tempdir::Dir,
        env: &[(&str, &str)],
        config: impl FnOnce(SocketAddr, SocketAddr) -> String,
    ) -> Gateway {
        Gateway::launch(dir, env, &["server", "admin"], |a| config(a[0], a[1]))
    }

    /// Like `start_with`, with the `[echo]` upstream's listener handed over
    /// too: `config` gets the proxy, admin and echo addresses.
    pub fn start_with_echo(
        dir: tempdir::Dir,
        config: impl FnOnce(SocketAddr, SocketAddr, SocketAddr) -> String,
    ) -> Gateway {
        Gateway::launch(dir, &[], &["server", "admin", "echo"], |a| {
            config(a[0], a[1], a[2])
        })
    }

    /// Like `start_with`, with more listeners handed over (named as
    /// `LISTEN_FDNAMES` names them: `echo`, `redirect`): `config` gets the
    /// proxy, admin and then these addresses.
    pub fn start_with_listeners(
        dir: tempdir::Dir,
        more: &[&str],
        config: impl FnOnce(&[SocketAddr]) -> String,
    ) -> Gateway {
        let names: Vec<&str> = ["server", "admin"].iter().chain(more).copied().collect();
        Gateway::launch(dir, &[], &names, config)
    }

    /// Binds a loopback listener for each of `names` (`server` and `admin`
    /// first, then `echo` when asked), writes the configuration `config`
    /// makes from their addresses and starts the gateway with them.
    ///
    /// The listeners are bound here and handed to the gateway as it starts
    /// (socket activation: fds 3, 4, … with `LISTEN_FDS` and
    /// `LISTEN_FDNAMES`), so no other process can take a port between
    /// choosing it and serving; the config's `listen` values only name
    /// the same addresses.
    fn launch(
        dir: tempdir::Dir,
        env: &[(&str, &str)],
        names: &[&str],
        config: impl FnOnce(&[SocketAddr]) -> String,
    ) -> Gateway {
        assert_eq!(names[..2], ["server", "admin"]);
        build_plugins();
        let listeners: Vec<StdListener> = names.iter().map(|_| loopback_listener()).collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let (addr, admin) = (addrs[0], addrs[1]);
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config(&addrs)).unwrap();
        let mut command = gateway_command();
        // The command owns the parent's copies and closes them once it is
        // dropped, after the spawn: the gateway holds the only ones.
        command
            .fd_mappings(
                listeners
                    .into_iter()
                    .zip(3..)
                    .map(|(l, child_fd)| FdMapping {
                        parent_fd: l.into(),
                        child_fd,
                    })
                    .collect(),
            )
            .expect("distinct descriptors");
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .env("LISTEN_FDS", names.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("GATEWAY_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("gateway.log")).unwrap(),
            ))
            .spawn()
            .expect("start the gateway");
        drop(command);
        let mut gw = Gateway {
            addr,
            admin,
            child,
            dir,
            extra: addrs[2..].to_vec(),
        };
        // Compiling a JavaScript or Python filter (12 to 18 MB of wasm) takes
        // seconds; this bound only turns a hang into a failure.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !started(admin) {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", gw.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    /// The configuration file the gateway runs from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// A request to the admin listener.
    pub fn admin(&self, method: &str, path: &str) -> RawResponse {
        raw(
            self.admin,
            format!("{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Sends raw bytes and reads the whole answer.
    pub fn raw(&self, request: &[u8]) -> RawResponse {
        raw(self.addr, request)
    }

    /// A GET with extra header lines, on a fresh connection.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> RawResponse {
        self.request("GET", path, headers, b"")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let mut r = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            r.push_str("host: test.local\r\n");
        }
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            r.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        r.push_str("connection: close\r\n\r\n");
        let mut bytes = r.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    pub fn metrics(&self) -> String {
        self.admin("GET", "/metrics").body_text()
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// File descriptors the gateway process has open (sockets included),
    /// from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("read the gateway's /proc/PID/fd")
            .count()
    }

    pub fn signal(&self, sig: i32) {
        let rc = send_signal(self.child.id(), sig);
        assert_eq!(rc, 0, "kill failed");
    }
}

fn send_signal(pid: u32, sig: i32) -> i32 {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_or(-1, |s| if s.success() { 0 } else { 1 })
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener on a free loopback port with the backlog the gateway gives
/// the sockets it binds itself (std's 128 would drop a burst of connects).
fn loopback_listener() -> StdListener {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(1024).unwrap();
    s.into()
}

/// Whether the gateway behind `admin` serves: its listeners are bound
/// before it starts (they are handed over), so a connection alone says
/// nothing; `/ready` says `starting` until the worker threads accept.
fn started(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let asked = s.write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    let mut answer = String::new();
    asked.is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 ")
        && !answer.ends_with("\r\n\r\nstarting\n")
}

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` and reads the response (the server closes after it,
/// because requests say `connection: close` or the server decides to).
pub fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write request");
    read_response(&mut BufReader::new(s))
}

pub fn read_response<R: Read>(r: &mut BufReader<R>) -> RawResponse {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status in {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).expect("header line");
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut body = Vec::new();
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body).expect("body");
    } else if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let _ = r.read_to_end(&mut body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The sum of the series of `name` whose labels include `labels`, in a
/// Prometheus text scrape; None when no series matches.
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = series(scrape, name)
        .into_iter()
        .filter(|(set, _)| {
            labels
                .iter()
                .all(|(k, v)| set.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Every series of `name` in a scrape: its labels and its value.
pub fn series(scrape: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let set: HashMap<String, String> = rest
                .trim_end_matches('}')
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    p.split_once("=\"")
                        .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((set, value.parse().ok()?))
        })
        .collect()
}

/// A real `redis-server` on a loopback port, without persistence, stopped
/// when dropped. `make setup` installs it.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempdir::Dir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: tempdir::Dir::new(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server again on the same port (after `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (install it with `make setup`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `redis-cli` against this server and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli (installed with redis-server)");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server, as a crash or a network cut would look.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `gateway scenario` at a time in the whole suite: each measures
/// latency and rates on the same two cores, and two at once would each see
/// the other's load.
static SCENARIO_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What `gateway scenario NAME --short` left: its exit, what it printed,
/// its `result.json` and the folder holding them.
pub struct ScenarioRun {
    pub passed: bool,
    pub output: String,
    pub result: serde_json::Value,
    pub out: tempdir::Dir,
}

/// Runs the scenario `name` in its short form with the shipped plugins.
pub fn run_scenario(name: &str) -> ScenarioRun {
    let _one = SCENARIO_ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    build_plugins();
    let out = tempdir::Dir::new();
    let run = gateway_command()
        .args(["scenario", name, "--short", "--out"])
        .arg(out.path())
        .arg("--plugins")
        .arg(plugin_dir())
        .output()
        .expect("run gateway scenario");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{output}");
    let result = std::fs::read_to_string(out.path().join("result.json"))
        .unwrap_or_else(|e| panic!("{name} wrote no result.json ({e}):\n{output}"));
    ScenarioRun {
        passed: run.status.success(),
        result: serde_json::from_str(&result).expect("result.json is JSON"),
        output,
        out,
    }
}

/// A number from a scenario's `result.json`.
pub fn num(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

/// The folder `make plugins` copies the shipped plugins to, as
/// config/gateway.toml loads them; it must hold them.
pub fn shipped_plugins() -> PathBuf {
    let dist = repo().join("plugins/dist");
    assert!(
        dist.join("headers.wasm").exists(),
        "{} holds no plugins; `make plugins` builds them",
        dist.display()
    );
    dist
}

/// config/gateway.toml as shipped, listening on `addr`, `admin` and `echo`
/// and loading its plugins from `plugins`.
pub fn default_config(
    addr: SocketAddr,
    admin: SocketAddr,
    echo: SocketAddr,
    plugins: &Path,
) -> String {
    let default = std::fs::read_to_string(repo().join("config/gateway.toml")).unwrap();
    [
        ("${LISTEN:-127.0.0.1:8080}", addr.to_string()),
        ("${ADMIN_LISTEN:-127.0.0.1:9901}", admin.to_string()),
        ("${ECHO_LISTEN:-127.0.0.1:9902}", echo.to_string()),
        (
            "dir = \"../plugins/dist\"",
            format!("dir = \"{}\"", plugins.display()),
        ),
    ]
    .into_iter()
    .fold(default, |config, (from, to)| {
        // A changed default would otherwise run on its own ports and plugins.
        assert!(
            config.contains(from),
            "config/gateway.toml no longer says {from}"
        );
        config.replace(from, &to)
    })
}

/// The default configuration as `make run` serves it, on free ports, with
/// its plugins from `plugins`.
pub fn start_default(plugins: &Path) -> Gateway {
    Gateway::start_with_echo(tempdir::Dir::new(), |addr, admin, echo| {
        default_config(addr, admin, echo, plugins)
    })
}

/// Runs `cmd` with `input` on its stdin (then closed): whether it
/// succeeded, and its stdout and stderr together.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    // A command that exits before reading all of it is not an error here.
    let _ = child.stdin.take().unwrap().write_all(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
