//! Path normalisation and route matching.
//!
//! The gateway normalises a path once, routes on the result and sends that
//! same path upstream, so a filter that checks `/tenants/a/...` sees exactly
//! what the upstream will act on. Anything that could be read two ways is
//! refused rather than guessed.

use crate::config::{HostPattern, PathParameters, RouteConfig};
use crate::edge::Host;
use http::Method;

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path encodes `/` or `\\` as a percent-escape, which upstreams read differently")]
    EncodedSeparator,
    #[error("the path contains a NUL or control character")]
    ControlCharacter,
    #[error("the path contains `\\`, which upstreams read differently")]
    Backslash,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    #[error(
        "the path has a `;` parameter, which Java upstreams strip before resolving `..`; this gateway refuses path parameters"
    )]
    Parameter,
    #[error(
        "a `.`, `..` or empty path segment carries a `;` parameter, which upstreams resolve differently"
    )]
    DotSegmentParameter,
}

/// Normalises a request path (without its query):
/// - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///   decoded, other escapes kept with upper-case hex, so `%2e%2e` is `..`;
/// - escaped `/` and `\`, raw `\`, NUL and control characters are refused;
/// - empty segments (`//`) are merged and `.`/`..` segments resolved;
/// - `..` above the root is refused;
/// - a `;` parameter (raw or as `%3B`) is refused under
///   [`PathParameters::Refuse`]. Tomcat, Jetty and Spring drop `;...` from
///   a segment before resolving dot segments, so `/a/..;/b` is `/b` to them
///   and `/a/..;/b` to everyone else. Under [`PathParameters::Keep`] a
///   parameter is kept where that cannot happen: on a segment whose name
///   (what comes before the first `;`) is not empty, `.` or `..`.
///
/// A trailing slash is kept, because upstreams often treat `/a/` and `/a`
/// differently.
pub fn normalize_path(raw: &str, parameters: PathParameters) -> Result<String, PathError> {
    // Most paths are already in their one reading; they cost a copy.
    if is_normal(raw) {
        return Ok(raw.to_string());
    }
    normalize_all(raw, parameters)
}

/// Whether `raw` is its own normal form: absolute, visible ASCII without
/// escapes, backslashes or `;`, and no empty (but the last), `.` or `..`
/// segment. What `normalize_all` would give back unchanged.
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if !raw
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b'\\' | b';'))
    {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

fn normalize_all(raw: &str, parameters: PathParameters) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let parts: Vec<&str> = raw[1..].split('/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, part) in parts.iter().enumerate() {
        let seg = decode_segment(part)?;
        check_parameters(&seg, parameters)?;
        match seg.as_str() {
            "" => {
                if i == last {
                    trailing_slash = true;
                }
            }
            "." => {
                if i == last {
                    trailing_slash = true;
                }
            }
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if i == last {
                    trailing_slash = true;
                }
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// The path routes match on: a normalised path without its segments' `;`
/// parameters (kept under [`PathParameters::Keep`]), because that is the
/// resource Java upstreams serve: `/admin;x=1` must meet `/admin`'s route.
pub fn without_parameters(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') && !path.contains("%3B") {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let end = [seg.find(';'), seg.find("%3B")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(seg.len());
        out.push_str(&seg[..end]);
    }
    std::borrow::Cow::Owned(out)
}

/// Checks a decoded segment (where a `%3B` is still `%3B`) against the
/// path-parameter policy.
fn check_parameters(seg: &str, parameters: PathParameters) -> Result<(), PathError> {
    let name_end = match (seg.find(';'), seg.find("%3B")) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return Ok(()),
    };
    if parameters == PathParameters::Refuse {
        return Err(PathError::Parameter);
    }
    match &seg[..name_end] {
        "" | "." | ".." => Err(PathError::DotSegmentParameter),
        _ => Ok(()),
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_segment(seg: &str) -> Result<String, PathError> {
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (h, l) = match (
                    b.get(i + 1).and_then(|&x| hex(x)),
                    b.get(i + 2).and_then(|&x| hex(x)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    _ if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(v as char),
                    _ => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            // Raw non-ASCII (clients send UTF-8 unescaped, and the URI
            // parser lets it through) is escaped, so the upstream gets the
            // same bytes in the one spelling `%C3%A9` also normalises to.
            0x80.. => {
                out.push('%');
                out.push_str(&format!("{c:02X}"));
                i += 1;
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub id: String,
    host: Option<HostPattern>,
    prefix: String,
    methods: Option<Vec<Method>>,
}

impl Route {
    pub fn new(index: usize, cfg: &RouteConfig) -> Route {
        Route {
            index,
            id: cfg.id.clone(),
            // Compared with request hosts as `edge::Host` writes them.
            host: cfg.host.clone(),
            prefix: cfg.path_prefix.clone(),
            methods: cfg
                .methods
                .as_ref()
                .map(|ms| ms.iter().map(|m| m.as_method().clone()).collect()),
        }
    }

    /// The route's match as the admin page shows it: hosts (none for any),
    /// path prefix and methods (`null` for all but TRACE and TRACK).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "hosts": self.host.as_ref().map(ToString::to_string).into_iter().collect::<Vec<_>>(),
            "path_prefix": self.prefix,
            "methods": self.methods.as_ref().map(|ms| ms.iter().map(Method::as_str).collect::<Vec<_>>()),
        })
    }

    /// Whether the route's `methods` name this method; `TRACE` and `TRACK`
    /// are served only where a route names them.
    pub fn lists_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_some_and(|ms| ms.contains(method))
    }

    fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                HostPattern::Exact(h) => host.eq_ignore_ascii_case(h.as_str()),
                HostPattern::Suffix(s) => {
                    host.len() > s.len()
                        && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_str())
                }
            };
            if !ok {
                return false;
            }
        }
        if !prefix_matches(&self.prefix, path) {
            return false;
        }
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
    }
}

/// A prefix matches whole segments: `/api` matches `/api` and `/api/x`, not
/// `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix) || path == &prefix[..prefix.len() - 1];
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// The routes, tried in configuration order; the first match wins.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn new(cfgs: &[RouteConfig]) -> RouteTable {
        RouteTable {
            routes: cfgs
                .iter()
                .enumerate()
                .map(|(i, c)| Route::new(i, c))
                .collect(),
        }
    }

    pub fn find(&self, host: Option<&Host>, path: &str, method: &Method) -> Option<&Route> {
        let host = host.map(|h| h.name.as_str());
        self.routes.iter().find(|r| r.matches(host, path, method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_one_way() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("//a///b", "/a/b"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a/.%2e/b", "/b"),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a\u{e9}", "/a%C3%A9"),
            ("/a/", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
        ];
        for (raw, want) in ok {
            assert_eq!(
                normalize_path(raw, PathParameters::Refuse).as_deref(),
                Ok(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let bad = [
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%00", PathError::ControlCharacter),
            ("a", PathError::NotAbsolute),
        ];
        for (raw, want) in bad {
            assert_eq!(
                normalize_path(raw, PathParameters::Refuse),
                Err(want),
                "{raw}"
            );
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/api/", "/api/x"));
    }

    #[test]
    fn path_parameters_are_refused_by_default() {
        for raw in [
            "/tenants/acme/..;/globex/x",
            "/open/..;/admin-only",
            "/open/%2e%2e;/admin-only",
            "/open/%2e%2e%3b/admin-only",
            "/a;jsessionid=1",
            "/a/b;x/c",
            "/a/b%3Bx",
        ] {
            assert_eq!(
                normalize_path(raw, PathParameters::Refuse),
                Err(PathError::Parameter),
                "{raw}"
            );
        }
    }

    #[test]
    fn kept_path_parameters_never_sit_on_a_dot_segment() {
        let keep = PathParameters::Keep;
        assert_eq!(
            normalize_path("/a;jsessionid=1/b", keep).as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        assert_eq!(normalize_path("/a/b%3bx", keep).as_deref(), Ok("/a/b%3Bx"));
        for raw in [
            "/open/..;/admin-only",
            "/open/.;x/admin-only",
            "/open/%2e%2e;/admin-only",
            "/open/%2E%2e%3B/admin-only",
            "/open/;x/admin-only",
            "/open/..;",
        ] {
            assert_eq!(
                normalize_path(raw, keep),
                Err(PathError::DotSegmentParameter),
                "{raw}"
            );
        }
    }

    #[test]
    fn routes_match_kept_parameters_on_the_bare_segment() {
        assert_eq!(without_parameters("/a;x=1/b%3By/c"), "/a/b/c");
        assert_eq!(without_parameters("/admin-only;x"), "/admin-only");
        assert_eq!(without_parameters("/a/b/"), "/a/b/");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Paths built from the pieces that make normalisation hard.
        fn tricky_path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "/", "//", ".", "..", "%2e", "%2E", "%2e%2e", ";", "%3b", "%3B", ";x=1", "a", "B",
                "~", "%7e", "%2f", "%5c", "\\", "%00", "%", "%4", "%41", "%c3%a9", "-", "_", " ",
                "?", "#",
            ]);
            prop::collection::vec(piece, 0..12).prop_map(|ps| format!("/{}", ps.concat()))
        }

        fn policy() -> impl Strategy<Value = PathParameters> {
            prop::sample::select(vec![PathParameters::Refuse, PathParameters::Keep])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn normalising_twice_changes_nothing(raw in tricky_path(), p in policy()) {
                if let Ok(once) = normalize_path(&raw, p) {
                    prop_assert_eq!(normalize_path(&once, p), Ok(once.clone()));
                }
            }

            #[test]
            fn no_output_can_be_read_two_ways(raw in tricky_path(), p in policy()) {
                if let Ok(out) = normalize_path(&raw, p) {
                    check_output(&out, p)?;
                }
            }

            #[test]
            fn the_fast_path_agrees_with_the_full_normaliser(raw in tricky_path(), p in policy()) {
                if is_normal(&raw) {
                    prop_assert_eq!(normalize_all(&raw, p), Ok(raw.clone()));
                }
            }

            #[test]
            fn the_fast_path_agrees_on_any_visible_ascii(raw in "/[!-~]{0,30}", p in policy()) {
                if is_normal(&raw) {
                    prop_assert_eq!(normalize_all(&raw, p), Ok(raw.clone()));
                }
            }

            #[test]
            fn any_text_normalises_to_one_reading_or_is_refused(raw in "\\PC{0,40}", p in policy()) {
                if let Ok(out) = normalize_path(&raw, p) {
                    check_output(&out, p)?;
                    prop_assert_eq!(normalize_path(&out, p), Ok(out.clone()));
                }
            }
        }

        /// What no normalised path may contain.
        fn check_output(out: &str, p: PathParameters) -> Result<(), TestCaseError> {
            prop_assert!(out.starts_with('/'));
            let upper = out.to_ascii_uppercase();
            prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !out.contains('\\'));
            for seg in out.split('/').skip(1) {
                prop_assert!(seg != "." && seg != "..", "dot segment in {}", out);
                let name = seg.split(';').next().unwrap_or("");
                let name = name.split("%3B").next().unwrap_or("");
                let has_parameter = seg.contains(';') || seg.contains("%3B");
                match p {
                    PathParameters::Refuse => prop_assert!(!has_parameter, "{}", out),
                    PathParameters::Keep => prop_assert!(
                        !has_parameter || !matches!(name, "" | "." | ".."),
                        "{}",
                        out
                    ),
                }
            }
            prop_assert!(!out.contains("//"));
            Ok(())
        }
    }
}
