//! What the scenarios share: upstreams on loopback whose behaviour changes
//! while they run, a gateway child process started with a written
//! configuration, an in-process load driver, scrapes of the gateway's
//! metrics, and the story's table and `result.json`.
//!
//! Everything listens on 127.0.0.1 and every loop is bounded in time and
//! count, so a scenario cannot outlive its plan by more than a timeout.

use super::Options;
use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// The scenario's length: `--duration` when given, else `short` under
/// `--short` and `full` otherwise.
pub fn length(options: &Options, short: Duration, full: Duration) -> Duration {
    options
        .duration
        .unwrap_or(if options.short { short } else { full })
}

/// A free port on 127.0.0.1, for a listener someone else binds next.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------

/// How an upstream answers; every field may change while it runs.
struct Behaviour {
    /// Added before answering, while holding one of the `capacity` slots.
    latency_us: AtomicU64,
    /// Share of answers that fail, in millionths (deterministic: the n-th
    /// request fails when the running share crosses a whole request).
    failure_ppm: AtomicU64,
    failure_status: AtomicU64,
    /// Requests served at once; more wait in a queue (0: no limit). Models
    /// a dependency whose capacity (threads, database connections) runs out.
    capacity: AtomicUsize,
    in_service: AtomicUsize,
    freed: Notify,
    /// Requests received (including those still queued), and failed.
    received: AtomicU64,
    failed: AtomicU64,
    /// Most requests in service or queued at once.
    peak_waiting: AtomicUsize,
    waiting: AtomicUsize,
    /// Latency by path prefix, in place of `latency_us` for those paths
    /// (one instance serving a fast and a slow endpoint).
    path_latency: std::sync::Mutex<Vec<(String, Duration)>>,
}

/// An HTTP/1.1 upstream on a loopback port, answering `200 NAME` after its
/// latency, or its failure status for its failure share. It may be stopped
/// (every connection dropped, as a killed process) and restarted on the
/// same port. Stopped when dropped.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    server: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts a healthy, fast upstream on a free port.
    pub async fn start(name: &str) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(Behaviour {
            latency_us: AtomicU64::new(0),
            failure_ppm: AtomicU64::new(0),
            failure_status: AtomicU64::new(503),
            capacity: AtomicUsize::new(0),
            in_service: AtomicUsize::new(0),
            freed: Notify::new(),
            received: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            peak_waiting: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            path_latency: std::sync::Mutex::new(Vec::new()),
        });
        let server = Some(tokio::spawn(serve(
            listener,
            name.into(),
            behaviour.clone(),
        )));
        Ok(Upstream {
            name: name.into(),
            addr,
            behaviour,
            server,
        })
    }

    pub fn set_latency(&self, latency: Duration) {
        self.behaviour
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Requests whose path starts with `prefix` take `latency` instead of
    /// the upstream's own (the first matching prefix set wins).
    pub fn set_path_latency(&self, prefix: &str, latency: Duration) {
        let mut paths = self
            .behaviour
            .path_latency
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match paths.iter_mut().find(|(p, _)| p == prefix) {
            Some(entry) => entry.1 = latency,
            None => paths.push((prefix.into(), latency)),
        }
    }

    /// Fails `share` (0.0 to 1.0) of the requests with `status`.
    pub fn set_failures(&self, share: f64, status: u16) {
        let ppm = (share.clamp(0.0, 1.0) * 1e6).round() as u64;
        self.behaviour
            .failure_status
            .store(status.into(), Ordering::Relaxed);
        self.behaviour.failure_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Serves at most `capacity` requests at once, queueing the rest
    /// (0: no limit).
    pub fn set_capacity(&self, capacity: usize) {
        self.behaviour.capacity.store(capacity, Ordering::Relaxed);
        self.behaviour.freed.notify_waiters();
    }

    /// Requests received since start (stops and restarts included).
    pub fn received(&self) -> u64 {
        self.behaviour.received.load(Ordering::Relaxed)
    }

    /// Requests answered with the failure status.
    pub fn failed(&self) -> u64 {
        self.behaviour.failed.load(Ordering::Relaxed)
    }

    /// Most requests in service or queued at once.
    pub fn peak_waiting(&self) -> usize {
        self.behaviour.peak_waiting.load(Ordering::Relaxed)
    }

    /// Closes the listener and drops every open connection, as a killed
    /// process would.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    /// Listens again on the same port, with the same behaviour.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        // The port was ours a moment ago; a connection in TIME_WAIT may hold
        // it briefly (the listener sets SO_REUSEADDR, so this is rare).
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("rebinding {}", self.addr)),
            }
        };
        self.server = Some(tokio::spawn(serve(
            listener,
            self.name.clone(),
            self.behaviour.clone(),
        )));
        Ok(())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Accepts connections until aborted; the connections live in a `JoinSet`
/// owned by this task, so aborting it drops them all.
async fn serve(listener: TcpListener, name: String, behaviour: Arc<Behaviour>) {
    let mut connections = JoinSet::new();
    let body = Bytes::from(format!("{name}\n"));
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (behaviour, body) = (behaviour.clone(), body.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (behaviour, body) = (behaviour.clone(), body.clone());
                async move { Ok::<_, hyper::Error>(answer(req, &behaviour, body).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, b: &Behaviour, body: Bytes) -> Response<Full<Bytes>> {
    let n = b.received.fetch_add(1, Ordering::Relaxed);
    let waiting = b.waiting.fetch_add(1, Ordering::Relaxed) + 1;
    b.peak_waiting.fetch_max(waiting, Ordering::Relaxed);
    // Released on every path, also when the gateway gives up and the
    // connection (and this future) is dropped.
    let _slot = Slot::take(b).await;
    let latency = b
        .path_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(prefix, _)| req.uri().path().starts_with(prefix.as_str()))
        .map(|(_, d)| *d)
        .unwrap_or(Duration::from_micros(b.latency_us.load(Ordering::Relaxed)));
    let _ = req.into_body().collect().await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let ppm = b.failure_ppm.load(Ordering::Relaxed);
    let fails = (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000;
    let status = if fails {
        b.failed.fetch_add(1, Ordering::Relaxed);
        StatusCode::from_u16(b.failure_status.load(Ordering::Relaxed) as u16)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    } else {
        StatusCode::OK
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

/// One of an upstream's service slots (and its place in the waiting count).
struct Slot<'a> {
    b: &'a Behaviour,
    serving: bool,
}

impl<'a> Slot<'a> {
    async fn take(b: &'a Behaviour) -> Slot<'a> {
        let mut slot = Slot { b, serving: false };
        loop {
            let freed = b.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let capacity = b.capacity.load(Ordering::Relaxed);
            let now = b.in_service.load(Ordering::Relaxed);
            if capacity == 0 || now < capacity {
                if b.in_service
                    .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    slot.serving = true;
                    return slot;
                }
                continue;
            }
            freed.await;
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.b.waiting.fetch_sub(1, Ordering::Relaxed);
        if self.serving {
            self.b.in_service.fetch_sub(1, Ordering::AcqRel);
            self.b.freed.notify_waiters();
        }
    }
}

// ---------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------

/// What a scenario's configuration holds besides the listeners.
pub struct GatewayConfig<'a> {
    /// `[plugins] dir`: `options.plugins`, or a folder of the scenario's own.
    pub plugins: &'a Path,
    /// Extra lines of the `[server]` table (`max_connections = 64`).
    pub server: &'a str,
    /// Everything after: upstreams, filters, routes.
    pub body: &'a str,
}

/// A `gateway run` child process on loopback ports, with its
/// configuration in `<out>/gateway.toml` and its stderr in
/// `<out>/gateway.log`. Killed when dropped.
pub struct Gateway {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub out: PathBuf,
    child: Child,
    client: HttpClient,
}

impl Gateway {
    /// Writes the configuration, starts the gateway and waits (up to 60 s,
    /// plugins may compile) until `/ready` answers 200.
    /// A gateway on `body` with the shipped plugins and `[server]`'s
    /// defaults.
    pub async fn start_plain(options: &Options, body: &str) -> anyhow::Result<Gateway> {
        let config = GatewayConfig {
            plugins: &options.plugins,
            server: "",
            body,
        };
        Gateway::start(options, &config).await
    }

    pub async fn start(options: &Options, config: &GatewayConfig<'_>) -> anyhow::Result<Gateway> {
        // A port found free can be taken by another process before the
        // gateway binds it; then it exits at once, and new ports are tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Gateway::start_once(options, config).await {
                Err(e) if attempt < 3 && e.to_string().contains("in use") => {
                    tracing::debug!("retrying on other ports: {e}");
                }
                other => return other,
            }
        }
    }

    async fn start_once(options: &Options, config: &GatewayConfig<'_>) -> anyhow::Result<Gateway> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        std::fs::create_dir_all(&options.out)?;
        let out = std::path::absolute(&options.out)?;
        let path = out.join("gateway.toml");
        std::fs::write(&path, config_text(listen, admin, config)?)?;
        let log = std::fs::File::create(out.join("gateway.log"))?;
        let child = std::process::Command::new(&options.gateway)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", options.gateway.display()))?;
        let mut gateway = Gateway {
            listen,
            admin,
            config: path,
            out,
            child,
            client: http_client(None),
        };
        gateway.wait_ready(Duration::from_secs(60)).await?;
        Ok(gateway)
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                let log = self.out.join("gateway.log");
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let last = said
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                bail!(
                    "the gateway exited ({status}) before it was ready: {last}; see {}",
                    log.display()
                );
            }
            if let Ok((200, _)) = self.admin_get("/ready").await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the gateway was not ready within {limit:?}; see {}",
            self.out.join("gateway.log").display()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Rewrites `gateway.toml` with the same listeners (the gateway's file
    /// watcher may reload it on its own; `reload` asks at once).
    pub fn rewrite(&self, config: &GatewayConfig<'_>) -> anyhow::Result<()> {
        // Written beside and renamed, so the watcher never reads half a file.
        let text = config_text(self.listen, self.admin, config)?;
        let tmp = self.config.with_extension("toml.new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// `POST /admin/reload`: its status and body (200 when the new
    /// configuration serves).
    pub async fn reload(&self) -> anyhow::Result<(u16, String)> {
        self.admin_request("POST", "/admin/reload").await
    }

    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.admin_request("GET", path).await
    }

    async fn admin_request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.admin_url()))
            .body(Full::new(Bytes::new()))?;
        let r = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .context("the admin listener did not answer within 30 s")??;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Scrapes `/metrics`, keeping the text in `<out>/metrics.txt`.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, text) = self.admin_get("/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        let scrape = Scrape::parse(&text);
        std::fs::write(self.out.join("metrics.txt"), &scrape.text)?;
        Ok(scrape)
    }

    /// `GET path` on the proxy listener, the whole answer read.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response<Bytes>> {
        let req = Request::builder()
            .uri(format!("{}{path}", self.url()))
            .body(Full::new(Bytes::new()))?;
        let r = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .context("the proxy did not answer within 30 s")??;
        let (head, body) = r.into_parts();
        Ok(Response::from_parts(head, body.collect().await?.to_bytes()))
    }

    /// The gateway's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.out.join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(
    listen: SocketAddr,
    admin: SocketAddr,
    config: &GatewayConfig<'_>,
) -> anyhow::Result<String> {
    let plugins = std::path::absolute(config.plugins)?;
    let plugins = toml::Value::String(plugins.to_string_lossy().into_owned());
    Ok(format!(
        "[server]\nlisten = \"{listen}\"\n{}\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [plugins]\ndir = {plugins}\n\n{}\n",
        config.server, config.body
    ))
}

// ---------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------

/// One scrape of the Prometheus text format.
pub struct Scrape {
    pub text: String,
    series: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_sample)
            .collect();
        Scrape {
            text: text.into(),
            series,
        }
    }

    /// The sum of the series of `name` whose labels include `labels`;
    /// None when none matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .series(name)
            .filter(|(set, _)| {
                labels
                    .iter()
                    .all(|(k, v)| set.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Every series of `name`: its labels and value.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a HashMap<String, String>, f64)> + 'a {
        self.series
            .iter()
            .filter(move |(n, _, _)| n == name)
            .map(|(_, l, v)| (l, *v))
    }
}

/// `name{a="x",b="y"} 1.5 [timestamp]`, label values unescaped.
fn parse_sample(line: &str) -> Option<(String, HashMap<String, String>, f64)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = HashMap::new();
    let rest = if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                break after;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            labels.insert(key.trim().to_string(), value);
            inner = &after[end + 1..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.to_string(), labels, value))
}

// ---------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(source: Option<IpAddr>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_local_address(source);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Where requests of one kind go.
#[derive(Clone, Debug)]
pub struct Target {
    /// A name for the results (`catalog`, `client-a`).
    pub route: String,
    /// Path and query on the proxy listener.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Share of the load, relative to the other targets' weights.
    pub weight: u32,
    /// The client's own address (any 127.x.y.z works on Linux loopback),
    /// so per-client limits see distinct clients.
    pub source: Option<IpAddr>,
}

impl Target {
    pub fn new(route: &str, path: &str) -> Target {
        Target {
            route: route.into(),
            path: path.into(),
            headers: Vec::new(),
            weight: 1,
            source: None,
        }
    }

    pub fn weight(mut self, weight: u32) -> Target {
        self.weight = weight;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Target {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn source(mut self, ip: IpAddr) -> Target {
        self.source = Some(ip);
        self
    }
}

/// How clients behave: their timeout and whether they retry.
#[derive(Clone, Debug)]
pub struct Clients {
    /// A request not answered by then counts as a timeout (status 0).
    pub timeout: Duration,
    /// Tries in all for one request: retried at once on 5xx, timeouts and
    /// transport errors (1: never retried).
    pub tries: u32,
}

impl Default for Clients {
    fn default() -> Clients {
        Clients {
            timeout: Duration::from_secs(5),
            tries: 1,
        }
    }
}

/// One request as the client saw it (its last try when retried).
#[derive(Clone, Debug)]
pub struct Sample {
    pub route: String,
    /// 0 when no answer came (timeout or transport error).
    pub status: u16,
    /// From the first try's start to the last try's end.
    pub latency: Duration,
    /// The last try's own time.
    pub last_try: Duration,
    /// When it started, from the start of the run.
    pub at: Duration,
    pub tries: u32,
    /// `x-gateway-error` of the answer, when the gateway answered itself.
    pub gateway_error: Option<String>,
    /// The transport error or "timeout", when there was no answer.
    pub error: Option<String>,
}

/// What a load run did.
pub struct Run {
    pub samples: Vec<Sample>,
    pub elapsed: Duration,
    /// Requests the open loop skipped because `max_in_flight` were pending.
    pub skipped: u64,
}

/// Open loop: `rate` requests a second over all `targets` (by weight), for
/// `duration`, whatever the answers; at most `max_in_flight` pending
/// (later ticks are skipped and counted, so a stalled gateway cannot pile
/// up unbounded tasks).
pub async fn open_loop(
    base: SocketAddr,
    targets: &[Target],
    rate: f64,
    duration: Duration,
    clients: &Clients,
    max_in_flight: usize,
) -> Run {
    let pool = Pool::new(base, targets);
    let order = weighted_order(targets);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let pending = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut samples = Vec::new();
    let mut skipped = 0;
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        tokio::time::sleep_until(due.into()).await;
        while let Some(done) = tasks.try_join_next() {
            samples.extend(done.ok());
        }
        if pending.load(Ordering::Relaxed) >= max_in_flight {
            skipped += 1;
            continue;
        }
        let t = order[k as usize % order.len()];
        let (pool, clients, pending) = (pool.clone(), clients.clone(), pending.clone());
        pending.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let s = pool.send(t, &clients, start).await;
            pending.fetch_sub(1, Ordering::Relaxed);
            s
        });
    }
    samples.extend(collect(tasks).await);
    samples.sort_by_key(|s| s.at);
    Run {
        samples,
        elapsed: start.elapsed(),
        skipped,
    }
}

/// Closed loop: `concurrency` clients, each sending its next request when
/// the last one is answered (optionally pausing `think` between), cycling
/// over `targets` by weight, for `duration`.
pub async fn closed_loop(
    base: SocketAddr,
    targets: &[Target],
    concurrency: usize,
    think: Duration,
    duration: Duration,
    clients: &Clients,
) -> Run {
    let pool = Pool::new(base, targets);
    let order = Arc::new(weighted_order(targets));
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for c in 0..concurrency {
        let (pool, clients, order) = (pool.clone(), clients.clone(), order.clone());
        tasks.spawn(async move {
            let mut samples = Vec::new();
            let mut k = c;
            while Instant::now() < end {
                samples.push(pool.send(order[k % order.len()], &clients, start).await);
                k += 1;
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        samples.extend(done.unwrap_or_default());
    }
    samples.sort_by_key(|s| s.at);
    Run {
        samples,
        elapsed: start.elapsed(),
        skipped: 0,
    }
}

async fn collect(mut tasks: JoinSet<Sample>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(s) = done {
            samples.push(s);
        }
    }
    samples.sort_by_key(|s| s.at);
    samples
}

/// Target indexes repeated by weight and interleaved, so a run of any
/// length sends each target its share.
fn weighted_order(targets: &[Target]) -> Vec<usize> {
    let total: u32 = targets.iter().map(|t| t.weight).sum();
    let mut order = Vec::new();
    let mut credit = vec![0i64; targets.len()];
    for _ in 0..total.max(1) {
        for (c, t) in credit.iter_mut().zip(targets) {
            *c += i64::from(t.weight);
        }
        let (best, _) = credit
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
            .expect("at least one target");
        credit[best] -= i64::from(total);
        order.push(best);
    }
    order
}

/// The targets with a client each (one per source address).
#[derive(Clone)]
struct Pool {
    base: SocketAddr,
    targets: Arc<Vec<(Target, HttpClient)>>,
}

impl Pool {
    fn new(base: SocketAddr, targets: &[Target]) -> Pool {
        let mut by_source: HashMap<Option<IpAddr>, HttpClient> = HashMap::new();
        let targets = targets
            .iter()
            .map(|t| {
                let client = by_source
                    .entry(t.source)
                    .or_insert_with(|| http_client(t.source))
                    .clone();
                (t.clone(), client)
            })
            .collect();
        Pool {
            base,
            targets: Arc::new(targets),
        }
    }

    async fn send(&self, index: usize, clients: &Clients, start: Instant) -> Sample {
        let (target, client) = &self.targets[index];
        let began = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let t = Instant::now();
            let (status, gateway_error, error) = self.try_once(target, client, clients).await;
            let retry = status == 0 || status >= 500;
            if !retry || tries >= clients.tries.max(1) {
                return Sample {
                    route: target.route.clone(),
                    status,
                    latency: began.elapsed(),
                    last_try: t.elapsed(),
                    at: began - start,
                    tries,
                    gateway_error,
                    error,
                };
            }
        }
    }

    async fn try_once(
        &self,
        target: &Target,
        client: &HttpClient,
        clients: &Clients,
    ) -> (u16, Option<String>, Option<String>) {
        let mut req = Request::builder().uri(format!("http://{}{}", self.base, target.path));
        for (k, v) in &target.headers {
            req = req.header(k, v);
        }
        let req = match req.body(Full::new(Bytes::new())) {
            Ok(r) => r,
            Err(e) => return (0, None, Some(e.to_string())),
        };
        let exchange = async {
            let r = client.request(req).await?;
            let status = r.status().as_u16();
            let gateway_error = r
                .headers()
                .get("x-gateway-error")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            r.into_body().collect().await?;
            Ok::<_, anyhow::Error>((status, gateway_error))
        };
        match tokio::time::timeout(clients.timeout, exchange).await {
            Ok(Ok((status, gateway_error))) => (status, gateway_error, None),
            Ok(Err(e)) => (0, None, Some(format!("{e:#}"))),
            Err(_) => (0, None, Some("timeout".into())),
        }
    }
}

/// Counts and latency percentiles of some samples.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub count: u64,
    /// Tries sent, client retries included.
    pub sent: u64,
    pub rps: f64,
    /// Answers by class: index 1 is 1xx, ..., 5 is 5xx.
    pub classes: [u64; 6],
    /// By exact status.
    pub statuses: Vec<(u16, u64)>,
    /// No answer (timeout or transport error).
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Over `samples` that `keep` accepts, spread over `elapsed`.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>, elapsed: Duration) -> Summary {
        let mut s = Summary::default();
        let mut ms = Vec::new();
        let mut statuses: HashMap<u16, u64> = HashMap::new();
        for x in samples {
            s.count += 1;
            s.sent += u64::from(x.tries);
            if x.status == 0 {
                s.errors += 1;
            } else {
                s.classes[(x.status / 100).min(5) as usize] += 1;
                *statuses.entry(x.status).or_default() += 1;
            }
            ms.push(x.latency.as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        s.p50_ms = percentile(&ms, 0.50);
        s.p90_ms = percentile(&ms, 0.90);
        s.p99_ms = percentile(&ms, 0.99);
        s.max_ms = ms.last().copied().unwrap_or(0.0);
        s.rps = s.count as f64 / elapsed.as_secs_f64().max(1e-9);
        s.statuses = statuses.into_iter().collect();
        s.statuses.sort();
        s
    }

    /// The samples of one route in a run.
    pub fn route(run: &Run, route: &str) -> Summary {
        Summary::of(run.samples.iter().filter(|s| s.route == route), run.elapsed)
    }

    pub fn status(&self, status: u16) -> u64 {
        self.statuses
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// Answers that were not 2xx or 3xx, and no-answers.
    pub fn failures(&self) -> u64 {
        self.classes[1] + self.classes[4] + self.classes[5] + self.errors
    }

    pub fn to_json(&self) -> serde_json::Value {
        let statuses: serde_json::Map<String, serde_json::Value> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "count": self.count,
            "sent": self.sent,
            "rps": round(self.rps, 1),
            "2xx": self.classes[2],
            "3xx": self.classes[3],
            "4xx": self.classes[4],
            "5xx": self.classes[5],
            "errors": self.errors,
            "statuses": statuses,
            "p50_ms": round(self.p50_ms, 2),
            "p90_ms": round(self.p90_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "max_ms": round(self.max_ms, 2),
        })
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `part` as a share of `whole`; 0 of nothing.
pub fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

pub fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

// ---------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------

/// A plain-text table with aligned columns: text left, numbers right.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Table {
        self.rows.push(cells);
        self
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String], out: &mut String| {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let numeric = i > 0 && looks_numeric(cell);
                if i > 0 {
                    text.push_str("  ");
                }
                if numeric {
                    let _ = write!(text, "{cell:>width$}");
                } else {
                    let _ = write!(text, "{cell:<width$}");
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        let mut out = String::new();
        line(&self.header, &mut out);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, &mut out);
        for row in &self.rows {
            line(row, &mut out);
        }
        out
    }
}

fn looks_numeric(cell: &str) -> bool {
    let c = cell.trim_start_matches(['x', '+', '-']);
    c.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Prints the story (a title, sentences, the table), and writes
/// `<out>/result.json` with `result` plus the scenario's name and whether
/// it passed. `Err` naming what went wrong when `problems` is not empty.
pub fn tell(
    options: &Options,
    name: &str,
    story: &[String],
    table: &Table,
    mut result: serde_json::Value,
    problems: &[String],
) -> anyhow::Result<()> {
    println!("== {name} ==\n");
    for sentence in story {
        println!("{sentence}");
    }
    println!("\n{}", table.render());
    if problems.is_empty() {
        println!("PASS: the story went as it should.");
    } else {
        for p in problems {
            println!("FAIL: {p}");
        }
    }
    if let Some(map) = result.as_object_mut() {
        map.insert("scenario".into(), name.into());
        map.insert("passed".into(), problems.is_empty().into());
        map.insert("problems".into(), problems.into());
    }
    let path = options.out.join("result.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("results: {}", path.display());
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{name}: {}", problems.join("; "))
    }
}

/// Under `--hold`: prints where the gateway listens and waits for Ctrl-C
/// (the caller keeps the gateway and upstreams alive until this returns).
pub async fn hold(options: &Options, gateway: &Gateway) -> anyhow::Result<()> {
    if !options.hold {
        return Ok(());
    }
    println!(
        "\nholding: proxy {}  admin {}/metrics  ({}/admin/plugins); Ctrl-C stops",
        gateway.url(),
        gateway.admin_url(),
        gateway.admin_url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
