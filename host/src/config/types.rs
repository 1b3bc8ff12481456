//! Values that check themselves while the file is read: a value of one of
//! these types that deserialises is valid wherever the type is used, and
//! one that does not is refused at its own line and column (the TOML
//! reader puts the value's position on the error). Rules that need another
//! setting to judge a value live with the section, or in `validate`.

use std::fmt;
use std::time::Duration;

/// Implements `Deserialize` through the type's `TryFrom`, raising the error
/// inside the value's own deserializer so that it carries the value's
/// position, an array element's included (`#[serde(try_from)]` raises it
/// after, at the enclosing array or table).
macro_rules! checked_from {
    ($t:ty, str, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$t, E> {
                        <$t>::try_from(s.to_string()).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
    ($t:ty, integer, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<$t, E> {
                        <$t>::try_from(n).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
    ($t:ty, float, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<$t, E> {
                        <$t>::try_from(n as f64).map_err(E::custom)
                    }
                    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<$t, E> {
                        <$t>::try_from(x).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

checked_from!(Millis, str, "a duration like \"250ms\", \"10s\" or \"2m\"");
checked_from!(PluginName, str, "a plugin name");
checked_from!(Method, str, "a method like \"GET\"");
checked_from!(
    FailureOn,
    str,
    "connect, timeout, reset, 5xx or a status code as a string"
);
checked_from!(
    RetryOn,
    str,
    "connect, reset, timeout or a status code as a string"
);
checked_from!(
    HostPattern,
    str,
    "a host like \"api.example.com\" or \"*.example.com\""
);
checked_from!(Status, integer, "an HTTP status from 100 to 599");
checked_from!(Ratio, float, "a share from 0 to 1");
checked_from!(MemoryMib, integer, "a size in MiB from 1 to 256");

/// A duration written as `250ms`, `10s`, `2m`, `1h` or `1d`, at most a year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub Duration);

/// The longest duration any setting takes: deadlines are `Instant::now() +
/// d` on the request path, which panics past the clock's range.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl TryFrom<String> for Millis {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a duration; write it like \"250ms\", \"10s\" or \"2m\"");
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let too_long = || format!("`{s}` is longer than a year; use a shorter duration");
        let n: u64 = match n.parse() {
            Ok(n) => n,
            Err(_) if !n.is_empty() => return Err(too_long()),
            Err(_) => return Err(bad()),
        };
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(too_long)?),
            _ => return Err(bad()),
        };
        if d > MAX_DURATION {
            return Err(format!(
                "`{s}` is longer than a year; use a shorter duration"
            ));
        }
        Ok(Millis(d))
    }
}

impl fmt::Display for Millis {
    /// As a user would write it: `"250ms"`, `"10s"`, `"2m"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "\"{}m\"", ms / 60_000)
        } else if ms != 0 && ms.is_multiple_of(1000) {
            write!(f, "\"{}s\"", ms / 1000)
        } else {
            write!(f, "\"{ms}ms\"")
        }
    }
}

/// Letters, digits, `-` and `_`, at least one.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
}

/// A plugin's name: the file `<name>.wasm`, so no path can be smuggled in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginName(String);

impl TryFrom<String> for PluginName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_plain_name(&s) {
            Ok(PluginName(s))
        } else {
            Err(format!(
                "`{s}` is not a plugin name; a plugin name uses only letters, digits, `-` and `_`"
            ))
        }
    }
}

impl PluginName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP status code, 100 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u16);

impl TryFrom<i64> for Status {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u16::try_from(n) {
            Ok(s) if (100..=599).contains(&s) => Ok(Status(s)),
            _ => Err(format!(
                "{n} is not an HTTP status; use one from 100 to 599"
            )),
        }
    }
}

impl Status {
    pub fn get(self) -> u16 {
        self.0
    }
}

/// A request method a route allows, in capitals as HTTP writes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Method(http::Method);

impl TryFrom<String> for Method {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match http::Method::from_bytes(s.as_bytes()) {
            Ok(m) if !s.chars().any(|c| c.is_ascii_lowercase()) => Ok(Method(m)),
            Ok(_) => Err(format!(
                "a route lists method `{s}`; write methods in capitals, like \"GET\""
            )),
            Err(_) => Err(format!(
                "a route lists method `{s}`, which is not a method name; write one like \"GET\" or \"POST\""
            )),
        }
    }
}

impl Method {
    pub fn as_method(&self) -> &http::Method {
        &self.0
    }
}

/// How a try can end, as `failure_on` and `retry.on` list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No connection could be made: nothing was sent.
    Connect,
    Timeout,
    /// The connection failed after the request went out.
    Reset,
    /// Any 5xx answer (`failure_on` only).
    Any5xx,
    Status(u16),
    /// A gRPC status in the answer's head (a trailers-only answer, as
    /// servers give when they refuse a call before running it).
    Grpc(u8),
}

/// The gRPC statuses `retry.on` and `failure_on` name, by their names in
/// gRPC's own retry policies.
pub const GRPC_OUTCOMES: [(&str, u8); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl Outcome {
    fn parse(s: &str) -> Option<Outcome> {
        if let Some((_, code)) = GRPC_OUTCOMES.iter().find(|(name, _)| *name == s) {
            return Some(Outcome::Grpc(*code));
        }
        Some(match s {
            "connect" => Outcome::Connect,
            "timeout" => Outcome::Timeout,
            "reset" => Outcome::Reset,
            "5xx" => Outcome::Any5xx,
            code => Outcome::Status(Status::try_from(code.parse::<i64>().ok()?).ok()?.get()),
        })
    }
}

/// An entry of an upstream's `failure_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureOn(pub Outcome);

impl TryFrom<String> for FailureOn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Outcome::parse(&s).map(FailureOn).ok_or_else(|| {
            format!(
                "an upstream lists `{s}` in failure_on; use connect, timeout, reset, 5xx, a status code or a gRPC status such as unavailable"
            )
        })
    }
}

/// An entry of a route's `retry.on`: a class such as `5xx` would retry
/// answers no retry can fix (501, 505), so codes are listed one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryOn(pub Outcome);

impl TryFrom<String> for RetryOn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match Outcome::parse(&s) {
            Some(o) if o != Outcome::Any5xx => Ok(RetryOn(o)),
            _ => Err(format!(
                "a route retries on `{s}`; use connect, reset, timeout, a status code or a gRPC status such as unavailable"
            )),
        }
    }
}

/// The host a route matches: exact, or `*.example.com` for any subdomain.
/// Kept lowercase and without a trailing dot, as request hosts are compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Suffix(String),
}

impl TryFrom<String> for HostPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let h = s.to_ascii_lowercase();
        let h = h.strip_suffix('.').unwrap_or(&h);
        let (suffix, name) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, h),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // An IPv6 literal as a request's Host writes it, brackets included.
        let ipv6 = !suffix
            && name.starts_with('[')
            && name.ends_with(']')
            && name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok();
        if !ipv6 && (name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok)) {
            let hint = if name.contains(':') {
                "; a route's host is matched without a port, so leave the port out"
            } else if name.contains('*') {
                "; a wildcard stands only for the leading labels, as in \"*.example.com\""
            } else {
                ""
            };
            return Err(format!(
                "`{s}` is not a host name or a pattern like \"*.example.com\"{hint}"
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

/// As written: `api.example.com` or `*.example.com`.
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

/// Values by server name (certificates on the TLS listener, TCP routes on
/// a passthrough listener): exact names first, then `*.example.com` for
/// one more label, as a certificate's names match.
#[derive(Debug)]
pub struct ServerNames<T> {
    exact: std::collections::HashMap<String, T>,
    /// By the suffix after the wildcard, `.example.com`.
    wildcard: std::collections::HashMap<String, T>,
}

impl<T> Default for ServerNames<T> {
    fn default() -> Self {
        ServerNames {
            exact: Default::default(),
            wildcard: Default::default(),
        }
    }
}

impl<T> ServerNames<T> {
    /// Adds `value` for `name`; the first value given a name keeps it.
    pub fn insert(&mut self, name: &HostPattern, value: T) {
        let map = match name {
            HostPattern::Exact(h) => self.exact.entry(h.clone()),
            HostPattern::Suffix(s) => self.wildcard.entry(s.clone()),
        };
        map.or_insert(value);
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.exact.values().chain(self.wildcard.values())
    }

    /// The value for a server name as a client sent it (any case, maybe a
    /// trailing dot).
    pub fn get(&self, name: &str) -> Option<&T> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(v) = self.exact.get(&name) {
            return Some(v);
        }
        name.find('.')
            .and_then(|dot| self.wildcard.get(&name[dot..]))
    }
}

/// A share from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(f64);

impl TryFrom<f64> for Ratio {
    type Error = String;
    fn try_from(x: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&x) {
            Ok(Ratio(x))
        } else {
            Err(format!("{x} is not a share; use 0 to 1"))
        }
    }
}

impl Ratio {
    pub fn get(self) -> f64 {
        self.0
    }
}

/// The most memory a filter instance may be given; the engine reserves
/// address space for this much per instance slot.
pub const MAX_MEMORY_LIMIT_MIB: u32 = 256;

/// A filter instance's memory limit, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryMib(u32);

impl TryFrom<i64> for MemoryMib {
    type Error = String;
    fn try_from(n: i64) -> Result<Self, String> {
        match u32::try_from(n) {
            Ok(m) if (1..=MAX_MEMORY_LIMIT_MIB).contains(&m) => Ok(MemoryMib(m)),
            _ => Err(format!(
                "memory_limit_mib = {n} is out of range; use 1 to {MAX_MEMORY_LIMIT_MIB}"
            )),
        }
    }
}

impl MemoryMib {
    pub const fn new_const(mib: u32) -> MemoryMib {
        MemoryMib(mib)
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        // The cases config/tests.rs checks through a config are not repeated.
        let d = |s: &str| Millis::try_from(s.to_string()).map(|m| m.0);
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert!(d("ms").is_err());
        assert!(d("5 s").is_err());
        assert!(d("400d").unwrap_err().contains("longer than a year"));
        assert!(d("99999999999999999999h").is_err());
        assert_eq!(Millis(Duration::from_secs(120)).to_string(), "\"2m\"");
        assert_eq!(
            Millis(Duration::from_millis(1500)).to_string(),
            "\"1500ms\""
        );
    }

    #[test]
    fn host_patterns_are_normalised_and_checked() {
        let h = |s: &str| HostPattern::try_from(s.to_string());
        assert_eq!(
            h("API.Example.com."),
            Ok(HostPattern::Exact("api.example.com".into()))
        );
        assert_eq!(
            h("*.example.com"),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(h("[::1]"), Ok(HostPattern::Exact("[::1]".into())));
        assert!(
            h("example.com:8080")
                .unwrap_err()
                .contains("without a port")
        );
        assert!(h("api.*.com").unwrap_err().contains("leading labels"));
        assert!(h("*").is_err());
        assert!(h("").is_err());
        assert!(h("a..b").is_err());
        assert!(h("exa mple.com").is_err());
    }

    #[test]
    fn outcomes_and_methods() {
        let f = |s: &str| FailureOn::try_from(s.to_string()).map(|o| o.0);
        assert_eq!(f("5xx"), Ok(Outcome::Any5xx));
        assert_eq!(f("429"), Ok(Outcome::Status(429)));
        assert!(f("6xx").is_err());
        assert!(f("99").is_err());
        let r = |s: &str| RetryOn::try_from(s.to_string()).map(|o| o.0);
        assert_eq!(r("connect"), Ok(Outcome::Connect));
        assert_eq!(r("unavailable"), Ok(Outcome::Grpc(14)));
        assert!(r("5xx").unwrap_err().contains("retries on `5xx`"));
        let m = |s: &str| Method::try_from(s.to_string());
        assert!(m("PATCH").is_ok());
        assert!(m("get").unwrap_err().contains("lists method `get`"));
        assert!(m("GE T").is_err());
        assert!(Status::try_from(600).is_err());
        assert!(Ratio::try_from(f64::NAN).is_err());
        assert!(Ratio::try_from(-0.1).is_err());
        assert!(MemoryMib::try_from(257).is_err());
        assert!(MemoryMib::try_from(0).is_err());
    }

    fn server_name_pattern(s: &str) -> HostPattern {
        HostPattern::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn exact_names_win_over_wildcards_and_a_wildcard_covers_one_label() {
        let mut names = ServerNames::default();
        names.insert(&server_name_pattern("*.example.com"), "wild");
        names.insert(&server_name_pattern("api.example.com"), "api");
        assert_eq!(names.get("api.example.com"), Some(&"api"));
        assert_eq!(names.get("API.Example.com."), Some(&"api"));
        assert_eq!(names.get("www.example.com"), Some(&"wild"));
        assert_eq!(names.get("a.b.example.com"), None);
        assert_eq!(names.get("example.com"), None);
    }
}
