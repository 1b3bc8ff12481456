//! Listeners: accept connections within the connection limits, tell
//! HTTP/1.1 from h2c by the HTTP/2 preface, and keep every connection to its
//! deadlines (request head, idle, HTTP/2 pings); on shutdown stop accepting
//! and let in-flight requests finish.
//!
//! The protocol is told here rather than by hyper-util's `auto::Builder`,
//! whose first read has no deadline: a client that sent nothing, or part of
//! the preface, held its connection forever. hyper's own HTTP/1.1
//! `header_read_timeout` is left off too, because its timer starts whenever
//! hyper begins waiting for a head, so it would also end every keep-alive
//! wait after `header_read_timeout` and leave `idle_timeout` no say. The
//! connection task keeps both deadlines itself (`Activity`).

use crate::config::ServerConfig;
use crate::serving::{ConnectionHold, Shared};
use crate::slots::Slots;
use crate::telemetry::ConnectionRefusal;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// hyper refuses read buffers below this, so smaller header limits are
/// raised to it.
const MIN_HEADER_BUFFER: usize = 8192;

/// What an h2c client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest a refused connection is kept to deliver its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Refused connections lingering at once; past this a refusal is written
/// and the socket closed at once, so a flood of refusals holds few sockets.
const MAX_LINGERING_REFUSALS: usize = 64;
/// The most a refused client may send while its answer lingers.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// How connections accepted now are served: hyper's builders, and the
/// deadlines the connection task keeps itself.
pub struct ConnSettings {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl ConnSettings {
    pub fn new(cfg: &ServerConfig) -> ConnSettings {
        let mut http1 = http1::Builder::new();
        http1
            // Timed by the connection task instead: see the module docs.
            .header_read_timeout(None)
            // Over-long heads and too many headers are answered 431 by hyper.
            .max_buf_size(cfg.max_header_bytes.max(MIN_HEADER_BUFFER))
            .max_headers(cfg.max_headers);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(cfg.max_header_bytes.min(u32::MAX as usize) as u32)
            // A peer that stops answering pings is gone; its streams are
            // dropped rather than held until the idle timeout.
            .keep_alive_interval(cfg.http2_keepalive_interval.0)
            .keep_alive_timeout(cfg.http2_keepalive_timeout.0)
            // WebSockets over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        ConnSettings {
            http1,
            http2,
            header_read_timeout: cfg.header_read_timeout.0,
            idle_timeout: cfg.idle_timeout.0,
        }
    }
}

/// The connection settings of the configuration now serving, rebuilt only
/// when a reload changed `[server]`; connections keep the settings they were
/// accepted with. Only the settings are held, not the configuration, which
/// must be free to drop after its last request.
pub struct CurrentSettings {
    built_for: ServerConfig,
    settings: Arc<ConnSettings>,
}

impl CurrentSettings {
    pub fn new(cfg: &ServerConfig) -> CurrentSettings {
        CurrentSettings {
            built_for: cfg.clone(),
            settings: Arc::new(ConnSettings::new(cfg)),
        }
    }

    /// The settings for `cfg`, the `[server]` table now serving.
    pub fn get(&mut self, cfg: &ServerConfig) -> &Arc<ConnSettings> {
        if *cfg != self.built_for {
            *self = CurrentSettings::new(cfg);
        }
        &self.settings
    }

    pub(crate) fn limits(&self) -> (usize, Option<usize>) {
        let cfg = &self.built_for;
        (cfg.max_connections, cfg.max_connections_per_client)
    }
}

/// Serves the proxy on `listener` with `workers` threads until `shutdown`
/// turns true, then waits up to `grace` for open requests to finish.
///
/// Each worker is a thread with a single-threaded runtime of its own,
/// accepting from its own copy of the listening socket, as nginx's worker
/// processes do: a connection, its requests, their filter calls and their
/// HTTP/1 upstream connections stay on the thread that accepted it, with no
/// work stealing (h2c upstreams share one multiplexing client). One shared
/// socket rather than
/// `SO_REUSEPORT` listeners, so a second process cannot bind the same port
/// and take a share of the connections, and an idle worker is the one that
/// accepts. The connection limits are counted over all workers.
pub async fn serve(
    listener: TcpListener,
    workers: usize,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> io::Result<()> {
    let listener = listener.into_std()?;
    // Each accepted connection inherits it.
    crate::listeners::no_delay(&listener)?;
    let slots = Arc::new(Slots::default());
    let lingering = Arc::new(AtomicUsize::new(0));
    // Each worker holds a sender; the channel closes when the last ends.
    let (running, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    for i in 0..workers.max(1) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = listener.try_clone()?;
        let worker = Worker {
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            slots: slots.clone(),
            lingering: lingering.clone(),
            grace,
        };
        let running = running.clone();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{i}"))
            .spawn(move || {
                let _running = running;
                crate::per_worker::set_worker_index(i);
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker.run(listener).await,
                        Err(e) => tracing::error!("worker {i} cannot use the listener: {e}"),
                    }
                });
            })?;
    }
    drop(running);
    drop(listener);
    shared
        .serving
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown_asked(&mut shutdown, &mut all_ended).await?;
    tracing::info!("stopped accepting; waiting up to {grace:?} for in-flight requests");
    all_ended.recv().await;
    if slots.open() == 0 {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(())
}

/// Waits until shutdown is asked for. Workers end on their own only when
/// each one has panicked: that is an error, so the gateway stops rather
/// than serve nothing. They also end on shutdown, and may be woken for it
/// before this task is (a watch channel wakes its receivers in several
/// groups), so the flag itself tells the two apart.
async fn shutdown_asked(
    shutdown: &mut watch::Receiver<bool>,
    all_ended: &mut tokio::sync::mpsc::Receiver<()>,
) -> io::Result<()> {
    let stopping = shutdown.clone();
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => Ok(()),
        _ = all_ended.recv() => if *stopping.borrow() {
            Ok(())
        } else {
            Err(io::Error::other("every worker thread stopped"))
        },
    }
}

/// One thread serving connections; see [`serve`].
struct Worker {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    slots: Arc<Slots>,
    lingering: Arc<AtomicUsize>,
    grace: Duration,
}

impl Worker {
    /// Accepts until shutdown, then keeps the runtime, and so this
    /// worker's connections, going until every connection of every worker
    /// has closed or `grace` is over.
    async fn run(mut self, listener: TcpListener) {
        let mut current = CurrentSettings::new(&self.shared.current().server);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = crate::listeners::accept(&listener) => accepted,
                _ = self.shutdown.wait_for(|stop| *stop) => break,
            };
            let settings = current.get(&self.shared.current().server).clone();
            let (max, max_per_client) = current.limits();
            let slot = match self.slots.take(peer.ip(), max, max_per_client) {
                Ok(slot) => slot,
                Err(reason) => {
                    self.shared.metrics.count_connection_refused(reason);
                    tracing::debug!(%peer, "connection refused: {}", reason.as_str());
                    tokio::spawn(refuse(stream, reason, self.lingering.clone()));
                    continue;
                }
            };
            let open = self.shared.metrics.connection_opened();
            let shared = self.shared.clone();
            let tls = shared.current().tls.clone();
            let mut stopped = self.shutdown.clone();
            tokio::spawn(async move {
                // Held by the connection task, and by a tunnel the
                // connection is upgraded to: counted until both are done.
                let hold = ConnectionHold(Arc::new((slot, open)));
                // A dropped sender means the server is going away: stop too.
                let stopping = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                let Some(tls) = tls else {
                    let handler = move |mut req: Request<Incoming>| {
                        offer_hold(&mut req, &hold);
                        let close = closes_when_draining(&shared, &req);
                        closing(close, crate::proxy::handle(shared.current(), req, peer))
                    };
                    serve_connection(stream, peer, &settings, handler, stopping).await;
                    return;
                };
                tokio::pin!(stopping);
                let deadline = Instant::now() + settings.header_read_timeout;
                let handshake = tokio::select! {
                    done = tokio::time::timeout_at(deadline, tls.handshake(stream)) => done,
                    // Nothing is in flight before the handshake is done.
                    _ = &mut stopping => return,
                };
                drop(tls);
                // Past header_read_timeout, the handshake has failed too.
                let handshake = handshake.unwrap_or(Err(crate::tls::HandshakeFailure::Timeout));
                let (stream, session) = match handshake {
                    Ok(done) => done,
                    Err(failure) => {
                        shared.metrics.count_tls_handshake_failure(failure.as_str());
                        tracing::debug!(%peer, "TLS handshake failed: {}", failure.as_str());
                        return;
                    }
                };
                shared
                    .metrics
                    .count_tls_handshake(session.version, session.alpn);
                let session = Arc::new(session);
                let handler = move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(session.clone());
                    offer_hold(&mut req, &hold);
                    let close = closes_when_draining(&shared, &req);
                    closing(close, crate::proxy::handle(shared.current(), req, peer))
                };
                serve_connection(stream, peer, &settings, handler, stopping).await;
            });
        }
        drop(listener);
        tokio::select! {
            _ = self.slots.all_released() => {}
            _ = tokio::time::sleep(self.grace) => {}
        }
    }
}

/// While draining, an HTTP/1 answer says `Connection: close`, so a client
/// that keeps connections (a load balancer's pool, say) opens its next one
/// elsewhere rather than keep using a gateway about to stop. HTTP/2
/// connections are told with GOAWAY when the listener closes. Costs one
/// relaxed load per request otherwise.
fn closes_when_draining(shared: &Shared, req: &Request<Incoming>) -> bool {
    req.version() < http::Version::HTTP_2 && shared.draining.load(Ordering::Relaxed)
}

/// `answer`, saying `Connection: close` when `close`.
fn closing<F, B>(
    close: bool,
    answer: F,
) -> futures_util::future::Either<F, impl Future<Output = Response<B>> + use<F, B>>
where
    F: Future<Output = Response<B>>,
{
    use futures_util::future::Either;
    if !close {
        return Either::Left(answer);
    }
    Either::Right(async move {
        let mut resp = answer.await;
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        resp
    })
}

/// Lends a request that asks to upgrade the hold on its connection, for
/// the tunnel to keep. Only those: an extension costs an allocation.
fn offer_hold(req: &mut Request<Incoming>, hold: &ConnectionHold) {
    if req.headers().contains_key(http::header::UPGRADE) || req.method() == http::Method::CONNECT {
        req.extensions_mut().insert(hold.clone());
    }
}

/// Serves one client connection with `handler` until it closes, a deadline
/// passes, or (after `shutdown` completes) its requests are done.
pub async fn serve_connection<S, H, Fut, B>(
    mut stream: S,
    peer: SocketAddr,
    settings: &ConnSettings,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let accepted = Instant::now();
    tokio::pin!(shutdown);
    let sniffed = tokio::select! {
        sniffed = tokio::time::timeout_at(accepted + settings.header_read_timeout, sniff(&mut stream)) => sniffed,
        // Nothing is in flight before the protocol is known.
        _ = &mut shutdown => return,
    };
    let (protocol, replay) = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "connection ended before a request: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no request within header_read_timeout; closing");
            return;
        }
    };
    let activity = Arc::new(Activity::new(protocol, accepted));
    let io = TokioIo::new(ClientIo {
        replay,
        inner: stream,
        activity: activity.clone(),
    });
    let exchanges = activity.clone();
    let svc = service_fn(move |req| {
        let exchange = exchanges.exchange_started();
        let answer = handler(req);
        async move {
            let response = answer.await;
            Ok::<_, std::convert::Infallible>(response.map(|body| ExchangeBody {
                body,
                _exchange: exchange,
            }))
        }
    });
    let ended = match protocol {
        Protocol::Http1 => {
            // With upgrades: a `101` hands the connection to a tunnel.
            let conn = settings.http1.serve_connection(io, svc).with_upgrades();
            keep_to_deadlines(
                conn,
                |c| c.graceful_shutdown(),
                &activity,
                settings,
                shutdown,
            )
            .await
        }
        Protocol::H2c => {
            let conn = settings.http2.serve_connection(io, svc);
            keep_to_deadlines(
                conn,
                |c| c.graceful_shutdown(),
                &activity,
                settings,
                shutdown,
            )
            .await
        }
    };
    if let Err(why) = ended {
        tracing::debug!(%peer, "connection ended: {why}");
    }
}

/// Drives `conn` until it ends, closing it when the deadline of its phase
/// passes: dropped when a request head is late, shut down gracefully when
/// idle or when `shutdown` completes.
async fn keep_to_deadlines<C>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Activity,
    settings: &ConnSettings,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<(), String>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    let mut shutdown = shutdown;
    // Set once a graceful shutdown was asked for; past it the connection is
    // dropped (None: when the server's grace runs out).
    let mut closing: Option<Option<Instant>> = None;
    // Deadlines are checked lazily: exchanges and reads only record the
    // phase, and this timer, when it fires, reads it and either acts or is
    // set again. Waking the task at every phase change would cost each
    // request several polls of the connection and timer updates. A new
    // deadline is never earlier than `header_read_timeout` after it began,
    // so a check at least that often misses none.
    let next_check = |closing: Option<Option<Instant>>, now: Instant| {
        let deadline = match closing {
            Some(give_up) => give_up.map(|at| (at, Expiry::Closing)),
            None => activity.deadline(settings),
        };
        let recheck = now + settings.header_read_timeout;
        (
            deadline,
            deadline.map_or(recheck, |(at, _)| at.min(recheck)),
        )
    };
    let sleep = tokio::time::sleep_until(next_check(closing, Instant::now()).1);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            ended = conn.as_mut() => return ended.map_err(|e| e.to_string()),
            () = &mut sleep => {
                let now = Instant::now();
                let (deadline, check) = next_check(closing, now);
                match deadline {
                    Some((at, why)) if at <= now => match why {
                        Expiry::Head => return Err("no complete request head within header_read_timeout".into()),
                        Expiry::Idle => {
                            graceful(conn.as_mut());
                            // An HTTP/2 goodbye takes a ping's round trip; a
                            // peer that never finishes it gets one more idle
                            // period.
                            closing = Some(Some(now + settings.idle_timeout));
                            sleep.as_mut().reset(next_check(closing, now).1);
                        }
                        Expiry::Closing => return Err("did not close after a graceful shutdown".into()),
                    },
                    _ => sleep.as_mut().reset(check),
                }
            }
            _ = shutdown.as_mut(), if closing.is_none() => {
                if activity.awaiting_head() {
                    // No request has begun that could be finished.
                    return Ok(());
                }
                graceful(conn.as_mut());
                closing = Some(None);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Protocol {
    Http1,
    H2c,
}

/// Reads until the bytes tell the protocol: the whole h2c preface, or a
/// byte that departs from it (HTTP/1.1). Returns what was read, for hyper
/// to read again.
async fn sniff<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<(Protocol, Bytes)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            return Ok((Protocol::Http1, Bytes::copy_from_slice(&buf[..filled])));
        }
    }
    Ok((Protocol::H2c, Bytes::copy_from_slice(&buf)))
}

/// Where a connection is in its request cycle, which decides the deadline
/// it is kept to. Exchanges (`OpenExchange`) and reads (`ClientIo`) move it.
struct Activity {
    phase: Mutex<Phase>,
    /// Whether bytes arriving now start a request head (HTTP/1.1 and idle),
    /// checked on every read without the lock.
    reads_start_head: AtomicBool,
    protocol: Protocol,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request head: since the connection was accepted, or
    /// since its first byte arrived after an idle wait.
    Head(Instant),
    /// Exchanges open: a request head received, its response not yet sent.
    Busy(usize),
    /// No exchange open since then.
    Idle(Instant),
}

#[derive(Clone, Copy, Debug)]
enum Expiry {
    Head,
    Idle,
    Closing,
}

impl Activity {
    fn new(protocol: Protocol, accepted: Instant) -> Activity {
        // HTTP/2 has no head to wait for once the preface is in: a
        // connection without streams is idle.
        let phase = match protocol {
            Protocol::Http1 => Phase::Head(accepted),
            Protocol::H2c => Phase::Idle(Instant::now()),
        };
        Activity {
            phase: Mutex::new(phase),
            reads_start_head: AtomicBool::new(false),
            protocol,
        }
    }

    fn deadline(&self, settings: &ConnSettings) -> Option<(Instant, Expiry)> {
        match *self.phase.lock() {
            Phase::Head(since) => Some((since + settings.header_read_timeout, Expiry::Head)),
            Phase::Busy(_) => None,
            Phase::Idle(since) => Some((since + settings.idle_timeout, Expiry::Idle)),
        }
    }

    fn awaiting_head(&self) -> bool {
        matches!(*self.phase.lock(), Phase::Head(_))
    }

    fn exchange_started(self: &Arc<Self>) -> OpenExchange {
        let mut phase = self.phase.lock();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        };
        self.reads_start_head.store(false, Ordering::Relaxed);
        drop(phase);
        OpenExchange(self.clone())
    }

    fn exchange_ended(&self) {
        let mut phase = self.phase.lock();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => {
                self.reads_start_head
                    .store(self.protocol == Protocol::Http1, Ordering::Relaxed);
                Phase::Idle(Instant::now())
            }
        };
    }

    /// Bytes came from the client: on an idle HTTP/1.1 connection they are
    /// the next request's head, which from now on has header_read_timeout.
    fn bytes_arrived(&self) {
        if !self.reads_start_head.load(Ordering::Relaxed) {
            return;
        }
        let mut phase = self.phase.lock();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
        }
        self.reads_start_head.store(false, Ordering::Relaxed);
    }
}

/// An exchange open on a connection; ends when dropped, which is when
/// hyper is done with the response body (or the request was abandoned).
struct OpenExchange(Arc<Activity>);

impl Drop for OpenExchange {
    fn drop(&mut self) {
        self.0.exchange_ended();
    }
}

/// A response body that keeps its exchange open until it is dropped.
struct ExchangeBody<B> {
    body: B,
    _exchange: OpenExchange,
}

impl<B: Body + Unpin> Body for ExchangeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's socket as hyper reads it: first the bytes read to tell the
/// protocol (hyper must see them too), then the socket itself.
struct ClientIo<T> {
    replay: Bytes,
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers a connection over a limit with a 503 and closes it.
async fn refuse(mut stream: TcpStream, reason: ConnectionRefusal, lingering: Arc<AtomicUsize>) {
    let body = match reason {
        ConnectionRefusal::TooManyConnections => {
            "the gateway has too many connections open; try again later\n"
        }
        ConnectionRefusal::TooManyClientConnections => {
            "too many connections from your address; close one and try again\n"
        }
    };
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\nx-gateway-error: {}\r\n\r\n{body}",
        body.len(),
        reason.as_str()
    );
    if lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING_REFUSALS {
        lingering.fetch_sub(1, Ordering::Relaxed);
        // A fresh socket's send buffer takes the answer whole.
        let _ = stream.try_write(answer.as_bytes());
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing with the client's request unread would reset the
        // connection, and a reset can destroy the answer before the client
        // reads it: so read what it sends until it closes.
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    lingering.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_is_told_from_http1_and_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (protocol, replay) = sniff(&mut server).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&replay[..], b"GET / HTTP/1.1\r\n");

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(H2_PREFACE).await.unwrap();
        client.write_all(b"\0\0").await.unwrap();
        let (protocol, replay) = sniff(&mut server).await.unwrap();
        assert_eq!(protocol, Protocol::H2c);
        assert_eq!(&replay[..], H2_PREFACE);

        // A method that shares the preface's first letter is HTTP/1.1.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PUT").await.unwrap();
        let (protocol, replay) = sniff(&mut server).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(&replay[..], b"PUT");
    }

    #[tokio::test]
    async fn a_client_that_closes_inside_the_preface_is_no_request() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        drop(client);
        let e = sniff(&mut server).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_replayed_bytes_come_before_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::new(Protocol::Http1, Instant::now()));
        let mut io = ClientIo {
            replay: Bytes::from_static(b"GET"),
            inner: server,
            activity,
        };
        client.write_all(b" / HTTP/1.1").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1");
    }

    /// Runs `shutdown_asked` beside `workers` threads that end when the
    /// shutdown flag turns, turned from yet another thread as a signal
    /// handler would, or that end at once when `stop` is false.
    fn workers_then_shutdown(workers: usize, stop: bool) -> io::Result<()> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (running, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
        let (waiting_tx, waiting) = std::sync::mpsc::channel();
        for _ in 0..workers {
            let (mut stop_rx, running) = (stop_rx.clone(), running.clone());
            let waiting = waiting_tx.clone();
            std::thread::spawn(move || {
                let _running = running;
                if stop {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let stopped = stop_rx.wait_for(|s| *s);
                        tokio::pin!(stopped);
                        poll_once_pending(stopped.as_mut()).await;
                        let _ = waiting.send(());
                        let _ = stopped.await;
                    });
                }
            });
        }
        drop((running, waiting_tx));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let asked = shutdown_asked(&mut stop_rx, &mut all_ended);
            tokio::pin!(asked);
            if stop {
                poll_once_pending(asked.as_mut()).await;
                // Every receiver waits before the flag turns.
                std::thread::spawn(move || {
                    for _ in 0..workers {
                        waiting.recv().unwrap();
                    }
                    let _ = stop_tx.send(true);
                });
            }
            asked.await
        })
    }

    async fn poll_once_pending<F: Future>(mut f: Pin<&mut F>) {
        std::future::poll_fn(|cx| {
            assert!(f.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await
    }

    #[test]
    fn workers_ending_for_a_shutdown_are_no_failure_but_ending_alone_is() {
        // The race is narrow: many rounds make a regression show.
        for _ in 0..1000 {
            workers_then_shutdown(8, true).unwrap();
        }
        let e = workers_then_shutdown(2, false).unwrap_err();
        assert_eq!(e.to_string(), "every worker thread stopped");
    }

    fn settings(server: &str) -> ConnSettings {
        let text = format!("[server]\nlisten = \"127.0.0.1:9\"\n{server}\n");
        let config = crate::config::Config::parse("t.toml", &text, Default::default(), &|_| None);
        ConnSettings::new(&config.unwrap().server)
    }

    /// Asserts `activity`'s deadline is `why`, `after` past a moment
    /// between `from` and now.
    fn assert_deadline(
        activity: &Activity,
        settings: &ConnSettings,
        from: Instant,
        after: Duration,
        why: fn(Expiry) -> bool,
    ) {
        let (at, expiry) = activity.deadline(settings).expect("a deadline");
        assert!(why(expiry), "{expiry:?}");
        assert!(
            from + after <= at && at <= Instant::now() + after,
            "{:?}",
            at - from
        );
    }

    #[test]
    fn an_http1_connection_moves_from_head_to_busy_to_idle_to_head() {
        let settings = settings("header_read_timeout = \"1s\"\nidle_timeout = \"5s\"");
        let head = |e| matches!(e, Expiry::Head);
        let accepted = Instant::now();
        let activity = Arc::new(Activity::new(Protocol::Http1, accepted));
        assert_deadline(&activity, &settings, accepted, Duration::from_secs(1), head);
        // Bytes within a head do not move its deadline...
        activity.bytes_arrived();
        let (at, _) = activity.deadline(&settings).unwrap();
        assert_eq!(at, accepted + Duration::from_secs(1));
        let exchange = activity.exchange_started();
        assert!(activity.deadline(&settings).is_none());
        // ...and request body bytes start nothing.
        activity.bytes_arrived();
        assert!(activity.deadline(&settings).is_none());
        let ended = Instant::now();
        drop(exchange);
        let idle = |e| matches!(e, Expiry::Idle);
        assert_deadline(&activity, &settings, ended, Duration::from_secs(5), idle);
        // The next request's first byte starts its head timer.
        let arrived = Instant::now();
        activity.bytes_arrived();
        assert_deadline(&activity, &settings, arrived, Duration::from_secs(1), head);
        assert!(activity.awaiting_head());
    }

    #[test]
    fn an_h2_connection_is_idle_without_streams_whatever_it_reads() {
        let settings = settings("idle_timeout = \"5s\"");
        let idle = |e| matches!(e, Expiry::Idle);
        let preface_read = Instant::now();
        let activity = Arc::new(Activity::new(Protocol::H2c, preface_read));
        assert_deadline(
            &activity,
            &settings,
            preface_read,
            Duration::from_secs(5),
            idle,
        );
        activity.bytes_arrived();
        assert!(!activity.awaiting_head());
        let (a, b) = (activity.exchange_started(), activity.exchange_started());
        drop(a);
        assert!(
            activity.deadline(&settings).is_none(),
            "one stream still open"
        );
        drop(b);
        activity.bytes_arrived();
        assert!(matches!(
            activity.deadline(&settings),
            Some((_, Expiry::Idle))
        ));
    }
}
