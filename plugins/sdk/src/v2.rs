//! Filters for `gateway:filter@0.2.0` (the WIT in `wit-0.2/`): bodies,
//! callouts, values in `kv`, and metrics declared once and recorded by
//! handle. The shape is the 0.1 one: a [`Filter`] trait whose phases default
//! to letting the request go on, and [`export_filter!`](crate::v2::export_filter).
//!
//! ```no_run
//! use filter_sdk::v2::{self, Action, BodyLimit, Filter, Metric, Needs, Request, Response};
//!
//! struct BodySize {
//!     large: Metric,
//! }
//!
//! impl Filter for BodySize {
//!     fn configure(_config: &str) -> Result<(Self, Needs), String> {
//!         let large = Metric::counter("large_responses", &[])?;
//!         let needs = Needs::NONE.with_response_body(BodyLimit::pass(64 * 1024));
//!         Ok((BodySize { large }, needs))
//!     }
//!     const REQUEST_PHASE: bool = false;
//!     fn on_response(&mut self, _req: &Request, resp: &Response) -> Action {
//!         if resp.body().is_err() {
//!             self.large.inc(&[]);
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! v2::export_filter!(BodySize);
//! ```
//!
//! A 0.2 filter uses this module only: the crate's top-level `host`,
//! `count`, `Declared::declare`, `respond` and `log!` are 0.1's, and calling
//! one would make the component import the 0.1 interfaces as well. The
//! helpers that touch no interface (`parse_config`, `refusal`,
//! `check_route_ids`, `label_enum!`, `DurationMs`) are re-exported here,
//! and so is `Declared`, whose list a 0.2 filter creates at zero with
//! `Declared::zero`.

/// Bindings generated from `wit-0.2/filter.wit`, for anything the
/// re-exports below leave out.
///
/// The world is included under a name of the SDK's own: wit-bindgen names
/// its exported macros after the world, and 0.1's world is `plugin` too.
#[allow(clippy::all, missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        inline: "package gateway:filter-sdk@0.2.0;
                 world filter-v2 { include gateway:filter/plugin@0.2.0; }",
        path: "wit-0.2",
        world: "filter-v2",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_bindings_v2",
        default_bindings_module: "filter_sdk::v2::bindings",
    });
}

pub use bindings::gateway::filter::callout::{
    self, CalloutError, OutboundRequest, OutboundResponse,
};
pub use bindings::gateway::filter::host::{self, LogLevel, MetricKind};
pub use bindings::gateway::filter::state::{self, StateError};
pub use bindings::gateway::filter::types::{
    Action, BodyError, BodyLimit, ContextError, Header, HeaderError, HeaderStats, HeaderValue,
    Needs, OverLimit, Reply, Request, Response,
};
pub use bindings::gateway::filter::{crypto, kv};

pub use crate::{__export_filter_v2 as export_filter, __log_v2 as log, label_enum};
pub use crate::{
    DECLARE_MAX, Declared, DurationMs, SERIES_CAP, check_route_ids, parse_config, refusal,
};

/// The largest body limit a filter may ask for.
pub const MAX_BODY_LIMIT: u32 = 16 * 1024 * 1024;
/// The largest body of a [`Reply`].
pub const MAX_REPLY_BODY: usize = 1024 * 1024;
/// The longest `kv` key, in bytes.
pub const KV_MAX_KEY: usize = 256;
/// The largest `kv` value, in bytes.
pub const KV_MAX_VALUE: usize = 64 * 1024;
/// The `state` and `kv` calls one filter call may make.
pub const STATE_CALLS_PER_CALL: usize = 16;
/// The callouts one filter call may make.
pub const CALLOUTS_PER_CALL: usize = 8;

/// A request filter for 0.2. The gateway creates instances of the plugin as
/// load requires; each gets its own [`Filter::configure`] before it serves,
/// and then a call per request (and per response) from one request at a
/// time. Anything `on_response` needs from `on_request` goes on the request
/// with `set_context`: the two may run on different instances.
pub trait Filter: Sized + 'static {
    /// Builds the filter from its `[filters.NAME.config]` table, passed as a
    /// JSON object (`{}` when the table is absent), and says which bodies it
    /// reads. An error refuses the load, and its text is shown to the
    /// operator. Metrics are declared here: their handles belong to this
    /// instance.
    fn configure(config: &str) -> Result<(Self, Needs), String>;

    /// Whether the gateway calls [`Filter::on_request`]; as in 0.1, written
    /// to the plugin's `gateway:phases` section.
    const REQUEST_PHASE: bool = true;

    /// Whether the gateway calls [`Filter::on_response`].
    const RESPONSE_PHASE: bool = true;

    /// Called for each request, in the order of the route's chain.
    fn on_request(&mut self, req: &Request) -> Action {
        let _ = req;
        Action::Continue
    }

    /// Called for each response, in the reverse order of the chain, for
    /// every filter whose `on_request` continued.
    fn on_response(&mut self, req: &Request, resp: &Response) -> Action {
        let _ = (req, resp);
        Action::Continue
    }
}

/// The phases byte of the `gateway:phases` section: bit 0 on-request,
/// bit 1 on-response.
pub const fn phases(request: bool, response: bool) -> u8 {
    (request as u8) | ((response as u8) << 1)
}

/// Makes `$filter`, a type implementing [`v2::Filter`](crate::v2::Filter),
/// the plugin's `gateway:filter/filter@0.2.0` export. Once per plugin crate;
/// use it as `filter_sdk::v2::export_filter!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_filter_v2 {
    ($filter:ty) => {
        const _: () = {
            ::std::thread_local! {
                static FILTER: ::std::cell::RefCell<::std::option::Option<$filter>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            fn with<R>(call: impl FnOnce(&mut $filter) -> R) -> R {
                FILTER.with(|cell| match cell.borrow_mut().as_mut() {
                    Some(filter) => call(filter),
                    // The gateway always configures an instance first; a
                    // trap fails only this call, under the filter's policy.
                    None => panic!("called before configure"),
                })
            }

            // Read when the plugin loads, as for 0.1: a plugin without the
            // section gets both calls.
            #[unsafe(link_section = "gateway:phases")]
            #[used]
            static PHASES: [u8; 1] = [$crate::v2::phases(
                <$filter as $crate::v2::Filter>::REQUEST_PHASE,
                <$filter as $crate::v2::Filter>::RESPONSE_PHASE,
            )];

            struct Export;

            impl $crate::v2::bindings::exports::gateway::filter::filter::Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::v2::Needs, ::std::string::String> {
                    $crate::v2::install_panic_hook();
                    let (filter, needs) = <$filter as $crate::v2::Filter>::configure(&config)?;
                    FILTER.with(|cell| *cell.borrow_mut() = Some(filter));
                    Ok(needs)
                }

                fn on_request(req: &$crate::v2::Request) -> $crate::v2::Action {
                    with(|f| $crate::v2::Filter::on_request(f, req))
                }

                fn on_response(
                    req: &$crate::v2::Request,
                    resp: &$crate::v2::Response,
                ) -> $crate::v2::Action {
                    with(|f| $crate::v2::Filter::on_response(f, req, resp))
                }
            }

    $crate::v2::bindings::export_bindings_v2!(Export with_types_in $crate::v2::bindings);
        };
    };
}

/// Writes to the gateway's log at `level`, with `format!` arguments; the
/// message is only built when the filter's `log_level` lets the line
/// through. Use it as `filter_sdk::v2::log!(Debug, ...)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_v2 {
    ($level:ident, $($arg:tt)+) => {
        if $crate::v2::host::log_enabled($crate::v2::LogLevel::$level) {
            $crate::v2::host::log($crate::v2::LogLevel::$level, &::std::format!($($arg)+))
        }
    };
}

/// Sends a panic's message and source location to the gateway's log at
/// `error`, as [`crate::install_panic_hook`] does for 0.1.
/// [`export_filter!`](crate::v2::export_filter) installs it before
/// `configure`.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            host::log(LogLevel::Error, &crate::panic_line(info));
        }))
    });
}

/// An answer in place of the upstream's: `status`, one content type, a body.
pub fn respond(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Action {
    Action::Respond(Reply {
        status,
        headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
        body: body.into(),
    })
}

impl Needs {
    /// No body: both stream past the filter.
    pub const NONE: Needs = Needs {
        request_body: None,
        response_body: None,
    };

    /// These needs, reading the request body under `limit`.
    pub const fn with_request_body(self, limit: BodyLimit) -> Needs {
        Needs {
            request_body: Some(limit),
            ..self
        }
    }

    /// These needs, reading the response body under `limit`.
    pub const fn with_response_body(self, limit: BodyLimit) -> Needs {
        Needs {
            response_body: Some(limit),
            ..self
        }
    }
}

impl BodyLimit {
    /// Up to `max_bytes` buffered; a larger body streams past the filter,
    /// whose `body()` answers [`BodyError::TooLarge`].
    pub const fn pass(max_bytes: u32) -> BodyLimit {
        BodyLimit {
            max_bytes,
            over_limit: OverLimit::Pass,
        }
    }

    /// Up to `max_bytes` buffered; a larger body is answered with `status`
    /// (400..=599).
    pub const fn refuse(max_bytes: u32, status: u16) -> BodyLimit {
        BodyLimit {
            max_bytes,
            over_limit: OverLimit::Refuse(status),
        }
    }
}

impl Request {
    /// The first value of a header as text; `None` when absent or not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of a header joined with `, ` (the list form of
    /// `Cache-Control` or `Vary`); `None` when absent. Values that are not
    /// UTF-8 are left out.
    pub fn header_list(&self, name: &str) -> Option<String> {
        join_values(self.header_all(name))
    }
}

impl Response {
    /// The first value of a header as text; `None` when absent or not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of a header joined with `, `; `None` when absent.
    pub fn header_list(&self, name: &str) -> Option<String> {
        join_values(self.header_all(name))
    }

    /// Every header as (name, value) pairs, in the order of
    /// `header-names`, several values of a name one after the other.
    pub fn headers(&self) -> Vec<Header> {
        let mut out = Vec::new();
        for name in self.header_names() {
            for value in self.header_all(&name) {
                out.push((name.clone(), value));
            }
        }
        out
    }
}

/// The header's values joined as one list, or `None` without any.
fn join_values(values: Vec<Vec<u8>>) -> Option<String> {
    if values.is_empty() {
        return None;
    }
    let text: Vec<&str> = values
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .collect();
    Some(text.join(", "))
}

impl StateError {
    /// `unavailable`, `invalid` or `full`: a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            StateError::Unavailable(_) => "unavailable",
            StateError::Invalid(_) => "invalid",
            StateError::Full(_) => "full",
        }
    }

    /// What the gateway said.
    pub fn message(&self) -> &str {
        match self {
            StateError::Unavailable(m) | StateError::Invalid(m) | StateError::Full(m) => m,
        }
    }
}

impl CalloutError {
    /// The variant's name as a metric label: `not_allowed`,
    /// `invalid_request`, `unavailable`, `failed`, `timeout`,
    /// `response_too_large`, `too_many_calls`.
    pub fn kind(&self) -> &'static str {
        match self {
            CalloutError::NotAllowed(_) => "not_allowed",
            CalloutError::InvalidRequest(_) => "invalid_request",
            CalloutError::Unavailable(_) => "unavailable",
            CalloutError::Failed(_) => "failed",
            CalloutError::Timeout => "timeout",
            CalloutError::ResponseTooLarge => "response_too_large",
            CalloutError::TooManyCalls => "too_many_calls",
        }
    }
}

/// One of the filter's metrics, declared with `host::declare-metric` and
/// recorded by handle. Declare in `configure`: a handle belongs to the
/// instance that declared it, and declaring again on every instance
/// answers the same metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    handle: host::Metric,
}

impl Metric {
    /// Declares `name` of `kind` with these label names (besides `plugin`
    /// and `filter`). The error names the metric and says what is wrong.
    pub fn declare(kind: MetricKind, name: &str, label_names: &[&str]) -> Result<Metric, String> {
        host::declare_metric(kind, name, &owned(label_names))
            .map(|handle| Metric { handle })
            .map_err(|e| format!("metric `{name}`: {e}"))
    }

    /// A counter, exported as `gateway_plugin_<plugin>_<name>_total`.
    /// Without labels its one series is created at zero here, so a scrape
    /// shows it from start-up; see [`Metric::zero`] for labelled series.
    pub fn counter(name: &str, label_names: &[&str]) -> Result<Metric, String> {
        let metric = Metric::declare(MetricKind::Counter, name, label_names)?;
        if label_names.is_empty() {
            metric.record(&[], 0.0);
        }
        Ok(metric)
    }

    /// A gauge, exported as `gateway_plugin_<plugin>_<name>`.
    pub fn gauge(name: &str, label_names: &[&str]) -> Result<Metric, String> {
        Metric::declare(MetricKind::Gauge, name, label_names)
    }

    /// A histogram, exported as `gateway_plugin_<plugin>_<name>` with
    /// buckets by the unit its name ends in (`_seconds`, `_bytes`).
    pub fn histogram(name: &str, label_names: &[&str]) -> Result<Metric, String> {
        Metric::declare(MetricKind::Histogram, name, label_names)
    }

    /// The handle the gateway answered.
    pub fn handle(&self) -> host::Metric {
        self.handle
    }

    /// Adds to a counter, sets a gauge or observes on a histogram; one
    /// value per declared label name, in order.
    pub fn record(&self, label_values: &[&str], value: f64) {
        host::record_metric(self.handle, &owned(label_values), value);
    }

    /// Adds one to a counter.
    pub fn inc(&self, label_values: &[&str]) {
        self.record(label_values, 1.0);
    }

    /// Creates a counter's series at zero for every combination of these
    /// label values (one slice per label, in declared order, the last
    /// varying fastest), at most [`DECLARE_MAX`] of
    /// them; answers how many were left out.
    pub fn zero(&self, label_values: &[&[&str]]) -> usize {
        let (sets, dropped) = label_sets(label_values);
        for set in sets {
            let set: Vec<&str> = set.iter().map(String::as_str).collect();
            self.record(&set, 0.0);
        }
        dropped
    }
}

impl crate::Declared {
    /// Creates every series of the list at zero on the metric `metric`
    /// answers for its counter's name (`None`: the series is skipped), and
    /// logs at debug how many were left out and why: for a 0.2 filter, what
    /// [`Declared::declare`](crate::Declared::declare) does for 0.1. A
    /// series' label values go in the order the list gives them, which must
    /// be the order of the metric's declared label names. Filters that moved
    /// from 0.1 keep their lists, and with them the same series under the
    /// same per-counter budget ([`DECLARE_MAX`]).
    pub fn zero(&self, metric: impl Fn(&str) -> Option<Metric>, why_dropped: &str) {
        for (name, labels) in &self.series {
            if let Some(m) = metric(name) {
                let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
                m.record(&values, 0.0);
            }
        }
        if self.dropped > 0 {
            crate::v2::log!(
                Debug,
                "{} series not declared at zero: {why_dropped}",
                self.dropped
            );
        }
    }
}

/// Every combination of the labels' values, the last varying fastest, up
/// to `DECLARE_MAX`, and how many were left out.
fn label_sets(label_values: &[&[&str]]) -> (Vec<Vec<String>>, usize) {
    let labels: Vec<(&str, &[&str])> = label_values.iter().map(|v| ("", *v)).collect();
    let mut d = crate::Declared::new();
    d.product("", &labels);
    let sets = d
        .series
        .into_iter()
        .map(|(_, set)| set.into_iter().map(|(_, v)| v).collect())
        .collect();
    (sets, d.dropped)
}

fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_name_each_body_with_its_limit() {
        let n = Needs::NONE
            .with_response_body(BodyLimit::pass(4096))
            .with_request_body(BodyLimit::refuse(10, 413));
        let req = n.request_body.unwrap();
        assert_eq!(req.max_bytes, 10);
        assert!(matches!(req.over_limit, OverLimit::Refuse(413)));
        let resp = n.response_body.unwrap();
        assert_eq!(resp.max_bytes, 4096);
        assert!(matches!(resp.over_limit, OverLimit::Pass));
        assert!(Needs::NONE.request_body.is_none() && Needs::NONE.response_body.is_none());
    }

    #[test]
    fn phases_are_one_bit_each() {
        assert_eq!(phases(true, true), 3);
        assert_eq!(phases(true, false), 1);
        assert_eq!(phases(false, true), 2);
    }

    #[test]
    fn label_sets_vary_the_last_label_fastest_up_to_the_budget() {
        let (sets, dropped) = label_sets(&[&["get", "set"], &["unavailable", "full"]]);
        assert_eq!(
            sets,
            [
                ["get", "unavailable"],
                ["get", "full"],
                ["set", "unavailable"],
                ["set", "full"]
            ]
        );
        assert_eq!(dropped, 0);
        let many: Vec<String> = (0..DECLARE_MAX + 3).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (sets, dropped) = label_sets(&[&many]);
        assert_eq!((sets.len(), dropped), (DECLARE_MAX, 3));
        // No labels: the one series.
        assert_eq!(label_sets(&[]).0, [Vec::<String>::new()]);
    }

    #[test]
    fn header_values_join_as_a_list() {
        assert_eq!(join_values(vec![]), None);
        assert_eq!(
            join_values(vec![b"max-age=60".to_vec(), b"public".to_vec()]).as_deref(),
            Some("max-age=60, public")
        );
        assert_eq!(
            join_values(vec![vec![0xff], b"x".to_vec()]).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn errors_name_their_kind() {
        assert_eq!(StateError::Full("quota".into()).kind(), "full");
        assert_eq!(StateError::Unavailable("down".into()).message(), "down");
        assert_eq!(CalloutError::Timeout.kind(), "timeout");
    }

    #[test]
    fn the_wit_is_the_gateways() {
        // The SDK travels without the repository, so it holds a copy; in
        // the repository the copy must be the gateway's own.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let Ok(gateway) = std::fs::read_to_string(dir.join("../../wit/v0.2/filter.wit")) else {
            return;
        };
        assert!(
            include_str!("../wit-0.2/filter.wit") == gateway,
            "copy wit/v0.2/filter.wit to plugins/sdk/wit-0.2/filter.wit"
        );
    }
}
