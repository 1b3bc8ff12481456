//! Several replicas: gateways sharing one limit through a real Redis
//! Cluster (`redis-server --cluster-enabled yes`, made with `redis-cli
//! --cluster create`) behind Debian's HAProxy, through a failover, a
//! drained replica and a killed one; Redis over TLS with a password; and a
//! plugin rolled out replica by replica with scripts/rolling-reload.py.

use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A Redis Cluster on loopback: `masters` primaries, each with `replicas`
/// replicas, its slots spread by `redis-cli --cluster create`; with
/// `secured`, every link (clients, the cluster bus, replication) is TLS
/// under a CA of the test's own and every node wants that password.
struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    secured: Option<String>,
    dir: tempdir::Dir,
}

impl RedisCluster {
    fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, None)
    }

    fn start_with(masters: usize, replicas: usize, secured: Option<&str>) -> RedisCluster {
        let dir = tempdir::Dir::new();
        if secured.is_some() {
            let ca = crate::tls::Ca::new("Redis Cluster test CA");
            ca.peer("redis", &["127.0.0.1"]).write(dir.path(), "redis");
            std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
        }
        let nodes: Vec<(u16, Option<Child>)> = (0..masters * (1 + replicas))
            .map(|_| {
                let port = free_port();
                let mut server = Command::new("redis-server");
                server.args(["--bind", "127.0.0.1"]);
                match secured {
                    None => {
                        server.args(["--port", &port.to_string()]);
                    }
                    Some(password) => {
                        server
                            .args(["--port", "0", "--tls-port", &port.to_string()])
                            .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                            .args(["--tls-auth-clients", "no"])
                            .arg("--tls-cert-file")
                            .arg(dir.path().join("redis.pem"))
                            .arg("--tls-key-file")
                            .arg(dir.path().join("redis.key"))
                            .arg("--tls-ca-cert-file")
                            .arg(dir.path().join("ca.pem"))
                            .args(["--requirepass", password, "--masterauth", password]);
                    }
                }
                let child = server
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-port", &free_port().to_string()])
                    .arg("--cluster-config-file")
                    .arg(dir.path().join(format!("nodes-{port}.conf")))
                    // A primary unreachable for a second is failed over.
                    .args(["--cluster-node-timeout", "1000"])
                    .args(["--save", "", "--appendonly", "no", "--dir"])
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start redis-server (install it with `make setup`)");
                (port, Some(child))
            })
            .collect();
        for (port, _) in &nodes {
            wait_for(&format!("redis-server on {port}"), 10, || {
                TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let cluster = RedisCluster {
            nodes,
            secured: secured.map(String::from),
            dir,
        };
        let out = cluster
            .cli_command()
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for("the cluster to agree and its replicas to sync", 30, || {
            cluster.nodes.iter().all(|(p, _)| {
                cluster
                    .cli(*p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            }) && cluster
                .live_ports()
                .iter()
                .filter(|p| cluster.cli(**p, &["ROLE"]).starts_with("slave"))
                .all(|p| {
                    cluster
                        .cli(*p, &["INFO", "replication"])
                        .contains("master_link_status:up")
                })
        });
        cluster
    }

    /// `redis-cli` with what it needs to reach this cluster.
    fn cli_command(&self) -> Command {
        let mut c = Command::new("redis-cli");
        if let Some(password) = &self.secured {
            c.args(["--tls", "--cacert"])
                .arg(self.dir.path().join("ca.pem"))
                .args(["--no-auth-warning", "-a", password]);
        }
        c
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = self
            .cli_command()
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `[state]` settings reaching this cluster: the seeds, and for a
    /// secured one its CA and the password from `REDIS_TEST_PASSWORD`.
    fn state_settings(&self) -> String {
        let scheme = if self.secured.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("\"{scheme}://127.0.0.1:{p}\""))
            .collect();
        let mut out = format!(
            "backend = \"redis-cluster\"\nnodes = [{}]\n",
            urls.join(", ")
        );
        if self.secured.is_some() {
            out.push_str(&format!(
                "password = \"${{REDIS_TEST_PASSWORD}}\"\nca_file = \"{}\"\n",
                self.dir.path().join("ca.pem").display()
            ));
        }
        out
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// The port of the primary serving the slot of hash tag `tag`, as the
    /// cluster itself says; none while that primary is failing.
    fn owner_of(&self, tag: &str) -> Option<u16> {
        let port = self.live_ports()[0];
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", tag])
            .trim()
            .parse()
            .unwrap();
        let nodes = self.cli(port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().ok();
            }
        }
        None
    }

    fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|(p, _)| *p == port).unwrap();
        let mut child = node.1.take().expect("the node is running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's HAProxy in front of `servers` (proxy and admin address of
/// each): round robin, a `/ready` check on the admin port every 100 ms
/// (down after 2 failures), and connection failures retried on another
/// server, as the README's replica deployment has it.
struct Haproxy {
    addr: SocketAddr,
    child: Child,
    _dir: tempdir::Dir,
}

impl Haproxy {
    fn start(servers: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let dir = tempdir::Dir::new();
        let port = free_port();
        let mut cfg = std::fs::read_to_string(repo().join("deploy/haproxy/haproxy.cfg"))
            .expect("deploy/haproxy/haproxy.cfg");
        // The shipped file's listener and servers, swapped for this test's.
        cfg = cfg.replace("bind :8080", &format!("bind 127.0.0.1:{port}"));
        let shipped: Vec<String> = cfg
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .map(String::from)
            .collect();
        assert!(!shipped.is_empty(), "the shipped haproxy.cfg lists servers");
        for l in &shipped {
            cfg = cfg.replace(&format!("{l}\n"), "");
        }
        for (i, (addr, admin)) in servers.iter().enumerate() {
            cfg.push_str(&format!(
                "    server gw{i} {addr} check port {}\n",
                admin.port()
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let check = Command::new("haproxy")
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run haproxy (install it with `make setup`)");
        assert!(
            check.status.success(),
            "haproxy -c refused the config:\n{}{}\n{cfg}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let h = Haproxy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: dir,
        };
        wait_for("haproxy to send traffic", 10, || get(h.addr, "/x").0 == 200);
        // Every server up: `rise 2` checks 100 ms apart.
        std::thread::sleep(Duration::from_millis(500));
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on a new connection: the status (0 when no answer came) and
/// the `ratelimit-remaining` header, if any.
fn get(addr: SocketAddr, path: &str) -> (u16, Option<u32>) {
    let exchange = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let Ok(answer) = exchange() else {
        return (0, None);
    };
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let remaining = answer
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("ratelimit-remaining: ")
                .map(String::from)
        })
        .and_then(|v| v.trim().parse().ok());
    (status, remaining)
}

/// Statuses of `per_client` GETs from each of `clients` threads at once.
fn load(addr: SocketAddr, clients: usize, per_client: usize) -> Vec<u16> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|_| get(addr, "/x").0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// A gateway counting one global limit in the cluster's state.
fn replica(cluster: &RedisCluster, up: &Upstream, requests: u32, window: &str) -> Gateway {
    let password = cluster.secured.clone().unwrap_or_default();
    Gateway::start_with_env(
        tempdir::Dir::new(),
        &[("REDIS_TEST_PASSWORD", &password)],
        |addr, admin| {
            format!(
                "{}\n[state]\n{}timeout = \"200ms\"\n\n{}",
                preamble(addr, admin),
                cluster.state_settings(),
                limited_route(up, requests, window)
            )
        },
    )
}

/// An upstream, the rate-limit filter with one global limit of `requests`
/// per `window` (refusing when its state is unavailable) and a route
/// through it.
fn limited_route(up: &Upstream, requests: u32, window: &str) -> String {
    format!(
        r#"[upstreams.app]
instances = ["{up}"]

[filters.rl]
plugin = "ratelimit"
timeout = "1s"
[filters.rl.config]
on_state_error = "deny"
[[filters.rl.config.limits]]
name = "global"
requests = {requests}
window = "{window}"
algorithm = "fixed"
key = "route"

[[route]]
id = "api"
path_prefix = "/"
upstream = "app"
filters = ["rl"]
"#,
        up = up.addr
    )
}

fn limited(gw: &Gateway, result: &str) -> f64 {
    metric(
        &gw.metrics(),
        "gateway_plugin_ratelimit_requests_total",
        &[("route", "api"), ("limit", "global"), ("result", result)],
    )
    .unwrap_or(0.0)
}

#[test]
fn three_replicas_on_a_redis_cluster_hold_one_limit_and_ride_out_a_failover() {
    let mut cluster = RedisCluster::start(3, 1);
    let up = Upstream::start("app");
    // One window longer than the test: every admitted request is counted
    // against the same N, whichever replica it reached.
    const N: u32 = 300;
    let gws: Vec<Gateway> = (0..3).map(|_| replica(&cluster, &up, N, "60s")).collect();
    let lb = Haproxy::start(&gws.iter().map(|g| (g.addr, g.admin)).collect::<Vec<_>>());
    let before = up.count();
    // HAProxy's first request, which told the test it was up, counted.
    let used: usize = gws.iter().map(|g| limited(g, "allowed") as usize).sum();

    // 6 clients at once, 900 requests: three times the limit.
    let statuses = load(lb.addr, 6, 150);
    let admitted = count(&statuses, 200);
    let refused = count(&statuses, 429);
    eprintln!(
        "admitted {admitted} of {} (limit {N}, {used} used before), refused {refused}",
        statuses.len()
    );
    assert_eq!(
        admitted + refused,
        statuses.len(),
        "only 200s and 429s: {statuses:?}"
    );
    let error = ((admitted + used) as f64 - f64::from(N)).abs() / f64::from(N);
    assert!(
        error <= 0.02,
        "admitted {admitted} + {used} against a limit of {N}"
    );
    assert_eq!(
        up.count() - before,
        admitted,
        "the upstream saw what was admitted"
    );
    // HAProxy spread the load, and every replica counted in the one limit.
    for (i, gw) in gws.iter().enumerate() {
        let seen = limited(gw, "allowed") + limited(gw, "rejected");
        assert!(seen >= 100.0, "replica {i} saw only {seen} requests");
    }
    let allowed_total: f64 = gws.iter().map(|g| limited(g, "allowed")).sum();
    assert_eq!(allowed_total as usize, admitted + used);
    // All of one filter's keys share a slot: its tag is the filter name.
    let owner = cluster
        .owner_of("rl")
        .expect("a primary serves the tag's slot");
    let keys = cluster.cli(owner, &["--scan", "--pattern", "gateway:{rl}:*"]);
    assert_eq!(
        keys.lines().count(),
        1,
        "one counter, on the tag's owner: {keys}"
    );

    // The primary owning the limit's slot dies mid-load. While its replica
    // takes over, `on_state_error = "deny"` answers 503; then counting
    // resumes on the new primary without a restart.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, seen, addr) = (stop.clone(), seen.clone(), lb.addr);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(40);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let i = match get(addr, "/x") {
                        (503, _) => 0,
                        (429, Some(_)) | (200, Some(_)) => 1,
                        _ => 2,
                    };
                    seen[i].fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let counted_before = seen[1].load(Ordering::Relaxed);
    let killed_at = Instant::now();
    cluster.kill(owner);
    wait_for("a 503 under on_state_error = deny", 15, || {
        seen[0].load(Ordering::Relaxed) > 0
    });
    wait_for("the replica to take over the slot", 30, || {
        cluster.owner_of("rl").is_some_and(|p| p != owner)
    });
    let new_owner = cluster.owner_of("rl").unwrap();
    let counted_at_failover = seen[1].load(Ordering::Relaxed);
    wait_for("counting to resume on the new primary", 30, || {
        seen[1].load(Ordering::Relaxed) > counted_at_failover + 20
    });
    let recovered_after = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let denied = seen[0].load(Ordering::Relaxed);
    eprintln!(
        "failover {owner} -> {new_owner}: {denied} denied (503), counting again {recovered_after:?} after the kill; {counted_before} counted before"
    );
    assert_eq!(
        seen[2].load(Ordering::Relaxed),
        0,
        "every answer was a 503, or a 200/429 with RateLimit headers"
    );
    // Still one limit: the new primary holds the counter (replicated before
    // the kill, or begun anew), and the replicas refuse past it.
    let (status, remaining) = get(lb.addr, "/x");
    assert!(
        matches!(status, 200 | 429) && remaining.is_some(),
        "{status} {remaining:?}"
    );
    let unavailable: f64 = gws
        .iter()
        .map(|g| {
            metric(
                &g.metrics(),
                "gateway_state_calls_total",
                &[("backend", "redis-cluster"), ("result", "unavailable")],
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert!(
        unavailable >= 1.0,
        "the outage was counted as unavailable state"
    );
}

#[test]
fn haproxy_drains_a_stopping_replica_without_a_failure_and_routes_around_a_killed_one() {
    let ups: Vec<Upstream> = (0..3)
        .map(|i| Upstream::start(&format!("app{i}")))
        .collect();
    let mut gws: Vec<Option<Gateway>> = ups
        .iter()
        .map(|up| {
            Some(Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
                format!(
                    "{}\n[upstreams.app]\ninstances = [\"{}\"]\n\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
                    preamble(addr, admin).replace("[server]\n", "[server]\ndrain_delay = \"1s\"\n"),
                    up.addr
                )
            }))
        })
        .collect();
    let servers: Vec<(SocketAddr, SocketAddr)> = gws
        .iter()
        .map(|g| g.as_ref().map(|g| (g.addr, g.admin)).unwrap())
        .collect();
    let lb = Haproxy::start(&servers);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    const CLIENTS: usize = 4;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, failures, answered, addr) =
                (stop.clone(), failures.clone(), answered.clone(), lb.addr);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match get(addr, "/x").0 {
                        200 => answered.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));

    // SIGTERM with drain_delay: /ready fails for a second while requests
    // are still served, HAProxy takes the replica out, and only then does
    // its listener close. No client sees a failure.
    let draining = gws[0].take().unwrap();
    let served_before = ups[0].count();
    draining.signal(15);
    let mut draining = draining;
    let stopped_at = Instant::now();
    wait_for("the drained replica to exit", 15, || {
        matches!(draining.child.try_wait(), Ok(Some(_)))
    });
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "the listener stayed open for drain_delay ({took:?})"
    );
    assert!(
        draining.log().contains("/ready fails for 1s"),
        "{}",
        draining.log()
    );
    let after_drain = failures.load(Ordering::Relaxed);
    assert_eq!(after_drain, 0, "no request failed while a replica drained");
    assert!(
        ups[0].count() > served_before,
        "the draining replica served on meanwhile"
    );
    let drained_total = ups[0].count();

    // SIGKILL: what it had in flight is lost (one request per client at
    // most); HAProxy retries refused connections elsewhere and marks the
    // replica down.
    std::thread::sleep(Duration::from_millis(500));
    let killed = gws[1].take().unwrap();
    drop(killed);
    std::thread::sleep(Duration::from_millis(1000));
    let answered_mid = answered.load(Ordering::Relaxed);
    let served_by_last = ups[2].count();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let lost = failures.load(Ordering::Relaxed);
    eprintln!(
        "answered {}, lost {lost} (after the drain: {after_drain}); the killed replica had {CLIENTS} clients' worth in flight at most",
        answered.load(Ordering::Relaxed)
    );
    assert!(
        lost <= CLIENTS,
        "lost {lost} requests, more than were in flight"
    );
    assert!(
        answered.load(Ordering::Relaxed) > answered_mid,
        "traffic went on"
    );
    assert!(
        ups[2].count() > served_by_last,
        "the last replica took the traffic"
    );
    assert_eq!(
        ups[0].count(),
        drained_total,
        "nothing reached the stopped replica"
    );
    drop(gws);
}

/// Redis over TLS (a CA of the test's own) with a password from the
/// environment: the limit counts there, and a wrong password is an
/// unavailable state, not an open door.
#[test]
fn the_redis_backend_speaks_tls_with_a_password_from_the_environment() {
    let dir = tempdir::Dir::new();
    let ca = crate::tls::Ca::new("Redis test CA");
    ca.server("redis", &["127.0.0.1"])
        .write(dir.path(), "redis");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let port = free_port();
    let password = "s3cret-for-the-redis-test";
    let mut redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .arg("--tls-cert-file")
        .arg(dir.path().join("redis.pem"))
        .arg("--tls-key-file")
        .arg(dir.path().join("redis.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.path().join("ca.pem"))
        .args(["--tls-auth-clients", "no", "--requirepass", password])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    wait_for("redis-server with TLS", 10, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let up = Upstream::start("app");
    let gateway = |env_password: &str| {
        let ca_file = dir.path().join("ca.pem");
        Gateway::start_with_env(
            tempdir::Dir::new(),
            &[("REDIS_TEST_PASSWORD", env_password)],
            |addr, admin| {
                format!(
                    "{}\n[state]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:{port}/0\"\npassword = \"${{REDIS_TEST_PASSWORD}}\"\nca_file = \"{}\"\ntimeout = \"500ms\"\n\n{}",
                    preamble(addr, admin),
                    ca_file.display(),
                    limited_route(&up, 3, "60s")
                )
            },
        )
    };
    let gw = gateway(password);
    let statuses: Vec<u16> = (0..4).map(|_| gw.get("/x", &[]).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", gw.log());
    // The counter is in that Redis, read back over TLS with the password.
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(dir.path().join("ca.pem"))
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", password])
        .args(["--scan", "--pattern", "gateway:rl:*"])
        .output()
        .expect("redis-cli --tls");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let wrong = gateway("not-the-password");
    assert_eq!(wrong.get("/x", &[]).status, 503, "deny on a refused login");
    assert!(wrong.log().contains("state"), "{}", wrong.log());
    let _ = redis.kill();
    let _ = redis.wait();
}

/// A filter pinned to one build of its plugin: another file is refused at
/// start and at reload while the pinned one serves on.
#[test]
fn a_pinned_plugin_refuses_any_other_file_at_start_and_at_reload() {
    let dir = tempdir::Dir::new();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let original = std::fs::read(plugin_dir().join("headers.wasm")).unwrap();
    std::fs::write(plugins.join("hdr.wasm"), &original).unwrap();
    let printed = gateway_command()
        .args(["plugin", "hash"])
        .arg(plugins.join("hdr.wasm"))
        .output()
        .unwrap();
    assert!(printed.status.success());
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    let hash = printed.split_whitespace().next().unwrap().to_string();
    let sha256sum = Command::new("sha256sum")
        .arg(plugins.join("hdr.wasm"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sha256sum.stdout)
            .split_whitespace()
            .next(),
        Some(hash.as_str()),
        "gateway plugin hash prints the file's SHA-256"
    );

    let up = Upstream::start("app");
    let config = |addr: SocketAddr, admin: SocketAddr, plugins: &Path, pin: &str| {
        format!(
            "{}\n[upstreams.app]\ninstances = [\"{}\"]\n\n[filters.hdr]\nplugin = \"hdr\"\nsha256 = \"{pin}\"\n\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"hdr\"]\n",
            preamble_with_plugins(addr, admin, plugins),
            up.addr
        )
    };
    let gw = Gateway::start_with(tempdir::Dir::new(), |a, m| config(a, m, &plugins, &hash));
    assert_eq!(gw.get("/x", &[]).status, 200);

    // Another build of the same plugin (a custom section appended: still a
    // valid component, another hash) lands in the folder.
    let mut tampered = original.clone();
    tampered.extend_from_slice(&[0, 8, 7]);
    tampered.extend_from_slice(b"rollout");
    std::fs::write(plugins.join("hdr.wasm"), &tampered).unwrap();
    let r = gw.admin("POST", "/admin/reload");
    assert_eq!(r.status, 422, "{}", r.body_text());
    assert!(
        r.body_text()
            .contains(&format!("pins plugin `hdr` to SHA-256 {hash}")),
        "{}",
        r.body_text()
    );
    let described: serde_json::Value =
        serde_json::from_str(&gw.admin("GET", "/admin/plugins").body_text()).unwrap();
    let loaded = described["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hdr")
        .unwrap();
    assert_eq!(
        loaded["sha256"],
        hash.as_str(),
        "the pinned version serves on"
    );
    assert_eq!(gw.get("/x", &[]).status, 200);

    // Started on the tampered file, the same config is refused outright,
    // naming the pin's line.
    let check = gateway_command()
        .arg("check")
        .arg("--config")
        .arg({
            let p = dir.path().join("pinned.toml");
            std::fs::write(
                &p,
                config(
                    "127.0.0.1:0".parse().unwrap(),
                    "127.0.0.1:0".parse().unwrap(),
                    &plugins,
                    &hash,
                ),
            )
            .unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("pinned.toml:") && err.contains("it is not loaded"),
        "{err}"
    );

    // Pinning the new hash (and only that) lets it in.
    let new_hash = gateway::plugin::content_hash(&tampered);
    std::fs::write(
        gw.config_path(),
        config(gw.addr, gw.admin, &plugins, &new_hash),
    )
    .unwrap();
    let r = gw.admin("POST", "/admin/reload");
    assert_eq!(r.status, 200, "{}", r.body_text());
    let described: serde_json::Value =
        serde_json::from_str(&gw.admin("GET", "/admin/plugins").body_text()).unwrap();
    assert!(described.to_string().contains(&new_hash));
}

/// scripts/rolling-reload.py: one replica at a time, each confirmed by its
/// `/admin/plugins` before the next; a file one replica refuses stops the
/// rollout there, the rest untouched.
#[test]
fn a_rolling_reload_moves_replicas_one_at_a_time_and_stops_at_a_refusal() {
    let up = Upstream::start("app");
    let dirs: Vec<tempdir::Dir> = (0..3).map(|_| tempdir::Dir::new()).collect();
    let original = std::fs::read(plugin_dir().join("headers.wasm")).unwrap();
    let gws: Vec<Gateway> = dirs
        .iter()
        .map(|d| {
            let plugins = d.path().join("plugins");
            std::fs::create_dir_all(&plugins).unwrap();
            std::fs::write(plugins.join("hdr.wasm"), &original).unwrap();
            Gateway::start_with(tempdir::Dir::new(), |a, m| {
                format!(
                    "{}\n[upstreams.app]\ninstances = [\"{}\"]\n\n[filters.hdr]\nplugin = \"hdr\"\n\n[[route]]\nid = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\nfilters = [\"hdr\"]\n",
                    preamble_with_plugins(a, m, &plugins),
                    up.addr
                )
            })
        })
        .collect();
    let hash_of = |gw: &Gateway| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&gw.admin("GET", "/admin/plugins").body_text()).unwrap();
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "hdr")
            .map(|p| p["sha256"].as_str().unwrap().to_string())
            .unwrap()
    };
    let work = tempdir::Dir::new();
    let rollout = |file: &Path| {
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("scripts/rolling-reload.py")).arg(file);
        for (gw, d) in gws.iter().zip(&dirs) {
            cmd.arg(format!(
                "http://{}={}",
                gw.admin,
                d.path().join("plugins").display()
            ));
        }
        cmd.args(["--timeout", "30"]).output().expect("run python3")
    };

    let mut v2 = original.clone();
    v2.extend_from_slice(&[0, 3, 2]);
    v2.extend_from_slice(b"v2");
    let v2_file: PathBuf = work.path().join("hdr.wasm");
    std::fs::write(&v2_file, &v2).unwrap();
    let out = rollout(&v2_file);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let v2_hash = gateway::plugin::content_hash(&v2);
    for (i, gw) in gws.iter().enumerate() {
        assert_eq!(
            hash_of(gw),
            v2_hash,
            "replica {i} runs the new version:\n{said}"
        );
    }
    assert_eq!(said.matches("now runs").count(), 3, "{said}");

    // A file that is no component: the first replica refuses it and keeps
    // v2; the script stops there and never touches the others' folders.
    std::fs::write(&v2_file, b"\0asm not really").unwrap();
    let out = rollout(&v2_file);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused"), "{said}");
    for (i, gw) in gws.iter().enumerate() {
        assert_eq!(hash_of(gw), v2_hash, "replica {i} still runs v2");
        assert_eq!(gw.get("/x", &[]).status, 200);
    }
    // The refused file is taken back out, so a restart loads v2 too.
    for d in &dirs {
        assert_eq!(
            std::fs::read(d.path().join("plugins/hdr.wasm")).unwrap(),
            v2
        );
    }
}

/// A cluster whose every link is TLS and whose nodes want a password: the
/// replicas reach it with `rediss://` seeds, the test's CA and the password
/// from the environment, and share one limit there.
#[test]
fn replicas_reach_a_redis_cluster_over_tls_with_a_password() {
    let cluster = RedisCluster::start_with(3, 0, Some("cluster-secret-for-the-test"));
    let up = Upstream::start("app");
    let gws: Vec<Gateway> = (0..2).map(|_| replica(&cluster, &up, 5, "60s")).collect();
    let statuses: Vec<u16> = (0..8).map(|i| gws[i % 2].get("/x", &[]).status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "one limit of 5 across both:\n{}",
        gws[0].log()
    );
    let owner = cluster.owner_of("rl").unwrap();
    let keys = cluster.cli(owner, &["--scan", "--pattern", "gateway:{rl}:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    // Without the password the nodes refuse, and `deny` answers 503.
    let mut plain = cluster.state_settings();
    plain = plain.replace("password = \"${REDIS_TEST_PASSWORD}\"\n", "");
    let refused = Gateway::start(&format!(
        "[state]\n{plain}timeout = \"200ms\"\n\n{}",
        limited_route(&up, 5, "60s")
    ));
    assert_eq!(refused.get("/x", &[]).status, 503, "{}", refused.log());
}
