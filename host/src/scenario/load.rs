//! The load shapes (`load-steady`, `load-ramp`, `load-spike`,
//! `load-rate-limit`, `load-breaker`; `load-soak` is in `soak.rs`): a real
//! load generator, oha, offers a fixed rate in consecutive steps of a
//! second or more, and each step's JSON summary (rate, statuses, transport
//! errors, latency percentiles) becomes one point of the timeline that
//! `result.json` holds and `chart.png` draws.
//!
//! oha runs open-loop at its rate (`-q`) with `--latency-correction`, so a
//! request that had to wait for a free connection counts its wait: a
//! gateway that falls behind shows as latency, not as a quietly lower rate.

use super::Options;
use super::chart::{self, Marker, PALETTE, Panel, Series};
use super::harness::{self, Gateway, Summary, Table, Target, Upstream, round, share};
use anyhow::{Context, bail};
use plotters::style::RGBColor;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub async fn run(name: &str, options: &Options) -> anyhow::Result<()> {
    let oha = Oha::find(options)?;
    match name {
        "load-steady" => steady(options, &oha).await,
        "load-ramp" => ramp(options, &oha).await,
        "load-spike" => spike(options, &oha).await,
        "load-rate-limit" => rate_limit(options, &oha).await,
        "load-breaker" => breaker(options, &oha).await,
        "load-soak" => super::soak::run(options, &oha).await,
        _ => bail!("no load scenario {name:?}"),
    }
}

// ---------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------

/// oha, as scripts/setup.sh installs it (`target/tools/bin/oha`).
pub struct Oha {
    bin: PathBuf,
    /// `oha 1.16.0`, for the results.
    pub version: String,
}

/// One step of a timeline: what oha offered and what came back.
#[derive(Clone, Debug)]
pub struct Step {
    /// When oha started, from the start of the load.
    pub at: Duration,
    /// How long oha ran, by its own clock.
    pub length: Duration,
    /// The part of the story the step belongs to (`base`, `spike`).
    pub phase: String,
    pub offered_rps: f64,
    pub summary: Summary,
    /// Transport errors by oha's description of them.
    pub errors: BTreeMap<String, u64>,
}

impl Oha {
    /// `$OHA`, else `target/tools/bin/oha` beside the gateway's
    /// `target/release` (or under the working directory), else `oha` on
    /// the PATH.
    pub fn find(options: &Options) -> anyhow::Result<Oha> {
        let beside_gateway = options
            .gateway
            .parent()
            .and_then(Path::parent)
            .map(|target| target.join("tools/bin/oha"));
        let candidates = std::env::var_os("OHA")
            .map(PathBuf::from)
            .into_iter()
            .chain(beside_gateway)
            .chain([PathBuf::from("target/tools/bin/oha"), PathBuf::from("oha")]);
        for bin in candidates {
            if let Ok(out) = Command::new(&bin).arg("--version").output()
                && out.status.success()
            {
                let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return Ok(Oha { bin, version });
            }
        }
        bail!(
            "the load scenarios drive oha, which is not installed: run scripts/setup.sh \
             (it installs oha into target/tools/bin), or name it with OHA=/path/to/oha"
        )
    }

    /// Offers `rate` requests a second of `target` to the gateway at
    /// `base` (`http://127.0.0.1:PORT`) for `length`, and waits for the
    /// answers to requests already sent (`-w`): none is cut off and counted
    /// as an error by the step's end. An infinite `rate` sends as fast as
    /// 64 connections are answered (closed loop, latency as measured).
    pub async fn step(
        &self,
        base: &str,
        target: &Target,
        rate: f64,
        length: Duration,
    ) -> anyhow::Result<Measured> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--no-tui", "--output-format", "json", "-w"])
            .args(["-z", &format!("{}ms", length.as_millis().max(1))])
            // Enough connections for the rate at a few milliseconds each,
            // with room for a slow patch; few enough that the gateway's
            // open files stay near what the soak's baseline saw.
            .args(["-c", &connections(rate).to_string()])
            // A hung request ends as an error, and the step ends.
            .args(["-t", "10s"]);
        if rate.is_finite() {
            cmd.args(["-q", &format!("{rate}"), "--latency-correction"]);
        }
        for (name, value) in &target.headers {
            cmd.args(["-H", &format!("{name}: {value}")]);
        }
        cmd.arg(format!("{base}{}", target.path));
        let limit = length + Duration::from_secs(30);
        let out = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || cmd.output()))
            .await
            .with_context(|| format!("oha ran past {limit:?}"))???;
        if !out.status.success() {
            bail!(
                "oha failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let report: Value = serde_json::from_slice(&out.stdout).context("reading oha's JSON")?;
        Ok(summarise(&report))
    }
}

fn connections(rate: f64) -> usize {
    ((rate / 25.0).ceil() as usize).clamp(8, 64)
}

/// What one oha run measured.
pub struct Measured {
    pub summary: Summary,
    /// Transport errors by oha's description of them.
    pub errors: BTreeMap<String, u64>,
    pub length: Duration,
}

/// oha's JSON report as the harness's `Summary` (the shape the other
/// scenarios report in), the transport errors by kind and how long it ran.
fn summarise(report: &Value) -> Measured {
    let count_map = |key: &str| -> BTreeMap<String, u64> {
        report[key]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let statuses = count_map("statusCodeDistribution");
    let errors = count_map("errorDistribution");
    let mut s = Summary::default();
    for (status, n) in &statuses {
        let Ok(status) = status.parse::<u16>() else {
            continue;
        };
        s.classes[(status / 100).min(5) as usize] += n;
        s.statuses.push((status, *n));
        s.count += n;
    }
    s.statuses.sort();
    s.errors = errors.values().sum();
    s.count += s.errors;
    s.sent = s.count;
    let seconds = report["summary"]["total"].as_f64().unwrap_or(0.0).max(0.0);
    s.rps = s.count as f64 / seconds.max(1e-9);
    // Percentiles in seconds; absent (null) when nothing was answered.
    let ms = |p: &str| {
        report["latencyPercentiles"][p]
            .as_f64()
            .map_or(f64::NAN, |v| v * 1e3)
    };
    s.p50_ms = ms("p50");
    s.p90_ms = ms("p90");
    s.p99_ms = ms("p99");
    s.max_ms = report["summary"]["slowest"]
        .as_f64()
        .map_or(f64::NAN, |v| v * 1e3);
    Measured {
        summary: s,
        errors,
        length: Duration::from_secs_f64(seconds),
    }
}

impl Step {
    pub fn new(at: Duration, phase: &str, offered_rps: f64, measured: Measured) -> Step {
        Step {
            at,
            length: measured.length,
            phase: phase.into(),
            offered_rps,
            summary: measured.summary,
            errors: measured.errors,
        }
    }

    /// Share of requests not answered 2xx (transport errors included).
    pub fn error_rate(&self) -> f64 {
        share(
            self.summary.count - self.summary.classes[2],
            self.summary.count,
        )
    }

    pub fn share_of(&self, status: u16) -> f64 {
        share(self.summary.status(status), self.summary.count)
    }

    pub fn to_json(&self) -> Value {
        let mut v = self.summary.to_json();
        let map = v.as_object_mut().expect("a summary is an object");
        map.insert("at_s".into(), round(self.at.as_secs_f64(), 3).into());
        map.insert("seconds".into(), round(self.length.as_secs_f64(), 3).into());
        map.insert("phase".into(), self.phase.clone().into());
        map.insert("offered_rps".into(), round(self.offered_rps, 1).into());
        map.insert("error_rate".into(), round(self.error_rate(), 5).into());
        map.insert("error_kinds".into(), json!(self.errors));
        v
    }
}

/// The steps added up: counts summed, latency percentiles as the worst
/// step's (one run's percentiles cannot be merged exactly from steps').
pub fn totals(steps: &[Step]) -> Value {
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for step in steps {
        for (status, n) in &step.summary.statuses {
            *statuses.entry(*status).or_default() += n;
        }
        for (kind, n) in &step.errors {
            *errors.entry(kind.clone()).or_default() += n;
        }
    }
    let count: u64 = steps.iter().map(|s| s.summary.count).sum();
    let ok: u64 = steps.iter().map(|s| s.summary.classes[2]).sum();
    let worst = |f: fn(&Summary) -> f64| {
        steps
            .iter()
            .map(|s| f(&s.summary))
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
    };
    json!({
        "requests": count,
        "2xx": ok,
        "not_2xx": count - ok,
        "error_rate": round(share(count - ok, count), 5),
        "statuses": statuses,
        "error_kinds": errors,
        "worst_step_p50_ms": round(worst(|s| s.p50_ms), 2),
        "worst_step_p99_ms": round(worst(|s| s.p99_ms), 2),
    })
}

// ---------------------------------------------------------------------
// A timeline of phases
// ---------------------------------------------------------------------

/// A stretch of the load at one rate: `steps` oha runs of `step` each.
#[derive(Clone, Debug)]
pub struct Phase {
    pub label: &'static str,
    pub rate: f64,
    pub steps: usize,
    pub step: Duration,
}

/// Something that happened while the load ran, for the results and as a
/// line on the chart.
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Duration,
    pub what: String,
}

impl Event {
    pub fn to_json(&self) -> Value {
        json!({ "at_s": round(self.at.as_secs_f64(), 3), "what": self.what })
    }
}

/// Runs the phases in order; `before_step(index, phase)` may act on the
/// world (fail an upstream) and name what it did.
async fn drive(
    oha: &Oha,
    gateway: &Gateway,
    target: &Target,
    phases: &[Phase],
    mut before_step: impl FnMut(usize, &Phase) -> Option<String>,
) -> anyhow::Result<(Vec<Step>, Vec<Event>)> {
    let start = Instant::now();
    let (mut steps, mut events) = (Vec::new(), Vec::new());
    let base = gateway.url();
    let mut index = 0;
    for phase in phases {
        for _ in 0..phase.steps {
            let at = start.elapsed();
            if let Some(what) = before_step(index, phase) {
                events.push(Event { at, what });
            }
            let measured = oha.step(&base, target, phase.rate, phase.step).await?;
            steps.push(Step::new(at, phase.label, phase.rate, measured));
            index += 1;
        }
    }
    Ok((steps, events))
}

/// `length` cut into steps of `step` (at least one).
fn steps_in(length: Duration, step: Duration) -> usize {
    ((length.as_secs_f64() / step.as_secs_f64()).round() as usize).max(1)
}

// ---------------------------------------------------------------------
// Results: the table, the chart, result.json
// ---------------------------------------------------------------------

/// At most this many rows are printed; longer timelines are grouped.
const TABLE_ROWS: usize = 30;

/// The timeline as a table, consecutive steps grouped when there are more
/// than `TABLE_ROWS` (counts summed, p50 the group's median step's, p99
/// the group's worst step's).
pub fn step_table(steps: &[Step]) -> Table {
    let mut table = Table::new(&[
        "t (s)",
        "phase",
        "offered/s",
        "got/s",
        "2xx",
        "429",
        "other",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "not 2xx",
    ]);
    let per_row = steps.len().div_ceil(TABLE_ROWS).max(1);
    for group in steps.chunks(per_row) {
        let first = &group[0];
        let count: u64 = group.iter().map(|s| s.summary.count).sum();
        let ok: u64 = group.iter().map(|s| s.summary.classes[2]).sum();
        let limited: u64 = group.iter().map(|s| s.summary.status(429)).sum();
        let seconds: f64 = group.iter().map(|s| s.length.as_secs_f64()).sum();
        let mut p50: Vec<f64> = group.iter().map(|s| s.summary.p50_ms).collect();
        p50.sort_by(f64::total_cmp);
        let worst =
            |f: fn(&Summary) -> f64| group.iter().map(|s| f(&s.summary)).fold(f64::NAN, f64::max);
        table.row(vec![
            format!("{:.1}", first.at.as_secs_f64()),
            first.phase.clone(),
            format!("{:.0}", first.offered_rps),
            format!("{:.0}", count as f64 / seconds.max(1e-9)),
            ok.to_string(),
            limited.to_string(),
            (count - ok - limited).to_string(),
            ms_cell(p50[p50.len() / 2]),
            ms_cell(worst(|s| s.p90_ms)),
            ms_cell(worst(|s| s.p99_ms)),
            format!("{:.2}%", 100.0 * share(count - ok, count)),
        ]);
    }
    table
}

fn ms_cell(ms: f64) -> String {
    if ms.is_finite() {
        format!("{ms:.2}")
    } else {
        "-".into()
    }
}

/// Each step drawn at its middle.
fn mid(step: &Step) -> f64 {
    (step.at + step.length / 2).as_secs_f64()
}

/// The panels every load chart has: rate, latency, the share not 2xx
/// (with 429s apart when there are any).
pub fn load_panels(steps: &[Step]) -> Vec<Panel> {
    let line = |name: &str, color: RGBColor, f: &dyn Fn(&Step) -> f64| Series {
        name: name.into(),
        color,
        points: steps.iter().map(|s| (mid(s), f(s))).collect(),
    };
    let errors = if steps.iter().any(|s| s.summary.status(429) > 0) {
        vec![
            line("429 %", PALETTE[3], &|s| 100.0 * s.share_of(429)),
            line("other not 2xx %", PALETTE[1], &|s| {
                100.0 * (s.error_rate() - s.share_of(429))
            }),
        ]
    } else {
        vec![line("not 2xx %", PALETTE[1], &|s| 100.0 * s.error_rate())]
    };
    vec![
        Panel {
            title: "rate".into(),
            y_label: "requests/s".into(),
            series: vec![
                line("offered", PALETTE[4], &|s| s.offered_rps),
                line("answered", PALETTE[0], &|s| s.summary.rps),
            ],
        },
        Panel {
            title: "latency (oha, corrected for coordinated omission)".into(),
            y_label: "ms".into(),
            series: vec![
                line("p50", PALETTE[0], &|s| s.summary.p50_ms),
                line("p90", PALETTE[2], &|s| s.summary.p90_ms),
                line("p99", PALETTE[1], &|s| s.summary.p99_ms),
            ],
        },
        Panel {
            title: "errors".into(),
            y_label: "% of requests".into(),
            series: errors,
        },
    ]
}

pub fn markers(events: &[Event], color: impl Fn(&Event) -> RGBColor) -> Vec<Marker> {
    events
        .iter()
        .map(|e| Marker {
            at_s: e.at.as_secs_f64(),
            label: e.what.clone(),
            color: color(e),
        })
        .collect()
}

/// The end of the time axis: the last step's end.
pub fn end_s(steps: &[Step]) -> f64 {
    steps
        .last()
        .map_or(1.0, |s| (s.at + s.length).as_secs_f64())
}

/// Draws `<out>/chart.png`; a chart that cannot be drawn is reported, and
/// the story's verdict stands on its numbers alone.
pub fn write_chart(
    options: &Options,
    title: &str,
    end_s: f64,
    panels: &[Panel],
    markers: &[Marker],
    problems: &mut Vec<String>,
) -> Value {
    let path = options.out.join("chart.png");
    match chart::draw(&path, title, end_s, panels, markers) {
        Ok(()) => path.display().to_string().into(),
        Err(e) => {
            problems.push(format!("no chart: {e:#}"));
            Value::Null
        }
    }
}

/// The story told, the chart drawn and `result.json` written; under
/// `--hold` the gateway keeps serving until Ctrl-C.
#[allow(clippy::too_many_arguments)]
async fn finish(
    options: &Options,
    name: &str,
    gateway: &Gateway,
    oha: &Oha,
    story: Vec<String>,
    parameters: Value,
    steps: &[Step],
    events: &[Event],
    extra: Value,
    mut problems: Vec<String>,
) -> anyhow::Result<()> {
    let chart = write_chart(
        options,
        name,
        end_s(steps),
        &load_panels(steps),
        &markers(events, |_| PALETTE[3]),
        &mut problems,
    );
    let mut result = json!({
        "load_generator": oha.version,
        "parameters": parameters,
        "steps": steps.iter().map(Step::to_json).collect::<Vec<_>>(),
        "events": events.iter().map(Event::to_json).collect::<Vec<_>>(),
        "totals": totals(steps),
        "chart": chart,
    });
    if let (Some(map), Value::Object(extra)) = (result.as_object_mut(), extra) {
        map.extend(extra);
    }
    let told = harness::tell(options, name, &story, &step_table(steps), result, &problems);
    harness::hold(options, gateway).await?;
    told
}

// ---------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------

/// One upstream instance behind a plain route, no filters: what the shape
/// of the load alone does.
const PLAIN: &str = r#"
[upstreams.app]
instances = ["{a}"]

[[route]]
id = "app"
path_prefix = "/"
upstream = "app"
"#;

async fn plain_gateway(options: &Options) -> anyhow::Result<(Gateway, Upstream)> {
    let upstream = Upstream::start("app").await?;
    let body = PLAIN.replace("{a}", &upstream.addr.to_string());
    let gateway = Gateway::start_plain(options, &body).await?;
    Ok((gateway, upstream))
}

fn phases_json(phases: &[Phase]) -> Value {
    phases
        .iter()
        .map(|p| {
            json!({
                "phase": p.label,
                "rate": p.rate,
                "steps": p.steps,
                "step_s": p.step.as_secs_f64(),
            })
        })
        .collect()
}

/// Problems common to every shape: steps that did not get near their
/// rate, transport errors.
fn delivery_problems(steps: &[Step], problems: &mut Vec<String>) {
    for s in steps {
        if s.summary.rps < 0.8 * s.offered_rps {
            problems.push(format!(
                "the step at {:.1}s answered {:.0}/s of {:.0}/s offered",
                s.at.as_secs_f64(),
                s.summary.rps,
                s.offered_rps
            ));
        }
    }
}

async fn steady(options: &Options, oha: &Oha) -> anyhow::Result<()> {
    let rate = 500.0;
    let step = if options.short {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let length = harness::length(options, Duration::from_secs(6), Duration::from_secs(60));
    let phases = [Phase {
        label: "steady",
        rate,
        steps: steps_in(length, step),
        step,
    }];
    let (gateway, _upstream) = plain_gateway(options).await?;
    let (steps, events) = drive(oha, &gateway, &Target::new("app", "/"), &phases, |_, _| {
        None
    })
    .await?;
    let mut problems = Vec::new();
    delivery_problems(&steps, &mut problems);
    let not_ok: u64 = steps
        .iter()
        .map(|s| s.summary.count - s.summary.classes[2])
        .sum();
    if not_ok > 0 {
        problems.push(format!("{not_ok} requests were not answered 2xx"));
    }
    let p99: Vec<f64> = steps.iter().map(|s| s.summary.p99_ms).collect();
    let story = vec![
        format!(
            "{rate:.0} requests a second through one route to one upstream for {:.0} s, in steps of {:?}.",
            length.as_secs_f64(),
            step
        ),
        format!(
            "p99 stayed between {:.2} and {:.2} ms.",
            p99.iter().copied().fold(f64::INFINITY, f64::min),
            p99.iter().copied().fold(0.0, f64::max)
        ),
    ];
    finish(
        options,
        "load-steady",
        &gateway,
        oha,
        story,
        json!({ "rate": rate, "length_s": length.as_secs_f64(), "phases": phases_json(&phases) }),
        &steps,
        &events,
        json!({}),
        problems,
    )
    .await
}

async fn ramp(options: &Options, oha: &Oha) -> anyhow::Result<()> {
    let (from, to, count) = if options.short {
        (200.0, 2000.0, 5)
    } else {
        (200.0, 2000.0, 10)
    };
    let length = harness::length(options, Duration::from_secs(5), Duration::from_secs(60));
    let step = length / count as u32;
    let phases: Vec<Phase> = (0..count)
        .map(|i| Phase {
            label: "ramp",
            rate: from + (to - from) * i as f64 / (count - 1) as f64,
            steps: 1,
            step,
        })
        .collect();
    let (gateway, _upstream) = plain_gateway(options).await?;
    let (steps, events) = drive(oha, &gateway, &Target::new("app", "/"), &phases, |i, p| {
        Some(format!("{:.0}/s", p.rate)).filter(|_| i > 0)
    })
    .await?;
    let mut problems = Vec::new();
    delivery_problems(&steps, &mut problems);
    let (first, last) = (&steps[0], &steps[steps.len() - 1]);
    let story = vec![
        format!(
            "The rate rises from {from:.0} to {to:.0} requests a second in {count} steps of {step:?}."
        ),
        format!(
            "p99 went from {:.2} ms at {:.0}/s to {:.2} ms at {:.0}/s; {:.2}% of the requests were not answered 2xx.",
            first.summary.p99_ms,
            first.offered_rps,
            last.summary.p99_ms,
            last.offered_rps,
            100.0
                * share(
                    steps
                        .iter()
                        .map(|s| s.summary.count - s.summary.classes[2])
                        .sum(),
                    steps.iter().map(|s| s.summary.count).sum()
                )
        ),
    ];
    finish(
        options,
        "load-ramp",
        &gateway,
        oha,
        story,
        json!({ "from_rps": from, "to_rps": to, "phases": phases_json(&phases) }),
        &steps,
        &events,
        json!({}),
        problems,
    )
    .await
}

async fn spike(options: &Options, oha: &Oha) -> anyhow::Result<()> {
    let (base, factor) = (200.0, 10.0);
    let step = Duration::from_secs(1);
    let (before, during, after) = if options.short {
        (3, 2, 3)
    } else {
        (20, 5, 35)
    };
    let phases = [
        Phase {
            label: "base",
            rate: base,
            steps: before,
            step,
        },
        Phase {
            label: "spike",
            rate: base * factor,
            steps: during,
            step,
        },
        Phase {
            label: "after",
            rate: base,
            steps: after,
            step,
        },
    ];
    let (gateway, _upstream) = plain_gateway(options).await?;
    let (steps, events) = drive(oha, &gateway, &Target::new("app", "/"), &phases, |i, _| {
        if i == before {
            Some(format!("spike x{factor:.0}"))
        } else if i == before + during {
            Some("back to base".into())
        } else {
            None
        }
    })
    .await?;
    let mut problems = Vec::new();
    delivery_problems(&steps, &mut problems);
    let p99 = |label: &str| {
        steps
            .iter()
            .filter(|s| s.phase == label)
            .map(|s| s.summary.p99_ms)
            .fold(0.0, f64::max)
    };
    let settled = steps.last().map_or(f64::NAN, |s| s.summary.p99_ms);
    let story = vec![
        format!(
            "{base:.0} requests a second, then {:.0} for {during} s, then {base:.0} again.",
            base * factor
        ),
        format!(
            "Worst step p99: {:.2} ms before, {:.2} ms during the spike, {:.2} ms after; the last step's p99 is {settled:.2} ms.",
            p99("base"),
            p99("spike"),
            p99("after")
        ),
    ];
    finish(
        options,
        "load-spike",
        &gateway,
        oha,
        story,
        json!({ "base_rps": base, "spike_factor": factor, "phases": phases_json(&phases) }),
        &steps,
        &events,
        json!({
            "worst_p99_ms": { "base": round(p99("base"), 2), "spike": round(p99("spike"), 2), "after": round(p99("after"), 2) },
        }),
        problems,
    )
    .await
}

/// The shipped ratelimit plugin with one fixed-window limit per client:
/// a fixed window lets exactly `requests` through per window whatever
/// came before, so the expected share refused is (offered − limit) /
/// offered (a sliding window also weighs in the previous window, where
/// refused requests counted too).
const RATE_LIMITED: &str = r#"
[upstreams.app]
instances = ["{a}"]

[filters.ratelimit]
plugin = "ratelimit"

[[filters.ratelimit.config.limits]]
name = "per-client"
requests = {limit}
window = "1s"
algorithm = "fixed"

[[route]]
id = "app"
path_prefix = "/"
upstream = "app"
filters = ["ratelimit"]
"#;

async fn rate_limit(options: &Options, oha: &Oha) -> anyhow::Result<()> {
    let (offered, limit) = (400.0, 150u32);
    let step = Duration::from_secs(1);
    let length = harness::length(options, Duration::from_secs(5), Duration::from_secs(30));
    let phases = [Phase {
        label: "over limit",
        rate: offered,
        steps: steps_in(length, step),
        step,
    }];
    let upstream = Upstream::start("app").await?;
    let body = RATE_LIMITED
        .replace("{a}", &upstream.addr.to_string())
        .replace("{limit}", &limit.to_string());
    let gateway = Gateway::start_plain(options, &body).await?;
    let (steps, events) = drive(oha, &gateway, &Target::new("app", "/"), &phases, |_, _| {
        None
    })
    .await?;
    let mut problems = Vec::new();
    delivery_problems(&steps, &mut problems);
    let count: u64 = steps.iter().map(|s| s.summary.count).sum();
    let limited: u64 = steps.iter().map(|s| s.summary.status(429)).sum();
    let ok: u64 = steps.iter().map(|s| s.summary.classes[2]).sum();
    let other = count - limited - ok;
    let expected = (offered - f64::from(limit)) / offered;
    let observed = share(limited, count);
    // oha's own pace wobbles around its rate, and a step's first window
    // starts with the first request: a few points either way.
    let tolerance = 0.05;
    if (observed - expected).abs() > tolerance {
        problems.push(format!(
            "{:.1}% were refused with 429, expected {:.1}% ± {:.0} points",
            100.0 * observed,
            100.0 * expected,
            100.0 * tolerance
        ));
    }
    if other > 0 {
        problems.push(format!("{other} answers were neither 2xx nor 429"));
    }
    let story = vec![
        format!(
            "One client offers {offered:.0} requests a second against a limit of {limit} a second (fixed window)."
        ),
        format!(
            "{:.1}% were refused with 429 (expected (offered − limit) / offered = {:.1}%), {:.0}/s served, {other} other answers.",
            100.0 * observed,
            100.0 * expected,
            ok as f64 / steps.iter().map(|s| s.length.as_secs_f64()).sum::<f64>()
        ),
    ];
    finish(
        options,
        "load-rate-limit",
        &gateway,
        oha,
        story,
        json!({ "offered_rps": offered, "limit_per_s": limit, "phases": phases_json(&phases) }),
        &steps,
        &events,
        json!({
            "rejected_share": round(observed, 4),
            "expected_rejected_share": round(expected, 4),
            "tolerance": tolerance,
        }),
        problems,
    )
    .await
}

/// Two instances, no retries (so a failing instance's answers reach the
/// clients until its breaker opens). The breaker trips on its failure
/// rate over a short window rather than on a few failures in a row, so
/// the failures show for a moment before it opens.
const BREAKER: &str = r#"
[upstreams.app]
instances = ["{a}", "{b}"]

[upstreams.app.breaker]
consecutive_failures = 0
failure_rate = 0.5
window = "2s"
min_requests = 20
cool_down = "5s"
max_cool_down = "60s"

[[route]]
id = "app"
path_prefix = "/"
upstream = "app"
"#;

async fn breaker(options: &Options, oha: &Oha) -> anyhow::Result<()> {
    let rate = 400.0;
    let step = Duration::from_secs(1);
    let (healthy, failing) = if options.short { (3, 7) } else { (20, 40) };
    let phases = [
        Phase {
            label: "healthy",
            rate,
            steps: healthy,
            step,
        },
        Phase {
            label: "b failing",
            rate,
            steps: failing,
            step,
        },
    ];
    let a = Upstream::start("a").await?;
    let b = Upstream::start("b").await?;
    let body = BREAKER
        .replace("{a}", &a.addr.to_string())
        .replace("{b}", &b.addr.to_string());
    let gateway = Gateway::start_plain(options, &body).await?;
    let (steps, events) = drive(oha, &gateway, &Target::new("app", "/"), &phases, |i, _| {
        (i == healthy).then(|| {
            b.set_failures(1.0, 503);
            "b fails every request".to_string()
        })
    })
    .await?;
    let mut problems = Vec::new();
    delivery_problems(&steps, &mut problems);
    let worst = steps[healthy..]
        .iter()
        .map(Step::error_rate)
        .fold(0.0, f64::max);
    let tail: Vec<f64> = steps[steps.len() - 2..]
        .iter()
        .map(Step::error_rate)
        .collect();
    let tail_rate = tail.iter().sum::<f64>() / tail.len() as f64;
    let trips = gateway.scrape().await.ok().and_then(|m| {
        m.value(
            "gateway_circuit_breaker_transitions_total",
            &[("to", "open")],
        )
    });
    if worst < 0.05 {
        problems.push(format!(
            "the failing instance's errors never reached the clients (worst step {:.2}%)",
            100.0 * worst
        ));
    }
    // Half-open probes may still fail one request per cool-down.
    if tail_rate > 0.01 {
        problems.push(format!(
            "errors did not stop: {:.2}% in the last steps",
            100.0 * tail_rate
        ));
    }
    let story = vec![
        format!(
            "{rate:.0} requests a second over two instances; after {healthy} s instance b answers 503 to everything."
        ),
        format!(
            "The worst step after that lost {:.1}% of its requests; b's breaker opened{} and the last two steps lost {:.2}%.",
            100.0 * worst,
            trips.map_or(String::new(), |t| format!(" ({t:.0} times)")),
            100.0 * tail_rate
        ),
        format!(
            "b received {} requests and failed {} of them.",
            b.received(),
            b.failed()
        ),
    ];
    finish(
        options,
        "load-breaker",
        &gateway,
        oha,
        story,
        json!({ "rate": rate, "phases": phases_json(&phases) }),
        &steps,
        &events,
        json!({
            "worst_error_rate_after_failure": round(worst, 5),
            "final_error_rate": round(tail_rate, 5),
            "breaker_opened": trips,
            "b_received": b.received(),
            "b_failed": b.failed(),
        }),
        problems,
    )
    .await
}
