//! A calm route's latency while other routes' filters attack the gateway:
//! idle, while four clients drive a filter that spins to its 50 ms deadline,
//! and while four clients drive a filter whose new instances loop in
//! `configure` (an instantiation storm). Real gateway binary, real upstream
//! on loopback; prints p50, p99 and max per phase.
//!
//!   cargo bench --bench containment
//!   GATEWAY_BIN=path/to/other/gateway cargo bench --bench containment
//!
//! The second form measures another build (an older commit, say) with the
//! same load.

#[path = "../tests/e2e/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::{Gateway, Upstream, tempdir};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Calm requests measured per phase, and the most time a phase may take.
const SAMPLES: usize = 1_000;
const PHASE_LIMIT: Duration = Duration::from_secs(60);
const ATTACKERS: usize = 4;

fn main() {
    let upstream = Upstream::start("app");
    let up = upstream.addr;
    let gw = Arc::new(Gateway::start_with(tempdir::Dir::new(), |listen, admin| {
        format!(
            r#"{}
[filters.spin]
plugin = "hostile"
timeout = "50ms"

[filters.stuck]
plugin = "hostile"
timeout = "50ms"
instances = 1
config = {{ later_configure = "loop" }}

[filters.calm]
plugin = "probe"
config = {{ name = "calm" }}

[upstreams.app]
instances = ["{up}"]

[[route]]
id = "spin"
path_prefix = "/spin"
upstream = "app"
filters = ["spin"]

[[route]]
id = "stuck"
path_prefix = "/stuck"
upstream = "app"
filters = ["stuck"]

[[route]]
id = "calm"
path_prefix = "/calm"
upstream = "app"
filters = ["calm"]
"#,
            common::preamble(listen, admin)
        )
    }));
    // Warm up, then lose the stuck filter's only instance: every later one
    // loops in `configure`.
    for _ in 0..200 {
        gw.get("/calm", &[]);
    }
    gw.get("/stuck", &[("x-attack", "loop")]);

    println!(
        "calm route latency, {SAMPLES} sequential requests per phase, {ATTACKERS} attacking clients"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase", "p50 ms", "p99 ms", "max ms", "not 200", "attacks"
    );
    for (phase, attack) in [
        ("idle", None),
        ("spin to deadline", Some(("/spin", "loop"))),
        ("instantiation storm", Some(("/stuck", "none"))),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let attackers: Vec<_> = attack
            .into_iter()
            .flat_map(|a| std::iter::repeat_n(a, ATTACKERS))
            .map(|(path, name)| {
                let (gw, stop) = (gw.clone(), stop.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < PHASE_LIMIT {
                        gw.get(path, &[("x-attack", name)]);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Let the attack take hold before measuring.
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let mut took: Vec<Duration> = Vec::with_capacity(SAMPLES);
        // Calm requests answered otherwise than 200 (a 504 when the route
        // timeout passed while the gateway's threads were held).
        let mut failed = 0;
        while took.len() < SAMPLES && started.elapsed() < PHASE_LIMIT {
            let t = Instant::now();
            let r = gw.get("/calm", &[]);
            took.push(t.elapsed());
            if r.status != 200 {
                failed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let attacks: u64 = attackers.into_iter().map(|t| t.join().unwrap()).sum();
        took.sort();
        let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{phase:<22} {:>9.2} {:>9.2} {:>9.2} {failed:>9} {attacks:>9}",
            ms(at(0.50)),
            ms(at(0.99)),
            ms(*took.last().unwrap())
        );
    }
}
