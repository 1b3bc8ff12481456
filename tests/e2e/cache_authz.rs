//! The shipped 0.2 filters through a real gateway: the response cache
//! (plugins/cache) on the memory and the Redis kv backends, external
//! authorisation (plugins/ext-authz) against a real authorisation service
//! reached by callout, and the Python example redact-json built from its
//! source with componentize-py.
//!
//! Upstreams that must say exactly what the test needs (`Cache-Control`,
//! `Vary`, `Expires`, an authorisation decision by `Authorization`) are
//! [`App`]s: hyper servers of the test's own with no automatic `Date`, so
//! a one-second freshness is not cut short when a second ticks over
//! between the answer and the store.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- harness

/// One answer of an [`App`].
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Answer {
    fn ok(body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn status(mut self, status: u16) -> Answer {
        self.status = status;
        self
    }

    fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn delay_ms(mut self, ms: u64) -> Answer {
        self.delay = Duration::from_millis(ms);
        self
    }
}

type Answerer = dyn Fn(&Seen, usize) -> Answer + Send + Sync;

/// An HTTP/1.1 upstream on loopback that answers what `answer` makes of
/// each request (and the how-manieth it is, from 1), recording them.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: LoopbackServer,
}

impl App {
    fn start(answer: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> App {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Arc<Answerer> = Arc::new(answer);
        let s = seen.clone();
        let server = loopback_server(move |stream| {
            let (seen, answer) = (s.clone(), answer.clone());
            async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, answer) = (seen.clone(), answer.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes().to_vec();
                            let request = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: format!("{:?}", parts.version),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into(),
                                        )
                                    })
                                    .collect(),
                                body,
                            };
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(request.clone());
                                seen.len()
                            };
                            let a = answer(&request, n);
                            tokio::time::sleep(a.delay).await;
                            let mut resp = hyper::Response::builder().status(a.status);
                            for (k, v) in &a.headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, hyper::Error>(
                                resp.body(Full::new(Bytes::from(a.body))).unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .auto_date_header(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            }
        });
        App {
            addr: server.addr,
            seen,
            _server: server,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the app saw a request")
    }
}

/// The suite's preamble with room for the bodies these tests send, and the
/// plugins in `plugins`.
fn preamble_in(listen: SocketAddr, admin: SocketAddr, plugins: &Path) -> String {
    preamble_with_plugins(listen, admin, plugins)
        .replace("max_body_bytes = 1024", "max_body_bytes = 1048576")
}

/// A gateway with the built plugins and `body` after the preamble.
fn start(body: &str) -> Gateway {
    build_plugins();
    let body = body.to_string();
    Gateway::start_with(tempdir::Dir::new(), move |addr, admin| {
        format!("{}{body}", preamble_in(addr, admin, &plugin_dir()))
    })
}

/// `[upstreams.app]` at `addr` and a route for everything through `filters`.
fn route(addr: SocketAddr, filters: &str) -> String {
    format!(
        "[upstreams.app]\ninstances = [\"{addr}\"]\n\n[[route]]\nid = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [{filters}]\n"
    )
}

/// A HEAD on a fresh connection, read to its end: the common client reads
/// `content-length` bytes of body, which a HEAD answer never has.
fn head(gw: &Gateway, path: &str) -> RawResponse {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let text = String::from_utf8_lossy(&all[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    RawResponse {
        status: status.parse().unwrap(),
        headers: lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect(),
        body: all[end + 4..].to_vec(),
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of Unix seconds.
fn http_date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------------ cache

/// An upstream whose answers say how they may be cached, by path; each
/// body names the request it answered (`#N`), so a hit shows whose answer
/// it replays.
fn cacheable_app() -> App {
    App::start(|req, n| {
        let path = req.uri.split('?').next().unwrap().to_string();
        let body = format!("{path} #{n}\n");
        let a = Answer::ok(body).header("content-type", "text/plain");
        match path.as_str() {
            "/fresh" | "/doc" | "/small" | "/redis" | "/again" => a
                .header("cache-control", "max-age=60")
                .header("etag", "\"v1\""),
            "/lang" => a
                .header("cache-control", "max-age=60")
                .header("vary", "Accept-Language")
                .header("x-lang", req.header("accept-language").unwrap_or("(none)")),
            "/star" => a.header("cache-control", "max-age=60").header("vary", "*"),
            "/no-store" => a.header("cache-control", "no-store, max-age=60"),
            "/private" => a.header("cache-control", "private, max-age=60"),
            "/public" => a.header("cache-control", "public, max-age=60"),
            "/short" => a.header("cache-control", "max-age=1"),
            "/expires" => {
                let now = unix_now();
                a.header("date", &http_date(now))
                    .header("expires", &http_date(now + 60))
            }
            "/expired" => a.header("expires", "0"),
            "/big" => {
                let body: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
                Answer {
                    body,
                    ..Answer::ok("").header("cache-control", "max-age=60")
                }
            }
            _ => a,
        }
    })
}

fn cache_config(extra: &str) -> String {
    format!(
        "[filters.cache]\nplugin = \"cache\"\n[filters.cache.config]\nmax_object_bytes = 1024\n{extra}\n"
    )
}

fn cache_gateway(app: &App) -> Gateway {
    start(&format!(
        "{}{}",
        cache_config(""),
        route(app.addr, "\"cache\"")
    ))
}

/// A cache counter of the filter `cache`; 0 when absent.
fn cache_count(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l = vec![("filter", "cache")];
    l.extend_from_slice(labels);
    metric(scrape, &format!("gateway_plugin_cache_{name}_total"), &l).unwrap_or(0.0)
}

/// A GET that must answer 200; its `X-Cache` and body.
fn fetch(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let r = gw.get(path, headers);
    assert_eq!(r.status, 200, "{path}: {}\n{}", r.body_text(), gw.log());
    (
        r.header("x-cache").unwrap_or("(none)").to_string(),
        r.body_text(),
    )
}

#[test]
fn cache_a_miss_then_a_hit_replays_the_first_answer_with_its_age() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);

    let first = gw.get("/fresh", &[]);
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert_eq!(first.header("x-cache"), Some("miss"));
    assert_eq!(first.body_text(), "/fresh #1\n");

    let hit = gw.get("/fresh", &[]);
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.body_text(), "/fresh #1\n", "the stored answer");
    let age: u64 = hit
        .header("age")
        .expect("a hit carries Age")
        .parse()
        .unwrap();
    assert!(age <= 1, "{age}");
    // The stored headers come back; the length is the stored body's.
    assert_eq!(hit.header("content-type"), Some("text/plain"));
    assert_eq!(hit.header("cache-control"), Some("max-age=60"));
    assert_eq!(hit.header("etag"), Some("\"v1\""));
    assert_eq!(hit.header("content-length"), Some("10"));
    assert!(hit.header("x-request-id").is_some());
    assert_eq!(app.count(), 1, "the upstream saw one request");

    // The query is part of the key.
    assert_eq!(fetch(&gw, "/fresh?page=2", &[]).0, "miss");
    assert_eq!(fetch(&gw, "/fresh?page=2", &[]).0, "hit");
    assert_eq!(app.count(), 2);

    let scrape = gw.metrics();
    assert_eq!(cache_count(&scrape, "misses", &[]), 2.0, "{scrape}");
    assert_eq!(cache_count(&scrape, "hits", &[]), 2.0, "{scrape}");
    assert_eq!(cache_count(&scrape, "stores", &[]), 2.0, "{scrape}");
}

#[test]
fn cache_keeps_one_entry_per_vary_value_and_never_stores_vary_star() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);
    let en = [("accept-language", "en")];
    let de = [("accept-language", "de")];

    assert_eq!(
        fetch(&gw, "/lang", &en),
        ("miss".into(), "/lang #1\n".into())
    );
    // Another value is another entry, not the English one.
    assert_eq!(
        fetch(&gw, "/lang", &de),
        ("miss".into(), "/lang #2\n".into())
    );
    assert_eq!(
        fetch(&gw, "/lang", &en),
        ("hit".into(), "/lang #1\n".into())
    );
    let r = gw.get("/lang", &de);
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert_eq!(r.body_text(), "/lang #2\n");
    assert_eq!(r.header("x-lang"), Some("de"));
    // No value at all is a value of its own.
    assert_eq!(fetch(&gw, "/lang", &[]).0, "miss");
    assert_eq!(fetch(&gw, "/lang", &[]).0, "hit");
    assert_eq!(app.count(), 3);

    // `Vary: *`: nothing stored can match a request.
    assert_eq!(
        fetch(&gw, "/star", &en),
        ("miss".into(), "/star #4\n".into())
    );
    assert_eq!(
        fetch(&gw, "/star", &en),
        ("miss".into(), "/star #5\n".into())
    );
    assert_eq!(app.count(), 5);

    let scrape = gw.metrics();
    assert_eq!(cache_count(&scrape, "stores", &[]), 3.0, "{scrape}");
    assert_eq!(cache_count(&scrape, "hits", &[]), 3.0, "{scrape}");
    assert_eq!(
        cache_count(&scrape, "uncacheable", &[("reason", "vary_star")]),
        2.0,
        "{scrape}"
    );
}

#[test]
fn cache_does_not_store_no_store_or_private_answers() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);
    for path in ["/no-store", "/private"] {
        let before = app.count();
        assert_eq!(fetch(&gw, path, &[]).0, "miss", "{path}");
        let (x_cache, body) = fetch(&gw, path, &[]);
        assert_eq!(x_cache, "miss", "{path}");
        assert_eq!(body, format!("{path} #{}\n", before + 2), "a fresh answer");
        assert_eq!(app.count(), before + 2, "{path}: both went upstream");
    }
    // A request's own `no-store` skips the cache both ways.
    assert_eq!(
        fetch(&gw, "/fresh", &[("cache-control", "no-store")]).0,
        "bypass"
    );
    assert_eq!(fetch(&gw, "/fresh", &[]).0, "miss", "nothing was stored");

    let scrape = gw.metrics();
    assert_eq!(cache_count(&scrape, "stores", &[]), 1.0, "{scrape}");
    assert_eq!(
        cache_count(&scrape, "uncacheable", &[("reason", "no_store")]),
        2.0,
        "{scrape}"
    );
    assert_eq!(
        cache_count(&scrape, "uncacheable", &[("reason", "private")]),
        2.0,
        "{scrape}"
    );
    assert_eq!(
        cache_count(&scrape, "bypasses", &[("reason", "request_directive")]),
        1.0,
        "{scrape}"
    );
}

#[test]
fn cache_a_request_with_authorization_bypasses_what_was_not_shared() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);
    let auth = [("authorization", "Bearer alice")];

    // Stored for anonymous requests...
    assert_eq!(fetch(&gw, "/fresh", &[]).0, "miss");
    assert_eq!(fetch(&gw, "/fresh", &[]).0, "hit");
    // ...but an authorised one goes upstream, and gets its own answer.
    assert_eq!(
        fetch(&gw, "/fresh", &auth),
        ("bypass".into(), "/fresh #2\n".into())
    );
    assert_eq!(app.count(), 2);
    // An answer to an authorised request that does not say it may be
    // shared is not stored for anyone.
    assert_eq!(fetch(&gw, "/again", &auth).0, "miss");
    assert_eq!(fetch(&gw, "/again", &[]).0, "miss");
    assert_eq!(app.count(), 4);
    // `public` may be shared: stored from an authorised request, and it
    // answers one.
    assert_eq!(fetch(&gw, "/public", &auth).0, "miss");
    assert_eq!(
        fetch(&gw, "/public", &[("authorization", "Bearer bob")]),
        ("hit".into(), "/public #5\n".into())
    );
    assert_eq!(app.count(), 5);

    let scrape = gw.metrics();
    assert_eq!(
        cache_count(&scrape, "bypasses", &[("reason", "authorization")]),
        1.0,
        "{scrape}"
    );
    // The bypassed /fresh and the first /again: answers to authorised
    // requests that did not say they may be shared.
    assert_eq!(
        cache_count(&scrape, "uncacheable", &[("reason", "authorization")]),
        2.0,
        "{scrape}"
    );
}

#[test]
fn cache_an_entry_expires_with_its_freshness() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);
    assert_eq!(
        fetch(&gw, "/short", &[]),
        ("miss".into(), "/short #1\n".into())
    );
    assert_eq!(
        fetch(&gw, "/short", &[]),
        ("hit".into(), "/short #1\n".into())
    );
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(
        fetch(&gw, "/short", &[]),
        ("miss".into(), "/short #2\n".into()),
        "past max-age=1"
    );
    assert_eq!(fetch(&gw, "/short", &[]).0, "hit", "stored again");

    // `Expires` a minute after `Date` is a minute of freshness; an
    // `Expires` that is no date is already stale.
    assert_eq!(fetch(&gw, "/expires", &[]).0, "miss");
    assert_eq!(fetch(&gw, "/expires", &[]).0, "hit");
    assert_eq!(fetch(&gw, "/expired", &[]).0, "miss");
    assert_eq!(fetch(&gw, "/expired", &[]).0, "miss");
    assert_eq!(app.count(), 5);

    let scrape = gw.metrics();
    assert_eq!(
        cache_count(&scrape, "uncacheable", &[("reason", "stale")]),
        2.0,
        "{scrape}"
    );
}

/// A HEAD is answered from what a GET stored: its status and headers,
/// no body. RFC 9110 section 8.6: a HEAD answer's `Content-Length`, when
/// sent, is the length the GET's body would have. The gateway sends none
/// (a filter's reply may not set it, and hyper writes no implicit
/// `content-length: 0` for a HEAD); a `0` would tell a client the
/// document is empty.
#[test]
fn cache_answers_head_from_the_get_entry_without_a_body() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);
    let get = gw.get("/doc", &[]);
    assert_eq!(get.header("x-cache"), Some("miss"));
    assert_eq!(get.header("content-length"), Some("8"));

    let r = head(&gw, "/doc");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), Some("hit"));
    assert!(r.header("age").is_some());
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.body.is_empty(), "a HEAD answer has no body: {:?}", r.body);
    let length = r.header("content-length");
    assert!(
        length.is_none() || length == Some("8"),
        "a HEAD hit says content-length {length:?}; the GET's body is 8 bytes"
    );
    assert_eq!(app.count(), 1, "the HEAD never went upstream");

    // A HEAD is never stored itself: a GET after a HEAD miss goes upstream.
    let r = head(&gw, "/fresh");
    assert_eq!(r.header("x-cache"), Some("miss"));
    assert!(r.body.is_empty());
    assert_eq!(app.last().method, "HEAD");
    assert_eq!(fetch(&gw, "/fresh", &[]).0, "miss");
    assert_eq!(app.count(), 3);
}

#[test]
fn cache_a_body_over_max_object_bytes_streams_whole_and_is_not_stored() {
    let app = cacheable_app();
    let gw = cache_gateway(&app);
    let expected: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for _ in 0..2 {
        let r = gw.get("/big", &[]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(r.header("x-cache"), Some("miss"));
        assert_eq!(r.body.len(), 5000);
        assert!(r.body == expected, "the body arrived whole and unchanged");
    }
    assert_eq!(app.count(), 2);
    // Under the limit, the same configuration stores.
    assert_eq!(fetch(&gw, "/small", &[]).0, "miss");
    assert_eq!(fetch(&gw, "/small", &[]).0, "hit");

    let scrape = gw.metrics();
    assert_eq!(
        cache_count(&scrape, "uncacheable", &[("reason", "too_large")]),
        2.0,
        "{scrape}"
    );
    assert_eq!(cache_count(&scrape, "stores", &[]), 1.0, "{scrape}");
}

#[test]
fn cache_on_redis_an_entry_one_gateway_stored_is_a_hit_on_another() {
    let redis = Redis::start();
    let app = cacheable_app();
    let replica = || {
        start(&format!(
            "[state]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"500ms\"\n\n{}{}",
            redis.url(),
            cache_config(""),
            route(app.addr, "\"cache\"")
        ))
    };
    let a = replica();
    let b = replica();
    assert_eq!(
        fetch(&a, "/redis", &[]),
        ("miss".into(), "/redis #1\n".into())
    );
    // The entry lives in Redis, not in the gateway.
    let keys = redis.cli(&["--raw", "keys", "*kv:cache:h:*"]);
    assert!(keys.contains("kv:cache:h:"), "{keys}");

    let r = b.get("/redis", &[]);
    assert_eq!(r.header("x-cache"), Some("hit"), "{}", b.log());
    assert_eq!(r.body_text(), "/redis #1\n");
    assert!(r.header("age").is_some());
    assert_eq!(app.count(), 1, "the second gateway never went upstream");

    let (sa, sb) = (a.metrics(), b.metrics());
    assert_eq!(cache_count(&sa, "stores", &[]), 1.0, "{sa}");
    assert_eq!(cache_count(&sa, "misses", &[]), 1.0, "{sa}");
    assert_eq!(cache_count(&sb, "hits", &[]), 1.0, "{sb}");
    assert_eq!(cache_count(&sb, "misses", &[]), 0.0, "{sb}");
}

// -------------------------------------------------------------- ext-authz

/// An authorisation service that decides by the `Authorization` the check
/// carries.
fn authz_service() -> App {
    App::start(|req, _| match req.header("authorization") {
        Some("Bearer alice") => Answer::ok("")
            .header("x-user", "alice")
            .header("x-scopes", "read")
            .header("x-internal", "not for the app"),
        // Allowed, without naming a user.
        Some("Bearer anon") => Answer::ok("").status(204),
        Some("Bearer nobody") => Answer::ok("{\"error\":\"token revoked\"}")
            .status(403)
            .header("content-type", "application/json")
            .header("www-authenticate", "Bearer error=\"invalid_token\"")
            .header("x-user", "nobody"),
        Some("Bearer away") => Answer::ok("")
            .status(302)
            .header("location", "https://login.example/"),
        Some("Bearer broken") => Answer::ok("oops").status(500),
        Some("Bearer slow") => Answer::ok("").header("x-user", "slow").delay_ms(1_000),
        _ => Answer::ok("")
            .status(401)
            .header("www-authenticate", "Bearer"),
    })
}

fn authz_gateway(app: &Upstream, authz: &App, extra: &str) -> Gateway {
    start(&format!(
        "[upstreams.authz]\ninstances = [\"{}\"]\n\n\
         [filters.authz]\nplugin = \"ext_authz\"\ncallouts = [\"authz\"]\ntimeout = \"1500ms\"\n\
         [filters.authz.config]\ncluster = \"authz\"\npath_prefix = \"/check\"\n\
         headers_from_authz = [\"x-user\", \"x-scopes\"]\ntimeout_ms = 200\n{extra}\n\n{}",
        authz.addr,
        route(app.addr, "\"authz\"")
    ))
}

/// A decision counter of the filter `authz`; 0 when absent.
fn authz_count(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l = vec![("filter", "authz")];
    l.extend_from_slice(labels);
    metric(
        scrape,
        &format!("gateway_plugin_ext_authz_{name}_total"),
        &l,
    )
    .unwrap_or(0.0)
}

#[test]
fn ext_authz_allow_sets_the_services_headers_and_drops_the_clients() {
    let app = Upstream::start("app");
    let authz = authz_service();
    let gw = authz_gateway(&app, &authz, "");

    let r = gw.get(
        "/orders/1?full=1",
        &[
            ("authorization", "Bearer alice"),
            ("x-user", "mallory"),
            ("cookie", "s=1"),
            ("x-other", "kept"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), "hello from app\n");
    let seen = app.last();
    assert_eq!(seen.header("x-user"), Some("alice"));
    assert_eq!(seen.header_count("x-user"), 1, "the client's copy is gone");
    assert_eq!(seen.header("x-scopes"), Some("read"));
    assert_eq!(seen.header("x-internal"), None, "not a listed header");
    assert_eq!(seen.header("x-other"), Some("kept"));
    assert_eq!(seen.uri, "/orders/1?full=1");

    // The check: method and path under the prefix, the chosen headers and
    // the filter's own, no body.
    let check = authz.last();
    assert_eq!(check.method, "GET");
    assert_eq!(check.uri, "/check/orders/1?full=1");
    assert_eq!(check.header("authorization"), Some("Bearer alice"));
    assert_eq!(check.header("cookie"), Some("s=1"));
    assert_eq!(check.header("x-other"), None);
    assert_eq!(check.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(check.header("x-forwarded-host"), Some("test.local"));
    assert_eq!(check.header("x-forwarded-proto"), Some("http"));
    assert_eq!(check.header("x-request-id"), r.header("x-request-id"));
    assert!(check.body.is_empty());

    // An allow that names no user still strips the one the client sent.
    let r = gw.get(
        "/orders/2",
        &[
            ("authorization", "Bearer anon"),
            ("x-user", "admin"),
            ("x-scopes", "all"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = app.last();
    assert_eq!(seen.uri, "/orders/2");
    assert_eq!(seen.header("x-user"), None);
    assert_eq!(seen.header("x-scopes"), None);

    let scrape = gw.metrics();
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "allow")]),
        2.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "deny")]),
        0.0,
        "{scrape}"
    );
    assert_eq!(
        metric(
            &scrape,
            "gateway_plugin_ext_authz_check_duration_seconds_count",
            &[("filter", "authz")]
        ),
        Some(2.0),
        "{scrape}"
    );
}

#[test]
fn ext_authz_deny_answers_with_the_services_status_body_and_chosen_headers() {
    let app = Upstream::start("app");
    let authz = authz_service();
    let gw = authz_gateway(&app, &authz, "");

    let r = gw.get("/orders/1", &[("authorization", "Bearer nobody")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body_text(), "{\"error\":\"token revoked\"}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(r.header("x-user"), None, "not in headers_to_client");

    let r = gw.get("/orders/1", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    let r = gw.get("/orders/1", &[("authorization", "Bearer away")]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://login.example/"));

    // A failing service is no answer: the failure policy's status.
    let r = gw.get("/orders/1", &[("authorization", "Bearer broken")]);
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(r.body_text(), "the authorisation service did not answer\n");

    assert_eq!(authz.count(), 4);
    assert_eq!(app.count(), 0, "the app saw nothing");
    let scrape = gw.metrics();
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "deny")]),
        3.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "error")]),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "allow")]),
        0.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "errors", &[("reason", "status_5xx")]),
        1.0,
        "{scrape}"
    );
}

#[test]
fn ext_authz_a_slow_service_fails_closed_with_failure_status() {
    let app = Upstream::start("app");
    let authz = authz_service();
    let gw = authz_gateway(&app, &authz, "failure_status = 504");
    let started = Instant::now();
    let r = gw.get("/orders/1", &[("authorization", "Bearer slow")]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body_text());
    assert!(
        took < Duration::from_millis(800),
        "ended by timeout_ms = 200, not the service: {took:?}"
    );
    assert_eq!(authz.count(), 1, "the check was sent");
    assert_eq!(app.count(), 0, "and nothing went on");
    let scrape = gw.metrics();
    assert_eq!(
        authz_count(&scrape, "errors", &[("reason", "timeout")]),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "error")]),
        1.0,
        "{scrape}"
    );
}

#[test]
fn ext_authz_failure_mode_allow_lets_the_request_through_without_identity() {
    let app = Upstream::start("app");
    let authz = authz_service();
    let gw = authz_gateway(&app, &authz, "failure_mode_allow = true");
    let started = Instant::now();
    let r = gw.get(
        "/orders/1",
        &[("authorization", "Bearer slow"), ("x-user", "admin")],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.body_text(), "hello from app\n");
    assert!(started.elapsed() < Duration::from_millis(800));
    let seen = app.last();
    assert_eq!(seen.uri, "/orders/1");
    // The service vouched for no one: the client's claim does not pass.
    assert_eq!(seen.header("x-user"), None, "{:?}", seen.headers);
    // A 5xx is a failure too.
    let r = gw.get("/orders/2", &[("authorization", "Bearer broken")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    // A deny is still a deny.
    assert_eq!(
        gw.get("/orders/3", &[("authorization", "Bearer nobody")])
            .status,
        403
    );
    assert_eq!(app.count(), 2);
    let scrape = gw.metrics();
    assert_eq!(
        authz_count(&scrape, "errors", &[("reason", "timeout")]),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "errors", &[("reason", "status_5xx")]),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "error")]),
        2.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "deny")]),
        1.0,
        "{scrape}"
    );
}

#[test]
fn ext_authz_allow_answers_are_reused_for_allow_cache_ttl() {
    let app = Upstream::start("app");
    let authz = authz_service();
    let gw = authz_gateway(&app, &authz, "allow_cache_ttl = \"30s\"");
    let alice = [("authorization", "Bearer alice"), ("x-user", "mallory")];
    for _ in 0..2 {
        let r = gw.get("/orders/1", &alice);
        assert_eq!(r.status, 200, "{}", r.body_text());
        let seen = app.last();
        // The cached allow carries the service's headers too.
        assert_eq!(seen.header("x-user"), Some("alice"));
        assert_eq!(seen.header_count("x-user"), 1);
        assert_eq!(seen.header("x-scopes"), Some("read"));
    }
    assert_eq!(authz.count(), 1, "two identical requests, one check");
    // Another path is another check.
    assert_eq!(gw.get("/orders/2", &alice).status, 200);
    assert_eq!(authz.count(), 2);
    // Deny answers are never kept.
    for _ in 0..2 {
        let r = gw.get("/orders/1", &[("authorization", "Bearer nobody")]);
        assert_eq!(r.status, 403);
    }
    assert_eq!(authz.count(), 4);
    assert_eq!(app.count(), 3);

    let scrape = gw.metrics();
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "cache_hit")]),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "allow")]),
        2.0,
        "{scrape}"
    );
    assert_eq!(
        authz_count(&scrape, "decisions", &[("result", "deny")]),
        2.0,
        "{scrape}"
    );
}

// ------------------------------------------------------------ redact-json

/// Builds the redact-json example once per test run, as `make examples`
/// does (componentize-py from scripts/setup.sh), into a directory of its
/// own, and returns that directory.
fn redact_json_built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = repo().join(format!("target/cache-authz-test/{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let made = Command::new(repo().join("target/toolchains/python/bin/componentize-py"))
            .arg("-d")
            .arg(repo().join("wit/v0.2"))
            .args(["-w", "plugin", "componentize", "-p"])
            .arg(repo().join("plugins/examples/redact-json"))
            .args(["redact_json", "-o"])
            .arg(out.join("redact-json.wasm"))
            .output()
            .unwrap_or_else(|e| {
                panic!("componentize-py: cannot start: {e} (run scripts/setup.sh)")
            });
        assert!(
            made.status.success(),
            "componentize-py (redact-json) failed ({}):\n{}\n{}",
            made.status,
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        );
        out
    })
}

#[test]
fn redact_json_replaces_configured_fields_and_leaves_other_bodies_alone() {
    const DOC: &str = r#"{"user": {"name": "ann", "password": "hunter2"}, "cards": [{"pan": "4111111111111111", "id": 1}, {"id": 2}]}"#;
    let app = App::start(|req, _| {
        let path = req.uri.as_str();
        let content_type = match path {
            "/json" => "application/json",
            "/problem" => "application/problem+json",
            _ => "text/plain",
        };
        Answer::ok(DOC)
            .header("content-type", content_type)
            .header("content-digest", "sha-256=:x:")
    });
    let plugins = redact_json_built();
    let gw = Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        format!(
            "{}[filters.redact]\nplugin = \"redact-json\"\ntimeout = \"2s\"\nmemory_limit_mib = 32\n\
             [filters.redact.config]\nfields = [\"password\", \"pan\"]\n\n{}",
            preamble_in(listen, admin, plugins),
            route(app.addr, "\"redact\"")
        )
    });

    let want = r#"{"user":{"name":"ann","password":"[redacted]"},"cards":[{"pan":"[redacted]","id":1},{"id":2}]}"#;
    let r = gw.get("/json", &[("accept-encoding", "gzip")]);
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.log());
    assert_eq!(r.body_text(), want);
    assert_eq!(
        r.header("content-length"),
        Some(want.len().to_string().as_str())
    );
    assert_eq!(r.header("content-digest"), None, "no longer the body's");
    // The upstream was asked for a body the filter can read.
    assert_eq!(app.last().header("accept-encoding"), Some("identity"));

    let r = gw.get("/problem", &[]);
    assert_eq!(r.body_text(), want, "+json is JSON");

    // Not JSON by its type: byte for byte as the upstream sent it.
    let r = gw.get("/text", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), DOC);
    assert_eq!(r.header("content-digest"), Some("sha-256=:x:"));
    assert_eq!(
        r.header("content-length"),
        Some(DOC.len().to_string().as_str())
    );

    let scrape = gw.metrics();
    for field in ["password", "pan"] {
        assert_eq!(
            metric(
                &scrape,
                "gateway_plugin_redact_json_redactions_total",
                &[("field", field)]
            ),
            Some(2.0),
            "{field}: {scrape}"
        );
    }
}
