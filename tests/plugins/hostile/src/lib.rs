//! A deliberately hostile filter for the sandbox tests. Each request's
//! `x-attack` header picks one way to attack the gateway: spin, hoard memory,
//! overflow the stack, trap, flood the host interfaces with absurd arguments,
//! reach for files, environment or network, or answer with a reply the
//! gateway must refuse. Attacks the host survives report what it did in
//! `x-attack-result`; a request without `x-attack` passes marked
//! `x-hostile: passed`.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use exports::gateway::filter::filter::Guest;
use gateway::filter::crypto::{self, P256PublicKey, RsaPublicKey};
use gateway::filter::host::{self, LogLevel};
use gateway::filter::state::{self, CounterOp};
use gateway::filter::types::{Action, Header, Reply, Request, Response};
use serde::Deserialize;
use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

const MIB: usize = 1 << 20;
/// How many times the flooding attacks repeat a call or an item.
const FLOOD: usize = 10_000;
/// Error texts are cut to this many characters so a report stays far below
/// the host's 8 KiB cap on a header value.
const MAX_ERROR: usize = 200;
/// The longest header value the filter sets itself.
const MAX_VALUE: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Tags the filter's log lines, to tell instances apart in the log.
    label: Option<String>,
    /// What every `configure` after the first in the gateway does (counted
    /// in shared state): `loop` spins, `fail` refuses. The first instance
    /// starts, so the filter loads; every later one cannot.
    later_configure: Option<String>,
    /// `configure` refuses with exactly this text.
    refuse_with: Option<String>,
    /// `configure` spins until the host ends it.
    configure_spins: Option<bool>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn label() -> &'static str {
    CONFIG
        .get()
        .and_then(|c| c.label.as_deref())
        .unwrap_or("hostile")
}

/// The host refuses header values that are not visible ASCII, so anything
/// the filter reports (error texts, environment values) is made so here.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn error_text(e: &dyn std::fmt::Display) -> String {
    printable(&e.to_string(), MAX_ERROR)
}

fn report(req: &Request, name: &str, text: &str) {
    let _ = req.set_header(name, printable(text, MAX_VALUE).as_bytes());
}

fn header_text(req: &Request, name: &str) -> Option<String> {
    req.header(name)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn hoard() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; MIB]);
        black_box(&hoard);
    }
}

/// Recursion that must end in the engine's stack-overflow trap, not in an
/// out-of-bounds access. Rust keeps by-value arrays and black-boxed values
/// on a shadow stack in linear memory (1 MiB), which wraps around into an
/// out-of-bounds trap when exhausted; so the per-level shadow-stack use is
/// kept to the one black-boxed integer, while the values kept alive across
/// the call fill the engine's own stack frames and exhaust that first. The
/// work after the call is not an accumulation LLVM can turn into a loop, and
/// the base case, unreachable in practice, is one it cannot rule out.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let depth = black_box(depth);
    if depth == u64::MAX {
        return 0;
    }
    let a = depth.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = a.rotate_left(17) ^ depth;
    let c = b.wrapping_add(a >> 7);
    let d = c ^ (b << 3);
    let e = d.wrapping_mul(a | 1);
    let below = recurse(depth.wrapping_add(1));
    below.rotate_left((a % 63) as u32) ^ b ^ c.wrapping_mul(d) ^ e.rotate_right((c % 61) as u32)
}

fn huge_header(req: &Request) -> Action {
    let verdict = match req.set_header("x-huge", &vec![b'a'; MIB]) {
        Ok(()) => "accepted".to_string(),
        Err(e) => format!("refused: {}", error_text(&e)),
    };
    report(req, "x-attack-result", &verdict);
    Action::Continue
}

fn many_headers(req: &Request) -> Action {
    // Claims its field before the flood, or the report itself would be
    // refused once the message reaches the host's cap on header fields.
    report(req, "x-attack-result", "pending");
    let (mut accepted, mut refused) = (0u32, 0u32);
    for i in 0..FLOOD {
        match req.set_header(&format!("x-many-{i}"), b"v") {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    report(
        req,
        "x-attack-result",
        &format!("accepted {accepted} refused {refused}"),
    );
    Action::Continue
}

fn hop_by_hop(req: &Request) -> Action {
    let names = [
        "connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "keep-alive",
        "host",
        "content-length",
    ];
    let mut refused = names
        .iter()
        .filter(|n| req.set_header(n, b"evil").is_err())
        .count();
    if req.append_header("host", b"evil").is_err() {
        refused += 1;
    }
    report(
        req,
        "x-attack-result",
        &format!("refused {refused} of {}", names.len() + 1),
    );
    Action::Continue
}

fn invalid_utf8(req: &Request) -> Action {
    // Laundered through black_box so the compiler's check for invalid
    // literals does not stop the build: handing the host a string that is
    // not UTF-8 is the point, and lifting it must trap this call.
    let bytes: &[u8] = black_box(&[0xff, 0xfe, 0xfd]);
    let s = unsafe { std::str::from_utf8_unchecked(bytes) };
    req.set_context("k", s);
    report(req, "x-attack-result", "survived");
    Action::Continue
}

/// Absurd sizes and call counts to every host interface that can refuse
/// without ending the call. `set-context` is not among them: it returns
/// nothing, so the host refuses an oversized key or value, or one entry too
/// many, by trapping; those are the `context-*` attacks instead. The `host`
/// functions return nothing either, so what the host dropped of them shows
/// only in the gateway's log and metrics.
fn absurd_host_calls(req: &Request) -> Action {
    let big = "a".repeat(MIB);

    let message = format!("{}: {}", label(), big);
    for _ in 0..FLOOD {
        host::log(LogLevel::Warn, &message);
    }
    drop(message);

    host::counter_add(&big, &[], 1.0);
    let labels: Vec<(String, String)> = (0..FLOOD)
        .map(|i| (format!("l{i}"), "v".to_string()))
        .collect();
    host::counter_add("hostile_labels", &labels, 1.0);
    drop(labels);
    for i in 0..FLOOD {
        host::counter_add("hostile_distinct", &[("k".to_string(), i.to_string())], 1.0);
    }

    let mut state_refused = 0u32;
    if state::counter_add(&big, 1, 60_000).is_err() {
        state_refused += 1;
    }
    let ops: Vec<CounterOp> = (0..FLOOD)
        .map(|i| CounterOp {
            key: format!("hostile-op-{i}"),
            delta: 1,
            window_ms: 60_000,
        })
        .collect();
    if state::counter_add_many(&ops).is_err() {
        state_refused += 1;
    }
    drop(ops);
    for i in 0..1_000 {
        if state::counter_add(&format!("hostile-{i}"), 1, 60_000).is_err() {
            state_refused += 1;
        }
    }

    let mut crypto_false = 0u32;
    let rsa = RsaPublicKey {
        n: big.as_bytes().to_vec(),
        e: vec![1, 0, 1],
    };
    if !crypto::verify_rs256(&rsa, big.as_bytes(), &[0u8; 256]) {
        crypto_false += 1;
    }
    drop(rsa);
    let p256 = P256PublicKey {
        x: big.as_bytes().to_vec(),
        y: big.as_bytes().to_vec(),
    };
    if !crypto::verify_es256(&p256, b"hostile", &[0u8; 64]) {
        crypto_false += 1;
    }

    report(
        req,
        "x-attack-result",
        &format!("state-refused={state_refused} crypto-false={crypto_false}"),
    );
    Action::Continue
}

/// Each breaks one of the limits of `set-context`, which has no error result
/// to refuse with: the host must trap the call. Should it let the call go on
/// instead, the report says what it kept.
fn context_abuse(req: &Request, how: &str) -> Action {
    let big = "a".repeat(MIB);
    match how {
        "context-huge-key" => req.set_context(&big, "v"),
        "context-huge-value" => req.set_context("hostile-big-value", &big),
        _ => {
            for i in 0..FLOOD {
                req.set_context(&format!("hostile-{i}"), "v");
            }
        }
    }
    let kept = match how {
        "context-huge-key" => usize::from(req.get_context(&big).is_some()),
        "context-huge-value" => req.get_context("hostile-big-value").map_or(0, |v| v.len()),
        _ => (0..FLOOD)
            .filter(|i| req.get_context(&format!("hostile-{i}")).is_some())
            .count(),
    };
    report(req, "x-attack-result", &format!("survived, kept {kept}"));
    Action::Continue
}

fn read_file(req: &Request) -> Action {
    let file = match std::fs::read_to_string("/etc/passwd") {
        Ok(s) => format!("read {} bytes", s.len()),
        Err(e) => format!("denied: {}", error_text(&e)),
    };
    let dir = match std::fs::read_dir("/") {
        Ok(entries) => format!("read {} entries", entries.count()),
        Err(e) => format!("denied: {}", error_text(&e)),
    };
    report(req, "x-attack-result", &file);
    report(req, "x-attack-dir", &dir);
    Action::Continue
}

fn env(req: &Request) -> Action {
    let name = header_text(req, "x-env-name").unwrap_or_else(|| "HOME".into());
    // The `_os` variants, because `std::env::vars` panics on a value that is
    // not Unicode and this attack must not fail on the guest's side.
    let found = match std::env::var_os(&name) {
        Some(v) => format!("found: {}", printable(&v.to_string_lossy(), MAX_ERROR)),
        None => "missing".to_string(),
    };
    let count = std::env::vars_os().count();
    report(req, "x-attack-result", &found);
    report(req, "x-attack-env-count", &count.to_string());
    Action::Continue
}

fn connect(req: &Request) -> Action {
    let to = header_text(req, "x-connect-to").unwrap_or_else(|| "127.0.0.1:9".into());
    let verdict = match std::net::TcpStream::connect(to.as_str()) {
        Ok(_) => "connected".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => "denied: unsupported".to_string(),
        Err(e) => format!("denied: {}", error_text(&e)),
    };
    report(req, "x-attack-result", &verdict);
    Action::Continue
}

fn reply(status: u16, headers: Vec<Header>, body: Vec<u8>) -> Action {
    Action::Respond(Reply {
        status,
        headers,
        body,
    })
}

struct Hostile;

impl Guest for Hostile {
    fn configure(config: String) -> Result<(), String> {
        let c: Config = serde_json::from_str(&config).map_err(|e| format!("hostile: {e}"))?;
        if c.configure_spins == Some(true) {
            spin();
        }
        if let Some(text) = c.refuse_with {
            return Err(text);
        }
        if let Some(later) = &c.later_configure {
            let n = state::counter_add("configured", 1, 3_600_000).map_or(1, |c| c.value);
            if n > 1 {
                match later.as_str() {
                    "loop" => spin(),
                    _ => return Err(format!("configure #{n} refuses on purpose")),
                }
            }
        }
        let _ = CONFIG.set(c);
        Ok(())
    }

    fn on_request(req: &Request) -> Action {
        let attack = match header_text(req, "x-attack") {
            // `response-panic` strikes on the way out; the way in is normal.
            None => None,
            Some(a) if a == "response-panic" => None,
            Some(a) => Some(a),
        };
        let Some(attack) = attack else {
            let _ = req.set_header("x-hostile", b"passed");
            return Action::Continue;
        };
        match attack.as_str() {
            "loop" => spin(),
            "memory" => hoard(),
            "recursion" => {
                black_box(recurse(black_box(0)));
                report(req, "x-attack-result", "survived");
                Action::Continue
            }
            "panic" => panic!("hostile panic"),
            "unreachable" => unreachable_instruction(),
            // Blocks in a WASI poll, where no wasm runs to notice the epoch
            // deadline: the host must still end the call on time.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                report(req, "x-attack-result", "survived");
                Action::Continue
            }
            // Counts calls in this instance: a fresh instance answers 1.
            "count" => {
                let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                report(req, "x-attack-result", &format!("call {n}"));
                Action::Continue
            }
            // Keeps 1 MiB more on every call, as a guest whose heap only
            // grows: the host must retire the instance before it traps.
            "leak" => {
                LEAKED.with(|l| l.borrow_mut().push(black_box(vec![1u8; MIB])));
                let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                report(req, "x-attack-result", &format!("call {n}"));
                Action::Continue
            }
            "write-file" => write_file(req),
            "huge-header" => huge_header(req),
            "many-headers" => many_headers(req),
            "hop-by-hop" => hop_by_hop(req),
            "invalid-utf8" => invalid_utf8(req),
            "absurd-host-calls" => absurd_host_calls(req),
            "context-huge-key" | "context-huge-value" | "context-many-keys" => {
                context_abuse(req, &attack)
            }
            "read-file" => read_file(req),
            "env" => env(req),
            "connect" => connect(req),
            "state-bomb" => state_bomb(req),
            "state-one" => state_one(req),
            "metrics-bomb" => metrics_bomb(req),
            "log-flood" => {
                for i in 0..32 {
                    host::log(LogLevel::Info, &format!("flood line {i}"));
                }
                report(req, "x-attack-result", "logged");
                Action::Continue
            }
            "log-forge" => {
                host::log(LogLevel::Warn, FORGED);
                report(req, "x-attack-result", "logged");
                Action::Continue
            }
            "reply-long-names" => reply(
                200,
                (0..100)
                    .map(|i| (format!("x-{i}-{}", "n".repeat(60_000)), b"v".to_vec()))
                    .collect(),
                Vec::new(),
            ),
            "reply-big-head" => reply(
                200,
                (0..100)
                    .map(|i| (format!("x-big-{i}"), vec![b'v'; 8 * 1024]))
                    .collect(),
                Vec::new(),
            ),
            "reply-status" => reply(1000, Vec::new(), Vec::new()),
            "reply-huge-header" => reply(200, vec![("x-huge".into(), vec![b'a'; MIB])], Vec::new()),
            "reply-many-headers" => reply(
                200,
                (0..FLOOD)
                    .map(|i| (format!("x-many-{i}"), b"v".to_vec()))
                    .collect(),
                Vec::new(),
            ),
            "reply-hop-by-hop" => reply(
                200,
                vec![("transfer-encoding".into(), b"chunked".to_vec())],
                Vec::new(),
            ),
            "reply-bad-header-value" => reply(
                200,
                vec![("x-bad".into(), b"a\r\nInjected: yes".to_vec())],
                Vec::new(),
            ),
            "reply-huge-body" => reply(200, Vec::new(), vec![b'a'; 2 * MIB]),
            _ => {
                report(req, "x-attack-result", "unknown attack");
                Action::Continue
            }
        }
    }

    fn on_response(req: &Request, resp: &Response) -> Action {
        let attack = req.header("x-attack");
        if attack.as_deref() == Some(b"response-panic".as_slice()) {
            panic!("hostile panic on response");
        }
        if attack.as_deref() == Some(b"count".as_slice()) {
            // The instance that ran on-request, if it is the same one, has
            // counted one call more than a fresh one would have.
            let n = CALLS.load(Ordering::Relaxed);
            let _ = resp.set_header("x-count-out", n.to_string().as_bytes());
        }
        let _ = resp.set_header("x-hostile-out", b"ok");
        Action::Continue
    }
}

/// A log message that, written raw, would end the filter's line and start
/// one that looks like the gateway's own, then erase the terminal line.
pub const FORGED: &str = "innocent\n2026-11-30T00:00:00.000000Z  INFO gateway::reload: reload #9 applied in 1 ms\r\u{1b}[2K\u{202e}";

/// A window of two days: the longest the host allows.
const TWO_DAYS_MS: u64 = 2 * 24 * 3600 * 1000;

/// Sixteen counters no call has made before, kept two days: a filter
/// trying to fill the store for everyone.
fn state_bomb(req: &Request) -> Action {
    let stamp = host::monotonic_ns();
    let ops: Vec<CounterOp> = (0..16)
        .map(|i| CounterOp {
            key: format!("bomb-{stamp}-{i}-{}", "k".repeat(200)),
            delta: 1,
            window_ms: TWO_DAYS_MS,
        })
        .collect();
    let verdict = match state::counter_add_many(&ops) {
        Ok(_) => "created 16".to_string(),
        Err(e) => format!("refused: {}", error_text(&state_error(&e))),
    };
    report(req, "x-attack-result", &verdict);
    Action::Continue
}

/// One counter no call has made before, for a minute: what a calm filter
/// does for each new client.
fn state_one(req: &Request) -> Action {
    let key = format!("one-{}", host::monotonic_ns());
    let verdict = match state::counter_add(&key, 1, 60_000) {
        Ok(c) => format!("ok {}", c.value),
        Err(e) => format!("refused: {}", error_text(&state_error(&e))),
    };
    report(req, "x-attack-result", &verdict);
    Action::Continue
}

fn state_error(e: &state::StateError) -> String {
    match e {
        state::StateError::Unavailable(m) => format!("unavailable: {m}"),
        state::StateError::Invalid(m) => format!("invalid: {m}"),
    }
}

/// Every metric and label set the per-call caps allow, each label value as
/// long as allowed and new on every request (`x-nonce`): a plugin trying to
/// bloat the scrape.
fn metrics_bomb(req: &Request) -> Action {
    let nonce = header_text(req, "x-nonce").unwrap_or_default();
    for m in 0..32 {
        for i in 0..40 {
            let labels: Vec<(String, String)> = (0..8)
                .map(|j| {
                    let v = format!("{nonce}-{i}-{j}-");
                    let pad = 128 - v.len().min(128);
                    (format!("label_{j}"), format!("{v}{}", "x".repeat(pad)))
                })
                .collect();
            host::histogram_observe(&format!("bomb_{m}_seconds"), &labels, 0.01);
        }
    }
    report(req, "x-attack-result", "recorded");
    Action::Continue
}

/// Calls to `count` this instance has seen.
static CALLS: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static LEAKED: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The wasm `unreachable` instruction, which traps at once; a native build
/// (the workspace's unit tests) aborts instead.
fn unreachable_instruction() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

/// Tries to write a file where a granted directory is mounted read-only.
fn write_file(req: &Request) -> Action {
    let verdict = match std::fs::write("/etc/passwd", b"owned\n") {
        Ok(()) => "written".to_string(),
        Err(e) => format!("denied: {}", error_text(&e)),
    };
    report(req, "x-attack-result", &verdict);
    Action::Continue
}

export!(Hostile);
