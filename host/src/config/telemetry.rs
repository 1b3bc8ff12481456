//! `[metrics]`, `[access_log]` and `[tracing]`: what the gateway reports.

use super::{ConfigError, Millis, Ratio, Source, refuse};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Bucket bounds, in seconds, of the request duration histograms.
    #[serde(default = "defaults::duration_buckets")]
    pub duration_buckets: Vec<f64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            duration_buckets: defaults::duration_buckets(),
        }
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let b = &self.duration_buckets;
        src.require(!b.is_empty(), &["metrics", "duration_buckets"], || {
            "[metrics] duration_buckets is empty; list bucket bounds in seconds, like [0.01, 0.1, 1.0]".into()
        })?;
        for (i, x) in b.iter().enumerate() {
            let ok = x.is_finite() && *x > 0.0 && (i == 0 || b[i - 1] < *x);
            src.require(
                ok,
                &["metrics", "duration_buckets", &i.to_string()],
                || {
                    "[metrics] duration_buckets must be positive and strictly increasing; check this bound against the one before it".into()
                },
            )?;
        }
        Ok(())
    }
}

/// One JSON line per request; off unless the table is present.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr` or a file (appended to; relative to the config file).
    #[serde(default = "defaults::access_log_path")]
    pub path: String,
}

/// OTLP trace export; off unless the table is present.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL, used as given, like
    /// "http://127.0.0.1:4318/v1/traces".
    pub endpoint: String,
    /// The share of traces kept (0 to 1) when the client's `traceparent`
    /// did not decide already.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: Ratio,
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// How often queued spans are sent.
    #[serde(default = "defaults::export_interval")]
    pub export_interval: Millis,
    #[serde(default = "defaults::export_timeout")]
    pub export_timeout: Millis,
    /// Spans that may wait for export; more are dropped.
    #[serde(default = "defaults::max_queued_spans")]
    pub max_queued_spans: usize,
}

impl TracingConfig {
    pub(super) fn validate(&self, src: &Source<'_>) -> Result<(), ConfigError> {
        let ok = self
            .endpoint
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
        src.require(ok, &["tracing", "endpoint"], || {
            format!(
                "[tracing] endpoint `{}` is not an http:// URL (the exporter speaks plain HTTP); give the collector's traces URL, like \"http://127.0.0.1:4318/v1/traces\"",
                self.endpoint
            )
        })?;
        src.require(
            !self.service_name.is_empty(),
            &["tracing", "service_name"],
            || "[tracing] service_name is empty; name the service, like \"gateway\"".into(),
        )?;
        refuse(
            src,
            &["tracing"],
            &[
                (
                    "export_interval",
                    self.export_interval.0.is_zero(),
                    "would send spans in a busy loop",
                    "use a duration like \"5s\"",
                ),
                (
                    "export_timeout",
                    self.export_timeout.0.is_zero(),
                    "would time out every export at once",
                    "use a duration like \"10s\"",
                ),
                (
                    "max_queued_spans",
                    self.max_queued_spans == 0,
                    "would drop every span",
                    "use a count like 2048",
                ),
            ],
        )
    }
}

mod defaults {
    use super::*;
    pub fn duration_buckets() -> Vec<f64> {
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]
    }
    pub fn access_log_path() -> String {
        "stdout".into()
    }
    pub fn sample_ratio() -> Ratio {
        Ratio::try_from(1.0).expect("1 is a share")
    }
    pub fn service_name() -> String {
        "gateway".into()
    }
    pub fn export_interval() -> Millis {
        Millis(Duration::from_secs(5))
    }
    pub fn export_timeout() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn max_queued_spans() -> usize {
        2048
    }
}
