//! `load-soak`: a fixed rate through all four shipped plugins (headers,
//! auth, tenant, ratelimit) to two upstream instances for a long while
//! (30 minutes; `--short` 60 s), with a configuration reload every reload
//! interval that really changes something (a response header's value,
//! checked through the gateway afterwards) and one instance killed and
//! restarted every kill interval. Retries and health checks must hide the
//! kills: any answer that is not 2xx, or no answer, fails the soak. The
//! gateway's resident memory and open files are sampled throughout and
//! must stay flat (see [`Flatness`]).

use super::Options;
use super::chart::{Marker, PALETTE, Panel, Series};
use super::harness::{self, Gateway, GatewayConfig, Target, Upstream, round, share};
use super::load::{self, Event, Measured, Oha, Step};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Requests a second through the whole chain.
const RATE: f64 = 300.0;

/// The warm-up burst: as fast as the gateway answers, for this long.
const WARM_UP_RATE: f64 = f64::INFINITY;
const WARM_UP: Duration = Duration::from_secs(3);

/// The most the last samples may be above the baseline.
const GROWTH_LIMIT: f64 = 0.05;

/// The soak's clocks: full and `--short`.
struct Plan {
    length: Duration,
    step: Duration,
    reload_every: Duration,
    kill_every: Duration,
    /// How long a killed instance stays down.
    down: Duration,
    sample_every: Duration,
}

impl Plan {
    fn new(options: &Options) -> Plan {
        let length = harness::length(
            options,
            Duration::from_secs(60),
            Duration::from_secs(30 * 60),
        );
        if options.short {
            Plan {
                length,
                step: Duration::from_secs(2),
                reload_every: Duration::from_secs(10),
                kill_every: Duration::from_secs(20),
                down: Duration::from_secs(5),
                sample_every: Duration::from_secs(1),
            }
        } else {
            Plan {
                length,
                step: Duration::from_secs(5),
                reload_every: Duration::from_secs(60),
                kill_every: Duration::from_secs(5 * 60),
                down: Duration::from_secs(30),
                sample_every: Duration::from_secs(5),
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "rate": RATE,
            "length_s": self.length.as_secs_f64(),
            "step_s": self.step.as_secs_f64(),
            "reload_every_s": self.reload_every.as_secs_f64(),
            "kill_every_s": self.kill_every.as_secs_f64(),
            "down_s": self.down.as_secs_f64(),
            "sample_every_s": self.sample_every.as_secs_f64(),
        })
    }
}

/// The configuration: config/gateway.toml's chain and demo key for tenant
/// acme, limits far above the soak's rate (no 429 is expected), and an
/// upstream whose retries (GET on connect errors and resets, to an
/// instance not yet tried) and health checks keep a killed instance from
/// reaching the clients. The budget allows a retry for every request, as
/// the moment an instance dies half the requests may need one.
///
/// Two settings differ from config/gateway.toml, both so that what fails
/// the soak is the gateway and not the machine it shares: every filter's
/// deadline is 1 s rather than 50 ms (a soak runs for half an hour beside
/// whatever else the machine does, and a wasm call the kernel leaves
/// unscheduled for 50 ms would fail closed as a 500; deadlines have tests
/// of their own), and the file watcher is off, so each rewrite is
/// reloaded once, by the `POST /admin/reload` the soak sends and checks.
const CONFIG: &str = r#"
[reload]
watch = false

[upstreams.app]
instances = ["{a}", "{b}"]
connect_timeout = "500ms"
# A small idle pool: the open-files count then measures what leaks, not
# how many idle connections the busiest moment of a window left behind.
max_idle_per_instance = 1

[upstreams.app.health]
path = "/healthz"
interval = "500ms"
timeout = "250ms"
unhealthy_threshold = 1
healthy_threshold = 2
required = false

[filters.headers]
plugin = "headers"
failure = "fail-closed"
timeout = "1s"

[filters.headers.config]
add_response = { "x-content-type-options" = "nosniff", "x-soak-config" = "{generation}" }
max_header_count = 64

[filters.auth]
plugin = "auth"
timeout = "1s"

[filters.auth.config]
required_scopes = ["orders"]

[[filters.auth.config.api_keys]]
sha256 = "8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873"
subject = "demo-acme"
tenant = "acme"
scopes = ["orders"]

[filters.tenant]
plugin = "tenant"
timeout = "1s"

[filters.tenant.config.routes.tenants]
path_template = "/tenants/{tenant}/"

[filters.ratelimit]
plugin = "ratelimit"
timeout = "1s"

[[filters.ratelimit.config.limits]]
name = "per-client"
requests = 1000000
window = "1s"

[[filters.ratelimit.config.limits]]
name = "per-tenant"
requests = 100000000
window = "1m"
key = "context:tenant"
when_missing = "skip"

[[route]]
id = "tenants"
path_prefix = "/tenants"
upstream = "app"
filters = ["headers", "auth", "tenant", "ratelimit"]

[route.retry]
attempts = 3
on = ["connect", "reset", "timeout", "502", "503", "504"]
budget_ratio = 1.0
budget_floor_per_second = 50

# Where the soak looks for the header a reload changed, without a key
# (retried alike: a reload may come as an instance dies).
[[route]]
id = "check"
path_prefix = "/check"
upstream = "app"
filters = ["headers"]

[route.retry]
attempts = 3
on = ["connect", "reset", "timeout", "502", "503", "504"]
"#;

/// `demo-key-acme`, whose SHA-256 the configuration holds.
const API_KEY: &str = "demo-key-acme";
const PATH: &str = "/tenants/acme/orders";
const MARKED_HEADER: &str = "x-soak-config";
const CHECK_PATH: &str = "/check";

fn config_body(a: &Upstream, b: &Upstream, generation: &str) -> String {
    CONFIG
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string())
        .replace("{generation}", generation)
}

/// One reading of the gateway process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
}

fn read_process(pid: u32, at: Duration) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample { at, rss_kib, fds })
}

/// Whether a quantity stayed flat: the median of the samples in the last
/// reload interval against the median of those in the interval after the
/// first reload (warm-up: plugins compiled and instantiated, pools and
/// allocator arenas filled, one configuration swapped). Medians, so one
/// sample taken while oha's connections of a step were being replaced
/// does not decide. Only growth fails: a fall is no leak.
#[derive(Debug)]
struct Flatness {
    baseline: f64,
    last: f64,
}

impl Flatness {
    fn of(
        samples: &[Sample],
        baseline: (Duration, Duration),
        last: (Duration, Duration),
        f: fn(&Sample) -> u64,
    ) -> Option<Flatness> {
        let median = |(from, to): (Duration, Duration)| {
            let mut v: Vec<u64> = samples
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .map(f)
                .collect();
            v.sort_unstable();
            (!v.is_empty()).then(|| v[v.len() / 2] as f64)
        };
        Some(Flatness {
            baseline: median(baseline)?,
            last: median(last)?,
        })
    }

    fn growth(&self) -> f64 {
        self.last / self.baseline.max(1.0) - 1.0
    }

    fn to_json(&self) -> Value {
        json!({
            "baseline": self.baseline,
            "last": self.last,
            "growth": round(self.growth(), 4),
            "flat": self.growth() <= GROWTH_LIMIT,
        })
    }
}

pub async fn run(options: &Options, oha: &Oha) -> anyhow::Result<()> {
    let plan = Plan::new(options);
    let a = Upstream::start("a").await?;
    let mut b = Upstream::start("b").await?;
    let generations = ["blue", "green"];
    let gateway = Gateway::start(
        options,
        &GatewayConfig {
            plugins: &options.plugins,
            server: "",
            body: &config_body(&a, &b, generations[0]),
        },
    )
    .await?;
    let target = Target::new("tenants", PATH).header("x-api-key", API_KEY);
    let pid = gateway.pid();
    // Before the clock starts, as many requests as 64 connections can
    // send for a few seconds: each filter's warm instances, the upstream
    // pools and the allocator's arenas grow to what a busy moment needs,
    // which at the soak's own rate would take a random while, and would
    // read as growth against the baseline.
    let warm_up = oha
        .step(&gateway.url(), &target, WARM_UP_RATE, WARM_UP)
        .await?;
    let start = Instant::now();
    let end = start + plan.length;

    let load = async {
        let base = gateway.url();
        let mut steps = Vec::new();
        while Instant::now() + Duration::from_millis(100) < end {
            let at = start.elapsed();
            let length = plan.step.min(end - Instant::now());
            let measured = oha.step(&base, &target, RATE, length).await?;
            steps.push(Step::new(at, "soak", RATE, measured));
        }
        anyhow::Ok(steps)
    };

    // Reloads and kills on their own clocks, in one task so a reload never
    // races a restart for the upstream's port in the configuration.
    let events = async {
        let mut events = Vec::new();
        let mut problems = Vec::new();
        let (mut reloads, mut kills) = (0u32, 0u32);
        let mut next_reload = start + plan.reload_every;
        let mut next_kill = start + plan.kill_every;
        let mut restart_at: Option<Instant> = None;
        loop {
            let next = [Some(next_reload), Some(next_kill), restart_at]
                .into_iter()
                .flatten()
                .min()
                .expect("a reload is always due");
            if next >= end {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            let at = start.elapsed();
            if restart_at == Some(next) {
                restart_at = None;
                match b.restart().await {
                    Ok(()) => events.push(Event {
                        at,
                        what: "b up".into(),
                    }),
                    Err(e) => {
                        problems.push(format!("restarting b at {:.0}s: {e:#}", at.as_secs_f64()))
                    }
                }
            } else if next == next_kill {
                next_kill += plan.kill_every;
                b.stop().await;
                kills += 1;
                events.push(Event {
                    at,
                    what: "kill b".into(),
                });
                restart_at = Some(Instant::now() + plan.down);
            } else {
                next_reload += plan.reload_every;
                let generation = generations[(reloads as usize + 1) % generations.len()];
                match reload(options, &gateway, &a, &b, generation).await {
                    Ok(()) => {
                        reloads += 1;
                        events.push(Event {
                            at,
                            what: "reload".into(),
                        });
                    }
                    Err(e) => problems.push(format!("reload at {:.0}s: {e:#}", at.as_secs_f64())),
                }
            }
        }
        if restart_at.is_some() {
            // The run ended while b was down: bring it back, as its
            // absence is not what the soak measures.
            let _ = b.restart().await;
        }
        (events, problems, reloads, kills)
    };

    let sampler = async {
        let mut samples = Vec::new();
        let mut problems = Vec::new();
        let mut next = start;
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            match read_process(pid, start.elapsed()) {
                Ok(s) => samples.push(s),
                Err(e) => {
                    problems.push(format!("reading the gateway's /proc: {e:#}"));
                    break;
                }
            }
            next += plan.sample_every;
        }
        (samples, problems)
    };

    let (steps, (events, mut problems, reloads, kills), (samples, sample_problems)) =
        tokio::join!(load, events, sampler);
    problems.extend(sample_problems);
    let gathered = Gathered {
        warm_up,
        steps: steps?,
        events,
        problems,
        reloads,
        kills,
        samples,
    };
    report(options, &gateway, oha, &plan, gathered).await
}

/// What the soak's clocks gathered.
struct Gathered {
    warm_up: Measured,
    steps: Vec<Step>,
    events: Vec<Event>,
    problems: Vec<String>,
    reloads: u32,
    kills: u32,
    samples: Vec<Sample>,
}

/// Rewrites the configuration with `generation` as the marked header's
/// value, asks for a reload, and checks through the proxy that answers now
/// carry it: a reload that changed nothing would not count.
async fn reload(
    options: &Options,
    gateway: &Gateway,
    a: &Upstream,
    b: &Upstream,
    generation: &str,
) -> anyhow::Result<()> {
    gateway.rewrite(&GatewayConfig {
        plugins: &options.plugins,
        server: "",
        body: &config_body(a, b, generation),
    })?;
    let (status, body) = gateway.reload().await?;
    if status != 200 {
        anyhow::bail!("POST /admin/reload answered {status}: {body}");
    }
    let answer = gateway.get(CHECK_PATH).await?;
    let seen = answer
        .headers()
        .get(MARKED_HEADER)
        .and_then(|v| v.to_str().ok());
    if answer.status() != 200 || seen != Some(generation) {
        anyhow::bail!(
            "after the reload GET {CHECK_PATH} got {} with {MARKED_HEADER}: {seen:?}, not {generation:?}",
            answer.status()
        );
    }
    Ok(())
}

async fn report(
    options: &Options,
    gateway: &Gateway,
    oha: &Oha,
    plan: &Plan,
    gathered: Gathered,
) -> anyhow::Result<()> {
    let Gathered {
        warm_up,
        steps,
        events,
        mut problems,
        reloads,
        kills,
        samples,
    } = gathered;
    let warm = &warm_up.summary;
    let count: u64 = warm.count + steps.iter().map(|s| s.summary.count).sum::<u64>();
    let unexpected: u64 = warm.count - warm.classes[2]
        + steps
            .iter()
            .map(|s| s.summary.count - s.summary.classes[2])
            .sum::<u64>();
    if unexpected > 0 {
        problems.push(format!(
            "{unexpected} of {count} requests were not answered 2xx"
        ));
    }
    let planned_reloads = planned(plan.length, plan.reload_every);
    let planned_kills = planned(plan.length, plan.kill_every);
    if reloads < planned_reloads {
        problems.push(format!("{reloads} of {planned_reloads} reloads were done"));
    }
    if kills < planned_kills {
        problems.push(format!("{kills} of {planned_kills} kills were done"));
    }
    // Warm-up is the first reload cycle, or the first tenth of a long run
    // (pools, instances and the reload path keep filling for minutes: the
    // 30-minute run grew 2 MiB in its first four, then 0.4 MiB in 26); the
    // baseline is the reload cycle after it.
    let warm_up = plan.reload_every.max(plan.length / 10);
    let baseline = (warm_up, warm_up + plan.reload_every);
    let last = (plan.length.saturating_sub(plan.reload_every), plan.length);
    let rss = Flatness::of(&samples, baseline, last, |s| s.rss_kib);
    let fds = Flatness::of(&samples, baseline, last, |s| s.fds);
    for (what, flat) in [("resident memory", &rss), ("open files", &fds)] {
        match flat {
            Some(f) if f.growth() > GROWTH_LIMIT => problems.push(format!(
                "{what} grew {:.1}% (from {:.0} to {:.0}), over {:.0}%",
                100.0 * f.growth(),
                f.baseline,
                f.last,
                100.0 * GROWTH_LIMIT
            )),
            Some(_) => {}
            None => problems.push(format!(
                "too few samples of {what} for a baseline and a last reading (the soak needs at least three reload intervals)"
            )),
        }
    }
    let definition = format!(
        "flat: the median of the samples in the last {:.0} s is at most {:.0}% above the median of those \
         from {:.0} s to {:.0} s (the baseline, once warm-up is over: the first reload cycle or the first \
         tenth of the run); a fall passes",
        plan.reload_every.as_secs_f64(),
        100.0 * GROWTH_LIMIT,
        baseline.0.as_secs_f64(),
        baseline.1.as_secs_f64()
    );

    let mut panels = load::load_panels(&steps);
    let sample_line = |name: &str, color, f: fn(&Sample) -> f64| Series {
        name: name.into(),
        color,
        points: samples.iter().map(|s| (s.at.as_secs_f64(), f(s))).collect(),
    };
    panels.push(Panel {
        title: "gateway resident memory (VmRSS)".into(),
        y_label: "MiB".into(),
        series: vec![sample_line("RSS", PALETTE[0], |s| {
            s.rss_kib as f64 / 1024.0
        })],
    });
    panels.push(Panel {
        title: "gateway open files (/proc/PID/fd)".into(),
        y_label: "fds".into(),
        series: vec![sample_line("open fds", PALETTE[2], |s| s.fds as f64)],
    });
    let markers: Vec<Marker> = load::markers(&events, |e| match e.what.as_str() {
        "reload" => PALETTE[2],
        "kill b" => PALETTE[1],
        _ => PALETTE[0],
    });
    let end_s = load::end_s(&steps).max(plan.length.as_secs_f64());
    let chart = load::write_chart(
        options,
        "load-soak",
        end_s,
        &panels,
        &markers,
        &mut problems,
    );

    let rss_mib = |f: &Option<Flatness>| f.as_ref().map_or(f64::NAN, |f| f.baseline / 1024.0);
    let story = vec![
        format!(
            "After a {:?} warm-up burst ({:.0} requests a second on 64 connections), {RATE:.0} requests a second \
             through headers, auth, tenant and ratelimit to two instances for {:.0} s.",
            WARM_UP,
            warm.rps,
            plan.length.as_secs_f64()
        ),
        format!(
            "{reloads} reloads (every {:?}, alternating a response header's value), {kills} kills of instance b (every {:?}, down {:?}).",
            plan.reload_every, plan.kill_every, plan.down
        ),
        format!(
            "{unexpected} of {count} requests were not answered 2xx ({:.3}%).",
            100.0 * share(unexpected, count)
        ),
        format!(
            "Resident memory {:.1} MiB at the baseline, {:.1} MiB at the end ({}); open files {} ({}).",
            rss_mib(&rss),
            rss.as_ref().map_or(f64::NAN, |f| f.last / 1024.0),
            rss.as_ref()
                .map_or("-".into(), |f| format!("{:+.1}%", 100.0 * f.growth())),
            fds.as_ref().map_or("-".into(), |f| format!(
                "{:.0} -> {:.0}",
                f.baseline, f.last
            )),
            fds.as_ref()
                .map_or("-".into(), |f| format!("{:+.1}%", 100.0 * f.growth())),
        ),
    ];
    let result = json!({
        "load_generator": oha.version,
        "parameters": plan.to_json(),
        "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
        "events": events.iter().map(Event::to_json).collect::<Vec<_>>(),
        "totals": load::totals(&steps),
        "warm_up": warm.to_json(),
        "unexpected_errors": unexpected,
        "reloads_done": reloads,
        "reloads_planned": planned_reloads,
        "kills_done": kills,
        "kills_planned": planned_kills,
        "samples": samples.iter().map(|s| json!({
            "at_s": round(s.at.as_secs_f64(), 2), "rss_kib": s.rss_kib, "fds": s.fds,
        })).collect::<Vec<_>>(),
        "flatness": {
            "definition": definition,
            "limit": GROWTH_LIMIT,
            "rss_kib": rss.as_ref().map(Flatness::to_json),
            "fds": fds.as_ref().map(Flatness::to_json),
        },
        "chart": chart,
    });
    let told = harness::tell(
        options,
        "load-soak",
        &story,
        &load::step_table(&steps),
        result,
        &problems,
    );
    harness::hold(options, gateway).await?;
    told
}

/// Events at every `every` strictly inside `length`.
fn planned(length: Duration, every: Duration) -> u32 {
    let n = (length.as_secs_f64() / every.as_secs_f64()).ceil() as u32;
    n.saturating_sub(1)
}
