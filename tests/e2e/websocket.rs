//! WebSockets through the gateway, with a real client and a real echo
//! server (tokio-tungstenite): the route's filters (the auth plugin) decide
//! on the handshake, the upgraded connection is tunnelled both ways and
//! counted, a quiet tunnel is closed at the idle timeout, and a route can
//! refuse upgrades.

use crate::common::{Gateway, LoopbackServer, loopback_server, metric, preamble, tempdir};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The demo key of config/gateway.toml's auth filter, and its hash.
const KEY: &str = "demo-key-acme";
const KEY_SHA256: &str = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873";

/// Each handshake's request headers, in the order they came.
type Handshakes = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A WebSocket echo server on loopback, recording the handshake headers it
/// was sent.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Handshakes,
    _server: LoopbackServer,
}

impl EchoServer {
    // tungstenite's handshake callback returns its error response unboxed.
    #[allow(clippy::result_large_err)]
    fn start() -> EchoServer {
        let handshakes: Handshakes = Arc::default();
        let seen = handshakes.clone();
        let server = loopback_server(move |stream| {
            let seen = seen.clone();
            async move {
                let record = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                              resp| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    seen.lock().unwrap().push(headers);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        return;
                    }
                    let echoed = msg.is_text() || msg.is_binary();
                    if echoed && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        });
        EchoServer {
            addr: server.addr,
            handshakes,
            _server: server,
        }
    }

    fn handshakes(&self) -> Vec<Vec<(String, String)>> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// A gateway with `/ws` through the auth filter to `echo`, and `/plain`
/// to the same server on a route that refuses upgrades. `server` is added
/// to the `[server]` table.
fn gateway(echo: &EchoServer, server: &str) -> Gateway {
    gateway_with_grace(echo, server, "10s")
}

/// `gateway`, with `shutdown_grace` set to `grace`.
fn gateway_with_grace(echo: &EchoServer, server: &str, grace: &str) -> Gateway {
    let body = format!(
        "[filters.auth]\nplugin = \"auth\"\n[filters.auth.config]\nrequired_scopes = [\"orders\"]\n[[filters.auth.config.api_keys]]\nsha256 = \"{KEY_SHA256}\"\nsubject = \"demo-acme\"\ntenant = \"acme\"\nscopes = [\"orders\"]\n\n[upstreams.echo]\ninstances = [\"{}\"]\n\n[[route]]\nid = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"echo\"\nfilters = [\"auth\"]\n\n[[route]]\nid = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"echo\"\nupgrades = []\n",
        echo.addr
    );
    Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
        let preamble = preamble(addr, admin)
            .replacen("[server]\n", &format!("[server]\n{server}\n"), 1)
            .replacen(
                "shutdown_grace = \"10s\"",
                &format!("shutdown_grace = \"{grace}\""),
                1,
            );
        format!("{preamble}{body}")
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` on the gateway, with the API key if `key`.
async fn connect(gw: &Gateway, path: &str, key: Option<&str>) -> Result<Client, WsError> {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("x-api-key", k.parse().unwrap());
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the handshake finishes")
    .map(|(ws, _)| ws)
}

fn scraped(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics(), name, labels).unwrap_or(0.0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_websocket_echoes_through_the_auth_filter_and_its_bytes_are_counted() {
    let echo = EchoServer::start();
    let gw = gateway(&echo, "");
    runtime().block_on(async {
        // The auth filter decides on the handshake: no key, no tunnel.
        match connect(&gw, "/ws/chat", None).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected a 401 handshake, got {:?}", other.map(|_| ())),
        }
        assert!(echo.handshakes().is_empty(), "refused before the upstream");

        let mut ws = connect(&gw, "/ws/chat", Some(KEY)).await.unwrap();
        for text in ["hello", "through the gateway"] {
            ws.send(Message::text(text)).await.unwrap();
            let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back, Message::text(text));
        }
        ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_data().len(), 100_000);
        assert!(scraped(&gw, "gateway_tunnels_open", &[]) >= 1.0);
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    });
    // The upstream saw the handshake with the gateway's headers, and the
    // auth filter's identity, not the key's absence.
    let handshakes = echo.handshakes();
    assert_eq!(handshakes.len(), 1);
    let h = &handshakes[0];
    let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(get("upgrade"), Some("websocket"));
    assert_eq!(get("connection"), Some("upgrade"));
    assert!(get("x-request-id").is_some());
    assert!(get("x-forwarded-for").is_some());

    wait_for("the tunnel to close", || {
        scraped(&gw, "gateway_tunnels_closed_total", &[("reason", "closed")]) >= 1.0
    });
    assert_eq!(scraped(&gw, "gateway_tunnels_open", &[]), 0.0);
    assert_eq!(
        scraped(
            &gw,
            "gateway_tunnels_total",
            &[("route", "ws"), ("protocol", "websocket")]
        ),
        1.0
    );
    let to_upstream = scraped(
        &gw,
        "gateway_tunnel_bytes_total",
        &[("route", "ws"), ("direction", "to_upstream")],
    );
    let to_client = scraped(
        &gw,
        "gateway_tunnel_bytes_total",
        &[("route", "ws"), ("direction", "to_client")],
    );
    // Frames carry the payloads plus a few bytes of framing (and the
    // client's masking) each.
    assert!(
        to_upstream > 100_000.0 && to_upstream < 101_000.0,
        "{to_upstream}"
    );
    assert!(
        to_client > 100_000.0 && to_client < 101_000.0,
        "{to_client}"
    );
    assert_eq!(
        scraped(
            &gw,
            "gateway_http_requests_total",
            &[("route", "ws"), ("status", "101")]
        ),
        1.0
    );
}

#[test]
fn a_quiet_tunnel_is_closed_at_the_idle_timeout() {
    let echo = EchoServer::start();
    let gw = gateway(&echo, "tunnel_idle_timeout = \"300ms\"");
    runtime().block_on(async {
        let mut ws = connect(&gw, "/ws/idle", Some(KEY)).await.unwrap();
        ws.send(Message::text("once")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("once"));
        // Nothing moves: the gateway closes both sides.
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the tunnel stayed open");
        assert!(started.elapsed() >= Duration::from_millis(250));
    });
    wait_for("the idle close to be counted", || {
        scraped(&gw, "gateway_tunnels_closed_total", &[("reason", "idle")]) >= 1.0
    });
}

#[test]
fn a_route_without_upgrades_refuses_them() {
    let echo = EchoServer::start();
    let gw = gateway(&echo, "");
    runtime().block_on(async {
        match connect(&gw, "/plain/chat", Some(KEY)).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 501);
                assert_eq!(
                    resp.headers()
                        .get("x-gateway-error")
                        .and_then(|v| v.to_str().ok()),
                    Some("upgrade-not-supported")
                );
            }
            other => panic!("expected 501, got {:?}", other.map(|_| ())),
        }
    });
    assert!(echo.handshakes().is_empty());
}

#[test]
fn a_tunnel_outlives_the_start_of_a_graceful_shutdown_until_the_grace_ends() {
    let echo = EchoServer::start();
    let gw = gateway_with_grace(&echo, "", "1s");
    runtime().block_on(async {
        let mut ws = connect(&gw, "/ws/drain", Some(KEY)).await.unwrap();
        gw.signal(15);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Draining: no new connections, but the open tunnel still carries.
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the tunnel outlived the grace period");
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "cut before the grace ended"
        );
    });
}

type H2Client =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Opens a WebSocket over HTTP/2 (RFC 8441's extended CONNECT) to `path`
/// on the gateway, over h2c; Err with the status when it is refused.
async fn connect_h2(gw: &Gateway, path: &str) -> Result<H2Client, u16> {
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut send = crate::common::h2_client(stream).await;
    // The server's SETTINGS (which allow extended CONNECT) come first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("http://{}{path}", gw.addr))
        .header("sec-websocket-version", "13")
        .header("x-api-key", KEY)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = send
        .send_request(req)
        .await
        .expect("the gateway allows extended CONNECT");
    if resp.status() != 200 {
        return Err(resp.status().as_u16());
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await)
}

#[test]
fn a_websocket_over_http2_is_tunnelled_to_an_http11_upstream() {
    let echo = EchoServer::start();
    let gw = gateway(&echo, "");
    runtime().block_on(async {
        let mut ws = connect_h2(&gw, "/ws/h2").await.unwrap();
        ws.send(Message::text("over h2")).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text("over h2"));
        ws.close(None).await.unwrap();
        // The route that refuses upgrades refuses them over HTTP/2 too.
        assert_eq!(connect_h2(&gw, "/plain/h2").await.err(), Some(501));
    });
    // The upstream had an HTTP/1.1 handshake, key and all.
    let handshakes = echo.handshakes();
    assert_eq!(handshakes.len(), 1);
    let h = &handshakes[0];
    let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(get("upgrade"), Some("websocket"));
    assert_eq!(get("sec-websocket-version"), Some("13"));
    assert_eq!(get("sec-websocket-key").map(str::len), Some(24));
}
