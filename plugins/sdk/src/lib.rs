//! The Rust SDK for gateway filters: the `gateway:filter` bindings, a
//! [`Filter`] trait whose phases default to letting the request go on, and
//! [`export_filter!`], which makes a type the component's `filter` export.
//!
//! ```no_run
//! use filter_sdk::{Action, Filter, Request, export_filter};
//!
//! struct Hello;
//!
//! impl Filter for Hello {
//!     fn configure(_config: &str) -> Result<Self, String> {
//!         Ok(Hello)
//!     }
//!     fn on_request(&mut self, req: &Request) -> Action {
//!         let _ = req.set_header("x-hello", b"world");
//!         Action::Continue
//!     }
//! }
//!
//! export_filter!(Hello);
//! ```
//!
//! The filter's crate is a `cdylib`; `cargo build --release --target
//! wasm32-wasip2` makes `target/wasm32-wasip2/release/NAME.wasm`, which is
//! the plugin. This release profile in the filter's `Cargo.toml` roughly
//! halves its size and makes a panic end the call at once:
//!
//! ```toml
//! [profile.release]
//! opt-level = "s"
//! lto = true
//! codegen-units = 1
//! strip = true
//! panic = "abort"
//! ```
//!
//! `gateway plugin new NAME --lang rust` writes such a project with this
//! crate vendored in it. The crate's version is the WIT package's
//! (`gateway:filter@0.1.0`, in `wit/`); see README.md for depending on it
//! by path, by git or as a copy.
//!
//! A panic's message and location go to the gateway's log (see
//! [`install_panic_hook`]), and so does anything printed. The rest of the
//! crate is what the shipped filters share: reading a JSON configuration,
//! answering, declaring counter series.
//!
//! With the `v2` feature, [`v2`] is the same for `gateway:filter@0.2.0`
//! (its WIT in `wit-0.2/`): bodies, callouts, `kv`, metrics by handle.

/// Bindings generated from `wit/filter.wit` (the crate's own copy), for
/// anything the re-exports below leave out.
#[allow(clippy::all, missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "filter_sdk::bindings",
    });
}

#[cfg(feature = "v2")]
pub mod v2;

pub use bindings::gateway::filter::host::{self, LogLevel};
pub use bindings::gateway::filter::types::{Action, HeaderStats, Reply, Request, Response};
pub use bindings::gateway::filter::{crypto, state};

/// A request filter. The gateway creates instances of the plugin as load
/// requires; each gets its own [`Filter::configure`] before it serves, and
/// then a call per request (and per response) from one request at a time.
pub trait Filter: Sized + 'static {
    /// Builds the filter from its `[filters.NAME.config]` table, passed as a
    /// JSON object (`{}` when the table is absent). An error refuses the
    /// load, and its text is shown to the operator.
    fn configure(config: &str) -> Result<Self, String>;

    /// Whether the gateway calls [`Filter::on_request`]. A filter that
    /// keeps the default method says `false` and saves a call per request.
    const REQUEST_PHASE: bool = true;

    /// Whether the gateway calls [`Filter::on_response`]. A filter that
    /// keeps the default method says `false`: the gateway skips the call,
    /// and when no filter of a route needs the way out it sends the request
    /// upstream without keeping a copy of its head.
    const RESPONSE_PHASE: bool = true;

    /// Called for each request, in the order of the route's chain.
    fn on_request(&mut self, req: &Request) -> Action {
        let _ = req;
        Action::Continue
    }

    /// Called for each response, in the reverse order of the chain, for
    /// every filter whose `on_request` ran.
    fn on_response(&mut self, req: &Request, resp: &Response) -> Action {
        let _ = (req, resp);
        Action::Continue
    }
}

/// Makes `$filter`, a type implementing [`Filter`], the plugin's `filter`
/// export. Once per plugin crate.
#[macro_export]
macro_rules! export_filter {
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

            // The phases the gateway calls, read when the plugin loads:
            // bit 0 on-request, bit 1 on-response. A plugin without this
            // section gets both calls.
            #[unsafe(link_section = "gateway:phases")]
            #[used]
            static PHASES: [u8; 1] = [(<$filter as $crate::Filter>::REQUEST_PHASE as u8)
                | ((<$filter as $crate::Filter>::RESPONSE_PHASE as u8) << 1)];

            struct Export;

            impl $crate::bindings::exports::gateway::filter::filter::Guest for Export {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::install_panic_hook();
                    let filter = <$filter as $crate::Filter>::configure(&config)?;
                    FILTER.with(|cell| *cell.borrow_mut() = Some(filter));
                    Ok(())
                }

                fn on_request(req: &$crate::Request) -> $crate::Action {
                    with(|f| $crate::Filter::on_request(f, req))
                }

                fn on_response(req: &$crate::Request, resp: &$crate::Response) -> $crate::Action {
                    with(|f| $crate::Filter::on_response(f, req, resp))
                }
            }

    $crate::bindings::export_bindings!(Export with_types_in $crate::bindings);
        };
    };
}

/// Sends a panic's message and source location to the gateway's log, at
/// `error`, tagged like every line the filter writes with the filter, the
/// plugin and the request. [`export_filter!`] installs it before
/// `configure`; the call that panicked then fails under the filter's
/// failure policy.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            host::log(LogLevel::Error, &panic_line(info));
        }))
    });
}

/// A panic's log line: its location and message.
fn panic_line(info: &std::panic::PanicHookInfo) -> String {
    let message = info
        .payload_as_str()
        .unwrap_or("(a panic without a message)");
    let at = info
        .location()
        .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    format!("panicked{at}: {message}")
}

/// Writes to the gateway's log at `level`, with `format!` arguments.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)+) => {
        $crate::host::log($crate::LogLevel::$level, &::std::format!($($arg)+))
    };
}

/// Reads a filter's JSON configuration into `T`. A refusal names the
/// setting by its path in the WIT's convention (``at `limits[0].rate`: ``),
/// which the gateway turns into the line and column of that setting in
/// its TOML; the message follows, starting with `plugin:`.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    plugin: &str,
    config: &str,
) -> Result<T, String> {
    let mut json = serde_json::Deserializer::from_str(config);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json ends its message with a position in the JSON the
        // gateway made, which the user never saw.
        let message = inner.to_string();
        let suffix = format!(" at line {} column {}", inner.line(), inner.column());
        let message = message.strip_suffix(&suffix).unwrap_or(&message);
        refusal(&path, &format!("{plugin}: {message}"))
    })
}

/// A `configure` error about the setting at `path` (`limits[0].rate`; `.`
/// or empty for the settings as a whole), in the form the gateway points
/// at the setting's line and column.
pub fn refusal(path: &str, message: &str) -> String {
    if path.is_empty() || path == "." {
        message.to_string()
    } else {
        format!("at `{path}`: {message}")
    }
}

/// Reads a duration written with its unit: `250ms`, `30s`, `5m`, `1h`,
/// `2d`; `None` for anything else or past `u64` milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.parse::<u64>().ok()?.checked_mul(unit)
}

/// A duration setting in milliseconds, written in the TOML as a number of
/// seconds (`30`) or a string with its unit (`"500ms"`, `"30s"`, `"5m"`,
/// `"1h"`, `"1d"`). Bounds are the filter's to check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationMs(pub u64);

impl<'de> serde::Deserialize<'de> for DurationMs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationMs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a duration: seconds as a whole number, or a string such as \"500ms\", \"30s\", \"5m\", \"1h\", \"1d\"",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<DurationMs, E> {
                secs.checked_mul(1000)
                    .map(DurationMs)
                    .ok_or_else(|| E::custom("the duration is too long"))
            }
            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<DurationMs, E> {
                match u64::try_from(secs) {
                    Ok(secs) => self.visit_u64(secs),
                    Err(_) => Err(E::custom("a duration cannot be negative")),
                }
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DurationMs, E> {
                parse_duration_ms(text)
                    .map(DurationMs)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(text), &self))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// An answer in place of the upstream's: `status`, one content type, a body.
pub fn respond(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Action {
    Action::Respond(Reply {
        status,
        headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
        body: body.into(),
    })
}

/// Adds `value` to the filter's counter `name` (exported as
/// `gateway_plugin_<plugin>_<name>_total`) with these labels.
pub fn count(name: &str, labels: &[(&str, &str)], value: f64) {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host::counter_add(name, &labels, value);
}

/// Refuses settings for a route the gateway does not have (`known`, from
/// `host::route-ids`): a misspelt id would otherwise leave the real route
/// without them. The message starts with `plugin:` and names the first
/// unknown id in sorted order, so it is the same on every load.
pub fn check_route_ids<'a>(
    plugin: &str,
    named: impl Iterator<Item = &'a String>,
    known: &[String],
) -> Result<(), String> {
    let mut unknown: Vec<&String> = named.filter(|id| !known.contains(id)).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(id) => Err(format!(
            "{plugin}: route `{id}` is not in the gateway's config; the routes are: {}",
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )),
    }
}

/// Distinct label sets the gateway keeps per plugin counter (its
/// `PLUGIN_SERIES_CAP`); past it, new sets fold into one `overflow="true"`
/// series.
pub const SERIES_CAP: usize = 100;

/// The most series a filter declares per counter in `configure`: half the
/// cap, because the cap is shared by every filter that uses the plugin and
/// by the series traffic creates (a tenant from a token, a route a limit
/// was not declared for), which must not be pushed into the overflow.
pub const DECLARE_MAX: usize = SERIES_CAP / 2;

/// A counter's labels, as `host::counter-add` takes them.
pub type Labels = Vec<(String, String)>;

/// The counter series a filter creates at zero in `configure`, so a scrape
/// shows the whole set before the first request (a dashboard or an alert on
/// a series that does not exist yet sees nothing rather than zero).
///
/// The filter passes each entry to `host::counter-add` with 0.0, which
/// creates the series without counting anything; doing so again (every
/// instance configures) changes nothing.
#[derive(Debug, Default)]
pub struct Declared {
    pub series: Vec<(&'static str, Labels)>,
    /// Label sets left out because their counter had reached `DECLARE_MAX`.
    pub dropped: usize,
}

impl Declared {
    pub fn new() -> Declared {
        Declared::default()
    }

    /// Creates every declared series at zero in the gateway, and logs (at
    /// debug) how many were left out and why.
    pub fn declare(&self, why_dropped: &str) {
        for (name, labels) in &self.series {
            host::counter_add(name, labels, 0.0);
        }
        if self.dropped > 0 {
            host::log(
                LogLevel::Debug,
                &format!(
                    "{} series not declared at zero: {why_dropped}",
                    self.dropped
                ),
            );
        }
    }

    /// Declares `counter` with every combination of the labels' values, the
    /// last label varying fastest. A set already declared is skipped; past
    /// `DECLARE_MAX` sets for this counter the rest are dropped (and
    /// counted in `dropped`), so callers list the most useful values first.
    pub fn product(&mut self, counter: &'static str, labels: &[(&str, &[&str])]) -> &mut Declared {
        if labels.iter().any(|(_, values)| values.is_empty()) {
            return self;
        }
        let mut at = vec![0usize; labels.len()];
        loop {
            let set: Labels = labels
                .iter()
                .zip(&at)
                .map(|((name, values), &i)| (name.to_string(), values[i].to_string()))
                .collect();
            let known = self.series.iter().any(|(c, l)| *c == counter && *l == set);
            if !known {
                if self.count(counter) < DECLARE_MAX {
                    self.series.push((counter, set));
                } else {
                    self.dropped += 1;
                }
            }
            // The next combination, like an odometer.
            let mut k = labels.len();
            loop {
                if k == 0 {
                    return self;
                }
                k -= 1;
                at[k] += 1;
                if at[k] < labels[k].1.len() {
                    break;
                }
                at[k] = 0;
            }
        }
    }

    /// How many label sets `counter` has been declared with.
    pub fn count(&self, counter: &str) -> usize {
        self.series.iter().filter(|(c, _)| *c == counter).count()
    }

    /// The values `counter` was declared with for `label`, in order, once each.
    pub fn values(&self, counter: &str, label: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, labels) in self.series.iter().filter(|(c, _)| *c == counter) {
            for (k, v) in labels {
                if k == label && !out.contains(&v.as_str()) {
                    out.push(v);
                }
            }
        }
        out
    }
}

/// A field-less enum whose variants are the values of a metric label,
/// with `label()` giving each one's text and `ALL` listing every variant.
/// The code that counts and the code that declares the series at zero both
/// go through it, so the declared list cannot miss a value that is counted.
///
/// ```
/// filter_sdk::label_enum! {
///     /// Why a request was refused.
///     pub enum Reason {
///         TooMany => "too_many",
///         TooLarge => "too_large",
///     }
/// }
/// assert_eq!(Reason::ALL, &[Reason::TooMany, Reason::TooLarge]);
/// assert_eq!(Reason::TooLarge.label(), "too_large");
/// ```
#[macro_export]
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code)]
        impl $name {
            /// Every variant, in the order declared.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The metric label value.
            pub const fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }

            /// The labels of `values`, in order.
            pub fn labels(values: &[$name]) -> Vec<&'static str> {
                values.iter().map(|v| v.label()).collect()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_settings_are_named_by_their_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Limit {
            rate: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Settings {
            limits: Vec<Limit>,
        }
        let bad = parse_config::<Settings>("p", r#"{"limits": [{"rate": 1}, {"rate": "x"}]}"#);
        assert_eq!(
            bad.unwrap_err(),
            "at `limits[1].rate`: p: invalid type: string \"x\", expected u32"
        );
        let typo = parse_config::<Settings>("p", r#"{"limtis": []}"#).unwrap_err();
        assert!(
            typo.starts_with("at `limtis`: p: unknown field `limtis`"),
            "{typo}"
        );
        let missing = parse_config::<Settings>("p", "{}").unwrap_err();
        assert_eq!(missing, "p: missing field `limits`");
    }

    #[test]
    fn durations_are_seconds_or_text_with_a_unit() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("2d"), Some(172_800_000));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "-1s",
            "1 s",
            "1w",
            "99999999999999999999s",
        ] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Settings {
            ttl: DurationMs,
        }
        let ttl = |json: &str| parse_config::<Settings>("p", json).map(|s| s.ttl);
        assert_eq!(ttl(r#"{"ttl": 30}"#), Ok(DurationMs(30_000)));
        assert_eq!(ttl(r#"{"ttl": "500ms"}"#), Ok(DurationMs(500)));
        let bad = ttl(r#"{"ttl": "soon"}"#).unwrap_err();
        assert!(
            bad.starts_with("at `ttl`: p: invalid value: string \"soon\", expected a duration"),
            "{bad}"
        );
        let negative = ttl(r#"{"ttl": -1}"#).unwrap_err();
        assert_eq!(negative, "at `ttl`: p: a duration cannot be negative");
    }

    #[test]
    fn unknown_route_ids_are_named() {
        let known = vec!["api".to_string(), "admin".to_string()];
        let ok = ["api".to_string()];
        assert!(check_route_ids("p", ok.iter(), &known).is_ok());
        let bad = ["zz".to_string(), "admn".to_string()];
        assert_eq!(
            check_route_ids("p", bad.iter(), &known).unwrap_err(),
            "p: route `admn` is not in the gateway's config; the routes are: api, admin"
        );
        assert_eq!(
            check_route_ids("p", bad.iter(), &[]).unwrap_err(),
            "p: route `admn` is not in the gateway's config; the routes are: (none)"
        );
    }

    #[test]
    fn products_vary_the_last_label_fastest_and_skip_repeats() {
        let mut d = Declared::new();
        d.product("c", &[("a", &["1", "2"]), ("b", &["x", "y"])]);
        d.product("c", &[("a", &["2"]), ("b", &["y", "z"])]);
        let sets: Vec<String> = d
            .series
            .iter()
            .map(|(_, l)| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(
            sets,
            ["a=1,b=x", "a=1,b=y", "a=2,b=x", "a=2,b=y", "a=2,b=z"]
        );
        assert_eq!(d.values("c", "b"), ["x", "y", "z"]);
        // A label without values declares nothing; no labels, one series.
        d.product("c", &[("a", &[])]).product("n", &[]);
        assert_eq!((d.count("c"), d.count("n"), d.dropped), (5, 1, 0));
    }

    #[test]
    fn declarations_stop_at_the_budget_per_counter() {
        let many: Vec<String> = (0..DECLARE_MAX + 7).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut d = Declared::new();
        d.product("big", &[("i", &many)])
            .product("small", &[("i", &["0"])]);
        assert_eq!(d.count("big"), DECLARE_MAX);
        assert_eq!(d.count("small"), 1);
        assert_eq!(d.dropped, 7);
        assert_eq!(d.values("big", "i")[..2], ["0", "1"]);
    }

    label_enum! {
        enum Colour {
            Red => "red",
            Blue => "blue",
        }
    }

    #[test]
    fn label_enums_list_every_variant_with_its_label() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::Blue]);
        assert_eq!(Colour::labels(Colour::ALL), ["red", "blue"]);
    }
}
