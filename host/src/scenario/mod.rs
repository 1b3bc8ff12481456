//! `gateway scenario NAME`: self-contained stories an operator can run on
//! one machine. Each starts its own upstreams on loopback and a gateway
//! (this binary, as a child process) with a configuration written for it,
//! drives load, prints what happened as a short story with a table, and
//! leaves its results (and the gateway's last scrape) under `--out`.
//!
//! - Incidents replayed (`incident`): `black-friday`, `cascade`,
//!   `rate-limit-surge`, `plugin-crash`, `reload-under-load`.
//! - Load shapes driven by a real load generator (`load`): `load-steady`,
//!   `load-ramp`, `load-spike`, `load-soak`, `load-rate-limit`,
//!   `load-breaker`, each with results as JSON and a chart as PNG.

mod chart;
mod harness;
mod incident;
mod load;
mod soak;

use std::path::PathBuf;
use std::time::Duration;

/// What every scenario takes from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// A few seconds instead of the full story: what the tests run.
    pub short: bool,
    /// Overrides the scenario's own length (the soak's 30 minutes, say).
    pub duration: Option<Duration>,
    /// Where results go; created if missing.
    pub out: PathBuf,
    /// The gateway binary to start (by default this one).
    pub gateway: PathBuf,
    /// The folder holding the shipped plugins (`plugins/dist`).
    pub plugins: PathBuf,
    /// Keep the gateway and upstreams running after the story, until
    /// Ctrl-C, so its metrics and admin page can be looked at.
    pub hold: bool,
}

/// Every scenario's name and a line on what it shows, for `--help` and
/// for an unknown name's error.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "black-friday",
        "a slow, failing payments service under client retries: unprotected vs breakers and a retry budget",
    ),
    (
        "cascade",
        "a slow dependency exhausts shared capacity until a healthy route suffers; then limits, breakers and budgets keep it flat",
    ),
    (
        "rate-limit-surge",
        "one client surges; the rate limit holds it while others are served",
    ),
    (
        "plugin-crash",
        "a filter that traps on one route while the other routes serve",
    ),
    (
        "reload-under-load",
        "configuration and plugin swaps under load with zero failed requests",
    ),
    ("load-steady", "a fixed rate for a while"),
    ("load-ramp", "a rate rising step by step"),
    ("load-spike", "a base rate with a sudden spike and back"),
    (
        "load-soak",
        "a fixed rate through the four shipped plugins with reloads and an instance killed and restarted",
    ),
    (
        "load-rate-limit",
        "load over a rate limit: 429s at the limit, the rest served",
    ),
    (
        "load-breaker",
        "load while an instance fails: the breaker opens and errors stop",
    ),
];

/// Runs the scenario `name`; `Err` when it is unknown, cannot start, or its
/// story did not go the way it should (the exit status is then 1).
pub async fn run(name: &str, options: &Options) -> anyhow::Result<()> {
    if !SCENARIOS.iter().any(|(n, _)| *n == name) {
        let known: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        anyhow::bail!("no scenario {name:?}; try one of: {}", known.join(", "))
    }
    std::fs::create_dir_all(&options.out)?;
    if name.starts_with("load-") {
        load::run(name, options).await
    } else {
        incident::run(name, options).await
    }
}
