//! Heap allocations per proxied request, in the gateway itself: the
//! gateway runs in this process with each `benches/vs-nginx/*.toml`
//! configuration, and a counting allocator counts every allocation made
//! while a client sends requests through it to an upstream. Client and
//! upstream are blocking sockets reusing fixed buffers, so they allocate
//! nothing per request: what is counted is the gateway's.
//!
//!   cargo bench --bench allocations
//!
//! Prints allocations and bytes allocated per request for each
//! configuration. Counts, unlike times, do not move with the machine's
//! load, so a change to the request path shows here exactly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests counted per configuration, after as many to warm up.
const REQUESTS: u64 = 20_000;
/// The most a configuration's run may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

const UPSTREAM_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\nhello from upstream\n";

/// An upstream answering every request on a kept-alive connection with
/// the same bytes, a thread per connection, reading into a fixed buffer.
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 16 * 1024];
                let mut filled = 0;
                loop {
                    match conn.read(&mut buf[filled..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    // GET requests without bodies: each head ends a request.
                    while let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                        if conn.write_all(UPSTREAM_ANSWER).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `n` GETs on one kept-alive connection, reading each answer into
/// a fixed buffer; panics on any status but 200.
fn drive(gateway: SocketAddr, path: &str, n: u64) {
    let mut conn = TcpStream::connect(gateway).unwrap();
    conn.set_nodelay(true).unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: bench.local\r\nuser-agent: alloc-bench\r\n\r\n");
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..n {
        conn.write_all(request.as_bytes()).unwrap();
        let mut filled = 0;
        let (head_end, body_len) = loop {
            let got = conn.read(&mut buf[filled..]).unwrap();
            assert!(got > 0, "the gateway closed the connection");
            filled += got;
            if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "answered: {head}");
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .expect("a content-length");
                break (end + 4, len);
            }
        };
        while filled < head_end + body_len {
            let got = conn.read(&mut buf[filled..]).unwrap();
            assert!(got > 0, "the gateway closed the connection mid-body");
            filled += got;
        }
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn main() {
    let upstream = start_upstream();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let configs = [
        ("plain", "/"),
        ("headers", "/"),
        ("probes", "/"),
        ("plugins", "/?api_key=bench-key-0123456789"),
    ];
    println!("{:10} {:>12} {:>14}", "config", "allocs/req", "bytes/req");
    for (name, path) in configs {
        let listen = free_port();
        // SAFETY: set before the gateway's threads for this run start;
        // the configuration reads them once, when it is loaded.
        unsafe {
            std::env::set_var("UPSTREAM", upstream.to_string());
            std::env::set_var("LISTEN", listen.to_string());
        }
        let config = root.join(format!("benches/vs-nginx/{name}.toml"));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            if let Err(e) = rt.block_on(gateway::app::run(
                gateway::config::ConfigSource::File(config),
                gateway::listeners::Inherited::default(),
            )) {
                panic!("the gateway stopped: {e:#}");
            }
        });
        let started = Instant::now();
        while TcpStream::connect(listen).is_err() {
            assert!(
                started.elapsed() < RUN_LIMIT,
                "{name}: the gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Warm: instances made, pools filled, series bound.
        drive(listen, path, REQUESTS);
        let (a0, b0) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        drive(listen, path, REQUESTS);
        let (a1, b1) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        assert!(started.elapsed() < RUN_LIMIT, "{name}: over the time limit");
        println!(
            "{name:10} {:>12.1} {:>14.0}",
            (a1 - a0) as f64 / REQUESTS as f64,
            (b1 - b0) as f64 / REQUESTS as f64
        );
    }
}
