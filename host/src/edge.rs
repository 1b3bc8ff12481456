//! What the gateway accepts of a request head before any route or filter
//! sees it: the one host everybody agrees on, the headers that describe a
//! connection rather than the message, the forwarding headers only the
//! gateway may write, header names upstreams read two ways, and the
//! protocol features (transfer codings, upgrades, expectations, methods)
//! the gateway does not carry through.
//!
//! The rule throughout: when an upstream could read a request differently
//! from the routing and the filters, the request is refused or rewritten so
//! that there is one reading.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use std::borrow::Cow;

/// A request the gateway refuses at the edge, with the status, the
/// `x-gateway-error` code and the one-line reason the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: Cow<'static, str>,
}

macro_rules! refusal_kinds {
    ($($kind:ident => $code:literal, $status:ident;)*) => {
        /// Every kind of edge refusal; `code` is both the `x-gateway-error`
        /// header and the `reason` label of `gateway_http_requests_refused_total`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RefusalKind { $($kind,)* }

        impl RefusalKind {
            pub const ALL: &[RefusalKind] = &[$(RefusalKind::$kind,)*];
            pub fn code(self) -> &'static str {
                match self { $(RefusalKind::$kind => $code,)* }
            }
            pub fn status(self) -> StatusCode {
                match self { $(RefusalKind::$kind => StatusCode::$status,)* }
            }
        }
    };
}

refusal_kinds! {
    BadPath => "bad-path", BAD_REQUEST;
    BadHost => "bad-host", BAD_REQUEST;
    MissingHost => "missing-host", BAD_REQUEST;
    ConflictingHost => "conflicting-host", BAD_REQUEST;
    UnsupportedTransferCoding => "unsupported-transfer-coding", NOT_IMPLEMENTED;
    UpgradeNotSupported => "upgrade-not-supported", NOT_IMPLEMENTED;
    MethodNotAllowed => "method-not-allowed", METHOD_NOT_ALLOWED;
    ExpectationFailed => "expectation-failed", EXPECTATION_FAILED;
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

/// Why a host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("the host carries user information (`user@`), which upstreams read differently")]
    UserInfo,
    #[error("the host's port is not a number from 1 to 65535")]
    BadPort,
    #[error("the host has a character outside letters, digits, `-`, `.`, `_` and `~`")]
    BadCharacter,
    #[error("the host has an empty label (`..` or a leading `.`)")]
    EmptyLabel,
    #[error("the host's IP literal is not an IPv6 address")]
    BadIpLiteral,
}

/// A host as routing, filters, `X-Forwarded-Host` and the upstream all see
/// it: lower case, without a trailing dot, with the port the client gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name or address; an IPv6 address keeps its brackets.
    pub name: String,
    pub port: Option<u16>,
}

/// The longest host name DNS allows.
const MAX_HOST_LEN: usize = 253;

impl Host {
    /// Parses an authority as a client sends it in `Host` or `:authority`
    /// or an absolute-form target.
    ///
    /// Stricter than RFC 3986's reg-name: percent-escapes and sub-delims
    /// (`!$&'()*+,;=`) are refused, because no DNS name has them and
    /// upstreams disagree on whether to decode or split on them.
    pub fn parse(authority: &str) -> Result<Host, HostError> {
        if authority.is_empty() {
            return Err(HostError::Empty);
        }
        if authority.contains('@') {
            return Err(HostError::UserInfo);
        }
        let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (addr, after) = rest.split_once(']').ok_or(HostError::BadIpLiteral)?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| HostError::BadIpLiteral)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(HostError::BadIpLiteral)?),
            };
            (format!("[{}]", addr.to_ascii_lowercase()), port)
        } else {
            let (name, port) = match authority.rsplit_once(':') {
                Some((n, p)) => (n, Some(p)),
                None => (authority, None),
            };
            let name = name.strip_suffix('.').unwrap_or(name);
            if name.is_empty() {
                return Err(HostError::Empty);
            }
            if name.len() > MAX_HOST_LEN {
                return Err(HostError::BadCharacter);
            }
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            {
                return Err(HostError::BadCharacter);
            }
            if name.split('.').any(str::is_empty) {
                return Err(HostError::EmptyLabel);
            }
            (name.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or(HostError::BadPort)?),
        };
        Ok(Host { name, port })
    }

    /// `name` or `name:port`, for the `Host` header.
    pub fn authority(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.name),
            None => self.name.clone(),
        }
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

/// The one host of a request (RFC 9112 §3.2, RFC 9113 §8.3.1):
/// - HTTP/1.1 needs exactly one `Host`; HTTP/1.0 may have none;
/// - an absolute-form target's authority wins over `Host`;
/// - an HTTP/2 `:authority` and a `host` header must agree.
///
/// `None` only for an HTTP/1.0 request without a host.
pub fn request_host(parts: &http::request::Parts) -> Result<Option<Host>, Refusal> {
    let mut values = parts.headers.get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Refusal::new(
            RefusalKind::ConflictingHost,
            "the request has more than one Host header",
        ));
    }
    let parse = |v: &str| {
        Host::parse(v).map_err(|e| Refusal::new(RefusalKind::BadHost, format!("bad host: {e}")))
    };
    let header = first
        .map(|v| {
            v.to_str()
                .map_err(|_| Refusal::new(RefusalKind::BadHost, "bad host: not ASCII"))
                .and_then(parse)
        })
        .transpose()?;
    let target = parts
        .uri
        .authority()
        .map(|a| parse(a.as_str()))
        .transpose()?;
    match parts.version {
        Version::HTTP_2 | Version::HTTP_3 => match (target, header) {
            (Some(t), Some(h)) if t != h => Err(Refusal::new(
                RefusalKind::ConflictingHost,
                "the :authority and the host header name different hosts",
            )),
            (t, h) => t.or(h).map(Some).ok_or_else(|| {
                Refusal::new(RefusalKind::MissingHost, "the request names no :authority")
            }),
        },
        Version::HTTP_10 | Version::HTTP_09 => Ok(target.or(header)),
        _ => {
            if header.is_none() {
                return Err(Refusal::new(
                    RefusalKind::MissingHost,
                    "an HTTP/1.1 request must have a Host header",
                ));
            }
            // RFC 9112 §3.2.2: the absolute-form target's authority wins.
            Ok(target.or(header))
        }
    }
}

/// The host a filter is shown: the request's `Host` header, which the
/// pipeline has set to the one host of the request.
pub fn authority(p: &http::request::Parts) -> Option<&str> {
    p.headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| p.uri.authority().map(|a| a.as_str()))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// the obsolete ones clients still send, and proxy credentials meant for
/// the gateway, never for an upstream.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names (a client can name `X-Forwarded-For` there to have a naive
/// proxy drop the real one). `Host` and `Content-Length` are never removed
/// this way: the gateway sets them itself.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most requests carry none: one pass over the names present instead
    // of a lookup for every hop-by-hop name.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| n != header::HOST && n != header::CONTENT_LENGTH)
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// Refuses what the gateway would otherwise pass on in a form the upstream
/// reads differently, or silently drop:
/// - a transfer coding other than `chunked` (hyper removes the chunking;
///   a `gzip` layer would reach the upstream unmarked);
/// - `CONNECT`, and `TRACE`/`TRACK` unless `allow_trace` (a route lists
///   the method);
/// - an `Expect` other than `100-continue`.
pub fn check_protocol(parts: &http::request::Parts) -> Result<(), Refusal> {
    let h = &parts.headers;
    for te in tokens(h, &header::TRANSFER_ENCODING) {
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(Refusal::new(
                RefusalKind::UnsupportedTransferCoding,
                format!(
                    "transfer coding `{te}` is not supported; send the body with Content-Length or chunked only"
                ),
            ));
        }
    }
    if parts.method == Method::CONNECT && extended_connect(parts).is_none() {
        return Err(Refusal::new(
            RefusalKind::MethodNotAllowed,
            "CONNECT is not supported: this gateway is not a forward proxy",
        ));
    }
    for expect in h.get_all(header::EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(Refusal::new(
                RefusalKind::ExpectationFailed,
                "only `Expect: 100-continue` is supported",
            ));
        }
    }
    Ok(())
}

/// The protocol an HTTP/1.1 request asks to switch to (`websocket`,
/// lowercased), or None when it asks for none. An `h2c` upgrade is ignored,
/// as RFC 9110 §7.8 allows, and the request served over HTTP/1.1; it is
/// never forwarded. Refused, rather than passed on half-understood: an
/// `Upgrade` without `Connection: upgrade` (an upstream might switch
/// anyway), one offering several protocols, and one on anything but an
/// HTTP/1.1 GET without a body.
pub fn upgrade_request(parts: &http::request::Parts) -> Result<Option<String>, Refusal> {
    let h = &parts.headers;
    let mut offered = tokens(h, &header::UPGRADE).filter(|p| !p.eq_ignore_ascii_case("h2c"));
    let Some(protocol) = offered.next() else {
        return Ok(None);
    };
    let refuse = |why: &str| {
        Err(Refusal::new(
            RefusalKind::UpgradeNotSupported,
            why.to_string(),
        ))
    };
    if offered.next().is_some() {
        return refuse("the request offers several protocols to upgrade to; offer one");
    }
    if !tokens(h, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return refuse("an Upgrade header without `Connection: upgrade` is not an upgrade request");
    }
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH).is_some_and(|v| v != "0");
    if parts.method != Method::GET || parts.version != http::Version::HTTP_11 || has_body {
        return refuse("only an HTTP/1.1 GET without a body can upgrade");
    }
    Ok(Some(protocol.to_ascii_lowercase()))
}

/// The protocol an HTTP/2 extended CONNECT (RFC 8441: a WebSocket over
/// HTTP/2) asks for, lowercased; None for any other request.
pub fn extended_connect(parts: &http::request::Parts) -> Option<String> {
    if parts.method != Method::CONNECT || parts.version != http::Version::HTTP_2 {
        return None;
    }
    let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
    Some(protocol.as_str().to_ascii_lowercase())
}

/// `TRACE` and `TRACK` reflect the request (cookies and credentials
/// included) back to the client; only a route that lists them may serve them.
pub fn is_trace(method: &Method) -> bool {
    method == Method::TRACE || method.as_str() == "TRACK"
}

pub fn trace_refusal(method: &Method) -> Refusal {
    Refusal::new(
        RefusalKind::MethodNotAllowed,
        format!("{method} is not allowed on this route"),
    )
}

/// The comma-separated tokens of every line of a header, trimmed.
fn tokens<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes headers whose names contain `_`: CGI-style stacks (gunicorn,
/// Puma, PHP, some Django deployments) read `X_Tenant_Id` as
/// `X-Tenant-Id`, so it could sit beside the one a filter set and win.
/// Returns how many were removed.
pub fn drop_underscore_headers(h: &mut HeaderMap) -> usize {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    let mut dropped = 0;
    for n in names {
        dropped += h.get_all(&n).iter().count();
        h.remove(&n);
    }
    dropped
}

/// Headers that carry a client's address, scheme, host or path as some
/// proxy saw it. Only the gateway writes them, unless `trust_forwarded`
/// says a trusted proxy in front did.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-original-forwarded-for",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-client-ip",
];

/// Whether a header carries forwarding information, in any spelling an
/// upstream may fold together (`_` for `-`).
pub fn is_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    let folded: Cow<'_, str> = if n.contains('_') {
        Cow::Owned(n.replace('_', "-"))
    } else {
        Cow::Borrowed(n)
    };
    folded.starts_with("x-forwarded-") || FORWARDING.contains(&&*folded)
}

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets the forwarding headers the upstream gets. Without `trust`, every
/// forwarding header the client sent is removed first, so an upstream
/// reads only what the gateway wrote; with it, the client's are kept and
/// every `X-Forwarded-For` line is kept, in order, before the client's
/// address. Returns how many client headers were removed.
pub fn set_forwarding_headers(
    h: &mut HeaderMap,
    client: std::net::IpAddr,
    host: Option<&Host>,
    scheme: &'static str,
    trust: bool,
) -> usize {
    let mut removed = 0;
    let xff = if trust {
        let mut chain: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let ip = client.to_string();
        chain.push(&ip);
        chain.join(", ")
    } else {
        let names: Vec<HeaderName> = h.keys().filter(|n| is_forwarding(n)).cloned().collect();
        for n in names {
            removed += h.get_all(&n).iter().count();
            h.remove(&n);
        }
        client.to_string()
    };
    h.insert(
        X_FORWARDED_FOR,
        HeaderValue::from_str(&xff).unwrap_or_else(|_| HeaderValue::from_static("")),
    );
    if !(trust && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if !(trust && h.contains_key(&X_FORWARDED_HOST)) {
        match host.and_then(|v| HeaderValue::from_str(&v.authority()).ok()) {
            Some(v) => {
                h.insert(X_FORWARDED_HOST, v);
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[(&str, &str)], uri: &str, version: Version) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri).version(version);
        for (k, v) in raw {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn hosts_are_lower_case_without_a_trailing_dot() {
        let h = Host::parse("API.Example.COM.:8080").unwrap();
        assert_eq!(h.authority(), "api.example.com:8080");
        assert_eq!(Host::parse("[::1]:80").unwrap().authority(), "[::1]:80");
        assert_eq!(Host::parse("127.0.0.1").unwrap().authority(), "127.0.0.1");
        assert_eq!(Host::parse("a:080").unwrap().port, Some(80));
    }

    #[test]
    fn hosts_upstreams_could_read_differently_are_refused() {
        for (raw, want) in [
            ("", HostError::Empty),
            (".", HostError::Empty),
            ("a@b", HostError::UserInfo),
            ("user:pw@b:80", HostError::UserInfo),
            ("a:", HostError::BadPort),
            ("a:0", HostError::BadPort),
            ("a:65536", HostError::BadPort),
            ("a:8o", HostError::BadPort),
            ("a:+80", HostError::BadPort),
            ("a:1:2", HostError::BadCharacter),
            ("a b", HostError::BadCharacter),
            ("a,b", HostError::BadCharacter),
            ("a%2eb", HostError::BadCharacter),
            ("a/b", HostError::BadCharacter),
            ("a\\b", HostError::BadCharacter),
            ("a..b", HostError::EmptyLabel),
            (".a", HostError::EmptyLabel),
            ("[::1", HostError::BadIpLiteral),
            ("[v1.x]", HostError::BadIpLiteral),
            ("[::1]x", HostError::BadIpLiteral),
        ] {
            assert_eq!(Host::parse(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn one_host_per_request() {
        let h11 = Version::HTTP_11;
        let host = |p: &http::request::Parts| request_host(p).map(|h| h.map(|h| h.authority()));
        assert_eq!(
            host(&head(&[("host", "A.b.")], "/", h11)),
            Ok(Some("a.b".into()))
        );
        assert_eq!(
            host(&head(&[], "/", h11)).unwrap_err().kind,
            RefusalKind::MissingHost
        );
        assert_eq!(host(&head(&[], "/", Version::HTTP_10)), Ok(None));
        assert_eq!(
            host(&head(&[("host", "a"), ("host", "b")], "/", h11))
                .unwrap_err()
                .kind,
            RefusalKind::ConflictingHost
        );
        // Absolute form: the target's authority wins.
        assert_eq!(
            host(&head(&[("host", "b")], "http://a/x", h11)),
            Ok(Some("a".into()))
        );
        let h2 = Version::HTTP_2;
        assert_eq!(host(&head(&[], "http://a/x", h2)), Ok(Some("a".into())));
        assert_eq!(
            host(&head(&[("host", "A.")], "http://a/x", h2)),
            Ok(Some("a".into()))
        );
        assert_eq!(
            host(&head(&[("host", "b")], "http://a/x", h2))
                .unwrap_err()
                .kind,
            RefusalKind::ConflictingHost
        );
    }

    #[test]
    fn upgrades_need_connection_upgrade_one_protocol_and_a_bodiless_http11_get() {
        let h11 = Version::HTTP_11;
        let asked = |hs: &[(&str, &str)], version| {
            upgrade_request(&head(hs, "/", version)).map_err(|r| r.kind)
        };
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert_eq!(asked(&ws, h11), Ok(Some("websocket".into())));
        assert_eq!(
            asked(&[("upgrade", "h2c"), ("connection", "upgrade")], h11),
            Ok(None)
        );
        assert_eq!(asked(&[], h11), Ok(None));
        let refused = Err(RefusalKind::UpgradeNotSupported);
        assert_eq!(asked(&[("upgrade", "websocket")], h11), refused);
        assert_eq!(
            asked(
                &[("upgrade", "websocket, foo"), ("connection", "upgrade")],
                h11
            ),
            refused
        );
        assert_eq!(asked(&ws, Version::HTTP_10), refused);
        let with_body = [ws[0], ws[1], ("content-length", "5")];
        assert_eq!(asked(&with_body, h11), refused);
    }

    #[test]
    fn only_chunked_bodies_and_no_upgrades() {
        let h11 = Version::HTTP_11;
        let kind = |hs: &[(&str, &str)]| check_protocol(&head(hs, "/", h11)).map_err(|r| r.kind);
        assert_eq!(kind(&[("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(
            kind(&[("transfer-encoding", "gzip, chunked")]),
            Err(RefusalKind::UnsupportedTransferCoding)
        );
        assert_eq!(
            kind(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]),
            Err(RefusalKind::UnsupportedTransferCoding)
        );
        assert_eq!(
            kind(&[("upgrade", "websocket")]),
            Ok(()),
            "decided by the route"
        );
        assert_eq!(kind(&[("upgrade", "h2c")]), Ok(()));
        assert_eq!(kind(&[("expect", "100-Continue")]), Ok(()));
        assert_eq!(
            kind(&[("expect", "200-ok")]),
            Err(RefusalKind::ExpectationFailed)
        );
    }

    #[test]
    fn forwarding_headers_in_every_spelling() {
        for n in [
            "x-forwarded-for",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-forwarded-ssl",
            "x_forwarded_for",
            "forwarded",
            "x-real-ip",
            "cf-connecting-ip",
            "x-original-forwarded-for",
        ] {
            assert!(is_forwarding(&HeaderName::from_static(n)), "{n}");
        }
        assert!(!is_forwarding(&HeaderName::from_static("x-forwardedness")));
    }

    #[test]
    fn trusted_forwarded_for_keeps_every_line_in_order() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("3.3.3.3"));
        let ip = "9.9.9.9".parse().unwrap();
        set_forwarding_headers(&mut h, ip, None, "http", true);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 9.9.9.9"]
        );
        h.insert("x-real-ip", HeaderValue::from_static("1.1.1.1"));
        // X-Forwarded-For and -Proto from the call above, and X-Real-IP.
        assert_eq!(set_forwarding_headers(&mut h, ip, None, "http", false), 3);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "9.9.9.9");
        assert!(h.get("x-real-ip").is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn tricky_host() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "a",
                "B",
                "xn--",
                "-",
                ".",
                "..",
                ":",
                "80",
                "065535",
                "65536",
                "0",
                "@",
                "[",
                "]",
                "::1",
                "::FFFF:1.2.3.4",
                "%2e",
                "_",
                "~",
                ",",
                ";",
                " ",
                "\u{e9}",
                "/",
                "\\",
            ]);
            prop::collection::vec(piece, 0..10).prop_map(|ps| ps.concat())
        }

        /// What every accepted host must be: one spelling, which parses
        /// back to itself, that no upstream can split or decode further.
        fn check(h: &Host) -> Result<(), TestCaseError> {
            let a = h.authority();
            prop_assert_eq!(Host::parse(&a), Ok(h.clone()));
            prop_assert_eq!(h.name.to_ascii_lowercase(), h.name.clone());
            prop_assert!(!h.name.ends_with('.') && !h.name.is_empty());
            prop_assert!(!a.contains(['@', '%', ',', ';', '/', '\\', ' ']), "{}", a);
            prop_assert!(h.port != Some(0));
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn a_parsed_host_is_one_spelling(raw in tricky_host()) {
                if let Ok(h) = Host::parse(&raw) {
                    check(&h)?;
                }
            }

            #[test]
            fn any_text_parses_to_one_spelling_or_is_refused(raw in "\\PC{0,30}") {
                if let Ok(h) = Host::parse(&raw) {
                    check(&h)?;
                }
            }
        }
    }
}
