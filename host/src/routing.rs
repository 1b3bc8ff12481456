//! Path normalisation and route matching.
//!
//! The gateway normalises a path once, routes on the result and sends that
//! same path upstream, so a filter that checks `/tenants/a/...` sees exactly
//! what the upstream will act on. Anything that could be read two ways is
//! refused rather than guessed.

use crate::config::RouteConfig;
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
}

/// Normalises a request path (without its query):
/// - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///   decoded, other escapes kept with upper-case hex, so `%2e%2e` is `..`;
/// - escaped `/` and `\`, raw `\`, NUL and control characters are refused;
/// - empty segments (`//`) are merged and `.`/`..` segments resolved;
/// - `..` above the root is refused.
///
/// A trailing slash is kept, because upstreams often treat `/a/` and `/a`
/// differently.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let parts: Vec<&str> = raw[1..].split('/').collect();
    let last = parts.len() - 1;
    let mut trailing_slash = false;
    for (i, part) in parts.iter().enumerate() {
        let seg = decode_segment(part)?;
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
            _ => {
                // The URI parser has already refused bytes that are not
                // allowed in a path; what is left is ASCII.
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
    host: Option<HostMatch>,
    prefix: String,
    methods: Option<Vec<Method>>,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl Route {
    pub fn new(index: usize, cfg: &RouteConfig) -> Route {
        let host = cfg.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                None => HostMatch::Exact(h),
            }
        });
        Route {
            index,
            id: cfg.id.get_ref().clone(),
            host,
            prefix: cfg.path_prefix.get_ref().clone(),
            methods: cfg.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            }),
        }
    }

    fn matches(&self, host: Option<&str>, path: &str, method: &Method) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => {
                    host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
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

/// The host part of an authority, without port, lower-cased.
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    })
}

/// The routes, tried in configuration order; the first match wins.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(cfgs: &[RouteConfig]) -> RouteTable {
        RouteTable {
            routes: cfgs
                .iter()
                .enumerate()
                .map(|(i, c)| Route::new(i, c))
                .collect(),
        }
    }

    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&Route> {
        let host = host.map(host_of);
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
            ("/a/", "/a/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
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
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
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
    fn hosts_without_ports() {
        assert_eq!(host_of("example.com:8080"), "example.com");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
