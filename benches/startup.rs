//! Start-up time with a cold and a warm compile cache: the real `gateway`
//! binary started on a config with one filter of each language's example
//! (built by `make examples` into target/examples), timed from the spawn to
//! the first `200` from `/ready`. Cold: the cache directory is empty, so
//! the plugin is compiled. Warm: it holds the compiled plugin from the run
//! before.
//!
//! Run with `make examples && cargo bench --bench startup`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn ready(admin: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// Starts the gateway on `config` and answers how long it took to be ready.
fn time_start(config: &Path, admin: u16) -> Duration {
    let started = Instant::now();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("GATEWAY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway");
    let deadline = started + Duration::from_secs(120);
    while !ready(admin) {
        assert!(
            Instant::now() < deadline,
            "the gateway did not become ready"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the gateway exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let examples = repo.join("target/examples");
    let scratch = std::env::temp_dir().join(format!("gateway-startup-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    println!("| Filter | Component | Cold cache (compiles) | Warm cache |");
    println!("|---|---|---|---|");
    for (language, plugin) in [
        ("Rust", "server-timing"),
        ("JavaScript", "shard-header"),
        ("Python", "deny-paths"),
    ] {
        let wasm = examples.join(format!("{plugin}.wasm"));
        let Ok(meta) = std::fs::metadata(&wasm) else {
            panic!("{} is missing: run `make examples` first", wasm.display());
        };
        let cache = scratch.join(format!("cache-{plugin}"));
        let (listen, admin) = (free_port(), free_port());
        let config = scratch.join(format!("{plugin}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{listen}\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [plugins]\ndir = \"{}\"\ncompile_cache_dir = \"{}\"\n\
                 [reload]\nwatch = false\n\
                 [upstreams.app]\ninstances = [\"127.0.0.1:1\"]\n\
                 [filters.f]\nplugin = \"{plugin}\"\ninstances = 2\n\
                 [[route]]\nid = \"r\"\nupstream = \"app\"\nfilters = [\"f\"]\n",
                examples.display(),
                cache.display()
            ),
        )
        .unwrap();
        let cold = median(
            (0..RUNS)
                .map(|_| {
                    let _ = std::fs::remove_dir_all(&cache);
                    time_start(&config, admin)
                })
                .collect(),
        );
        let warm = median((0..RUNS).map(|_| time_start(&config, admin)).collect());
        println!(
            "| {language} (`{plugin}`) | {:.1} MB | {:.2} s | {:.3} s |",
            meta.len() as f64 / 1e6,
            cold.as_secs_f64(),
            warm.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
