//! Metrics: OpenTelemetry instruments exported in the Prometheus text format
//! on the admin listener's `/metrics`.
//!
//! Names are given in full (`_total`, `_seconds`) rather than left to the
//! exporter's suffixing, so what is written here is exactly what an operator
//! queries.

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider, UpDownCounter};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Distinct label sets one plugin metric may have; more fold into one
/// `overflow="true"` series so a bad label cannot blow up cardinality.
pub const PLUGIN_SERIES_CAP: usize = 100;
/// Distinct metrics one plugin may create.
pub const PLUGIN_METRICS_CAP: usize = 32;

/// Why a filter call failed, as counted in `gateway_plugin_failures_total`.
pub const FAILURE_REASONS: &[&str] = &[
    "trap",
    "deadline",
    "memory",
    "stack-overflow",
    "invalid-answer",
    "instantiate",
];

pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    meter: Meter,
    pub http_requests: Counter<u64>,
    pub http_duration: Histogram<f64>,
    pub http_in_flight: UpDownCounter<i64>,
    pub plugin_calls: Counter<u64>,
    pub plugin_failures: Counter<u64>,
    pub plugin_duration: Histogram<f64>,
    pub state_calls: Counter<u64>,
    pub upstream_requests: Counter<u64>,
    pub upstream_retries: Counter<u64>,
    pub upstream_unavailable: Counter<u64>,
    pub breaker_transitions: Counter<u64>,
    pub breaker_state: Gauge<i64>,
    pub upstream_healthy: Gauge<i64>,
    pub health_transitions: Counter<u64>,
    pub outlier_ejections: Counter<u64>,
    pub pool_requests: Counter<u64>,
    pub connections_opened: Counter<u64>,
    pub connect_duration: Histogram<f64>,
    pub state_duration: Histogram<f64>,
    pub reloads: Counter<u64>,
    plugin_counters: Mutex<HashMap<String, PluginCounter>>,
}

struct PluginCounter {
    counter: Counter<f64>,
    series: HashSet<Vec<(String, String)>>,
}

/// An attribute value shared without copying the string on every request.
pub fn shared(s: &Arc<str>) -> opentelemetry::Value {
    opentelemetry::Value::String(StringValue::from(s.clone()))
}

impl Metrics {
    pub fn new(duration_buckets: &[f64]) -> anyhow::Result<Metrics> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_units()
            .without_counter_suffixes()
            .without_target_info()
            .scope_info_enabled(false)
            .build()?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("gateway");
        let buckets = duration_buckets.to_vec();
        Ok(Metrics {
            http_requests: meter
                .u64_counter("gateway_http_requests_total")
                .with_description("HTTP requests answered, by route, method and status class")
                .build(),
            http_duration: meter
                .f64_histogram("gateway_http_request_duration_seconds")
                .with_description(
                    "Time from receiving a request to sending the response head, by route",
                )
                .with_boundaries(buckets.clone())
                .build(),
            http_in_flight: meter
                .i64_up_down_counter("gateway_http_requests_in_flight")
                .with_description("Requests being handled right now")
                .build(),
            plugin_calls: meter
                .u64_counter("gateway_plugin_calls_total")
                .with_description("Calls into filter plugins, by filter, plugin and phase")
                .build(),
            plugin_failures: meter
                .u64_counter("gateway_plugin_failures_total")
                .with_description("Filter calls that failed, by filter, plugin, phase and reason")
                .build(),
            plugin_duration: meter
                .f64_histogram("gateway_plugin_call_duration_seconds")
                .with_description("Time spent in one filter call, by filter and phase")
                .with_boundaries(vec![
                    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1,
                ])
                .build(),
            state_calls: meter
                .u64_counter("gateway_state_calls_total")
                .with_description(
                    "Shared-state calls from filters, by backend and result (ok, unavailable, invalid)",
                )
                .build(),
            state_duration: meter
                .f64_histogram("gateway_state_call_duration_seconds")
                .with_description("Time one shared-state call took, by backend")
                .with_boundaries(vec![
                    1e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 2.5e-2, 0.1,
                ])
                .build(),
            upstream_requests: meter
                .u64_counter("gateway_upstream_requests_total")
                .with_description(
                    "Tries sent to upstream instances, by upstream, instance and outcome (status class, connect_error, timeout, reset)",
                )
                .build(),
            upstream_retries: meter
                .u64_counter("gateway_upstream_retries_total")
                .with_description("Retries by route: sent, or refused by the retry budget (budget_exhausted)")
                .build(),
            upstream_unavailable: meter
                .u64_counter("gateway_upstream_unavailable_total")
                .with_description("Requests no instance could take, answered 503, by upstream and reason")
                .build(),
            breaker_transitions: meter
                .u64_counter("gateway_circuit_breaker_transitions_total")
                .with_description("Circuit breaker state changes, by upstream, instance, from, to and reason")
                .build(),
            breaker_state: meter
                .i64_gauge("gateway_circuit_breaker_state")
                .with_description("Circuit breaker state per instance: 0 closed, 1 half-open, 2 open")
                .build(),
            upstream_healthy: meter
                .i64_gauge("gateway_upstream_healthy")
                .with_description("Active health check verdict per instance: 1 healthy, 0 unhealthy")
                .build(),
            health_transitions: meter
                .u64_counter("gateway_upstream_health_transitions_total")
                .with_description("Instances taken out of or brought back into rotation by health checks")
                .build(),
            outlier_ejections: meter
                .u64_counter("gateway_upstream_ejections_total")
                .with_description("Instances ejected by passive outlier detection, by upstream, instance and reason")
                .build(),
            pool_requests: meter
                .u64_counter("gateway_upstream_pool_requests_total")
                .with_description("Answered tries by whether they reused a pooled connection (hit) or a new one (miss)")
                .build(),
            connections_opened: meter
                .u64_counter("gateway_upstream_connections_opened_total")
                .with_description("Connections opened to upstream instances")
                .build(),
            connect_duration: meter
                .f64_histogram("gateway_upstream_connect_duration_seconds")
                .with_description("Time to open one upstream connection, by upstream")
                .with_boundaries(vec![1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0])
                .build(),
            reloads: meter
                .u64_counter("gateway_reloads_total")
                .with_description("Configuration and plugin reloads, by result (success, failure)")
                .build(),
            plugin_counters: Mutex::new(HashMap::new()),
            registry,
            _provider: provider,
            meter,
        })
    }

    /// Creates both reload series at zero, so an alert on failures has a
    /// series to compare against from the start.
    pub fn declare_reloads(&self) {
        self.reloads.add(0, &[KeyValue::new("result", "success")]);
        self.reloads.add(0, &[KeyValue::new("result", "failure")]);
    }

    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.add(1, &[KeyValue::new("result", result)]);
    }

    /// Creates the series a filter will use, at zero, so a scrape shows them
    /// before the first request.
    pub fn declare_filter(&self, filter: &Arc<str>, plugin: &Arc<str>) {
        for phase in ["request", "response"] {
            let base = [
                KeyValue::new("filter", shared(filter)),
                KeyValue::new("plugin", shared(plugin)),
                KeyValue::new("phase", phase),
            ];
            self.plugin_calls.add(0, &base);
            for reason in FAILURE_REASONS {
                let mut attrs = base.to_vec();
                attrs.push(KeyValue::new("reason", *reason));
                self.plugin_failures.add(0, &attrs);
            }
        }
    }

    /// The state backend's series, at zero.
    pub fn declare_state(&self, backend: &'static str) {
        for result in ["ok", "unavailable", "invalid"] {
            self.state_calls.add(
                0,
                &[
                    KeyValue::new("backend", backend),
                    KeyValue::new("result", result),
                ],
            );
        }
    }

    /// A plugin's own counter, `gateway_plugin_<plugin>_<name>_total`,
    /// labelled with the filter that counted it, so two filters of one
    /// plugin (two rate limiters, say) keep apart. Returns false when the
    /// call was refused (bad name, too many metrics).
    pub fn plugin_counter_add(
        &self,
        plugin: &str,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
        value: f64,
    ) -> bool {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !valid(name) || !value.is_finite() || value < 0.0 || labels.len() > 8 {
            return false;
        }
        if labels.iter().any(|(k, v)| {
            !valid(k) || ["plugin", "filter", "overflow"].contains(&k.as_str()) || v.len() > 128
        }) {
            return false;
        }
        let full = format!("gateway_plugin_{}_{}_total", plugin.replace('-', "_"), name);
        let mut counters = self.plugin_counters.lock();
        if !counters.contains_key(&full) {
            let per_plugin = counters
                .keys()
                .filter(|k| k.starts_with(&format!("gateway_plugin_{}_", plugin.replace('-', "_"))))
                .count();
            if per_plugin >= PLUGIN_METRICS_CAP {
                return false;
            }
            let counter = self
                .meter
                .f64_counter(full.clone())
                .with_description(format!("Counted by plugin {plugin}: {name}"))
                .build();
            counters.insert(
                full.clone(),
                PluginCounter {
                    counter,
                    series: HashSet::new(),
                },
            );
        }
        let pc = counters.get_mut(&full).expect("inserted above");
        let mut key: Vec<(String, String)> = labels.to_vec();
        key.push(("filter".to_string(), filter.to_string()));
        key.sort();
        let mut attrs = vec![KeyValue::new("plugin", plugin.to_string())];
        if pc.series.contains(&key) || pc.series.len() < PLUGIN_SERIES_CAP {
            pc.series.insert(key.clone());
            attrs.extend(key.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        } else {
            attrs.push(KeyValue::new("filter", filter.to_string()));
            attrs.push(KeyValue::new("overflow", "true"));
        }
        pc.counter.add(value, &attrs);
        true
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// "2xx", "4xx", ... for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method as a bounded label: the standard ones by name, others as OTHER.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plugin_counters_keep_filters_apart_and_cap_their_series() {
        let m = Metrics::new(&[0.1]).unwrap();
        let l = labels(&[("limit", "a")]);
        assert!(m.plugin_counter_add("ratelimit", "rl-api", "requests", &l, 2.0));
        assert!(m.plugin_counter_add("ratelimit", "rl-admin", "requests", &l, 1.0));
        let out = m.render();
        assert!(
            out.contains(r#"gateway_plugin_ratelimit_requests_total{filter="rl-api",limit="a",plugin="ratelimit"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"gateway_plugin_ratelimit_requests_total{filter="rl-admin",limit="a",plugin="ratelimit"} 1"#),
            "{out}"
        );
        // The gateway's own labels cannot be forged by a plugin.
        for reserved in ["filter", "plugin", "overflow"] {
            let forged = labels(&[(reserved, "x")]);
            assert!(!m.plugin_counter_add("ratelimit", "rl-api", "requests", &forged, 1.0));
        }
        for i in 0..PLUGIN_SERIES_CAP + 5 {
            let l = labels(&[("k", &i.to_string())]);
            assert!(m.plugin_counter_add("p", "f", "many", &l, 1.0));
        }
        assert!(
            m.render().contains(
                r#"gateway_plugin_p_many_total{filter="f",overflow="true",plugin="p"} 5"#
            )
        );
    }
}
