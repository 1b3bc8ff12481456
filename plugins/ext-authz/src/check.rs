//! One authorisation check as pure functions: the request sent to the
//! service, the key its allow answer is cached under, what its answer
//! decides, and the bytes a cached allow is kept as.

use crate::config::Settings;
use filter_sdk::v2::{Header, OutboundRequest, OutboundResponse, label_enum};
use sha2::{Digest, Sha256};

/// The largest body of a deny answer passed to the client; a larger one is
/// dropped (the status and headers still are).
pub const MAX_DENY_BODY: usize = 64 * 1024;

/// What the filter knows of the client's request.
pub struct Incoming<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub scheme: &'a str,
    /// "ip:port".
    pub client_addr: &'a str,
    pub request_id: &'a str,
    /// The values of `headers_to_send` the request carries, in the
    /// setting's order, several values of a name one after the other.
    pub headers: Vec<Header>,
}

/// The check sent to the service: the client's method (or the configured
/// one) and path under `path_prefix`, no body, the chosen headers and the
/// gateway's own.
pub fn outbound(s: &Settings, r: Incoming) -> OutboundRequest {
    let mut path_and_query = format!("{}{}", s.path_prefix, r.path);
    if let Some(q) = r.query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let mut headers: Vec<Header> = vec![
        ("x-request-id".into(), r.request_id.as_bytes().to_vec()),
        ("x-forwarded-proto".into(), r.scheme.as_bytes().to_vec()),
        (
            "x-forwarded-for".into(),
            client_ip(r.client_addr).as_bytes().to_vec(),
        ),
    ];
    if let Some(host) = r.authority {
        headers.push(("x-forwarded-host".into(), host.as_bytes().to_vec()));
    }
    headers.extend(r.headers);
    OutboundRequest {
        cluster: s.cluster.clone(),
        method: s.method.clone().unwrap_or_else(|| r.method.to_string()),
        path_and_query,
        headers,
        body: Vec::new(),
        timeout_ms: s.timeout_ms,
    }
}

/// The address without its port (and an IPv6 one without brackets).
fn client_ip(addr: &str) -> &str {
    let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
    ip.trim_start_matches('[').trim_end_matches(']')
}

/// The kv key of a check's cached allow: a digest of everything sent but
/// the request id, so two requests share an answer only when the service
/// would have seen the same check.
pub fn cache_key(check: &OutboundRequest) -> String {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(check.method.as_bytes());
    field(check.path_and_query.as_bytes());
    for (name, value) in check.headers.iter().filter(|(n, _)| n != "x-request-id") {
        field(name.as_bytes());
        field(value);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("allow:{hex}")
}

label_enum! {
    /// A check's result (the `result` of `decisions`).
    pub enum Verdict {
        Allow => "allow",
        Deny => "deny",
        /// The service could not answer; the failure policy decided.
        Error => "error",
        /// An allow reused from kv, no check sent.
        CacheHit => "cache_hit",
    }
}

label_enum! {
    /// Why a check failed (the `reason` of `errors`): the callout's error,
    /// or a 5xx from the service.
    pub enum Failure {
        NotAllowed => "not_allowed",
        InvalidRequest => "invalid_request",
        Unavailable => "unavailable",
        Failed => "failed",
        Timeout => "timeout",
        ResponseTooLarge => "response_too_large",
        TooManyCalls => "too_many_calls",
        Status5xx => "status_5xx",
        /// An allow whose headers the request could not take (too many,
        /// too large).
        AnswerHeader => "answer_header",
    }
}

impl Failure {
    /// The failure of a callout error, by its kind.
    pub fn of_kind(kind: &str) -> Failure {
        Failure::ALL
            .iter()
            .copied()
            .find(|f| f.label() == kind)
            .unwrap_or(Failure::Failed)
    }
}

/// What the service's answer decides.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: the request goes on with these headers set on it.
    Allow(Vec<Header>),
    /// 3xx and 4xx (a 1xx as 403): the client gets this answer.
    Deny {
        status: u16,
        headers: Vec<Header>,
        body: Vec<u8>,
    },
    /// 5xx: the service is failing, as if it had not answered.
    Error(Failure),
}

pub fn decide(s: &Settings, answer: OutboundResponse) -> Decision {
    let pick = |names: &[String], headers: &[Header]| -> Vec<Header> {
        names
            .iter()
            .flat_map(|n| {
                headers
                    .iter()
                    .filter(move |(h, _)| h.eq_ignore_ascii_case(n))
            })
            .filter(|(_, v)| valid_value(v))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    match answer.status {
        200..=299 => Decision::Allow(pick(&s.headers_from_authz, &answer.headers)),
        500..=599 => Decision::Error(Failure::Status5xx),
        status => {
            let mut headers = pick(&s.headers_to_client, &answer.headers);
            let body = if answer.body.len() <= MAX_DENY_BODY {
                answer.body
            } else {
                Vec::new()
            };
            if !body.is_empty() && !headers.iter().any(|(n, _)| n == "content-type") {
                let content_type = answer
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-type"));
                if let Some((_, v)) = content_type {
                    headers.push(("content-type".into(), v.clone()));
                }
            }
            Decision::Deny {
                status: if (300..=499).contains(&status) {
                    status
                } else {
                    403
                },
                headers,
                body,
            }
        }
    }
}

/// A value the gateway accepts in a header: at most 8 KiB, no control
/// characters but tab. Others are dropped rather than failing the call.
fn valid_value(v: &[u8]) -> bool {
    v.len() <= 8 * 1024 && v.iter().all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// A cached allow's headers as kv bytes: a count, then each name and value
/// with a two-byte length (names and values are at most 8 KiB).
pub fn encode_allow(headers: &[Header]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend((headers.len() as u16).to_be_bytes());
    for (name, value) in headers {
        for part in [name.as_bytes(), value.as_slice()] {
            let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
            out.extend(len.to_be_bytes());
            out.extend(&part[..usize::from(len)]);
        }
    }
    out
}

/// The headers of a cached allow; `None` for bytes that are not one.
pub fn decode_allow(bytes: &[u8]) -> Option<Vec<Header>> {
    let mut r = Reader(bytes);
    let count = r.len()?;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = r.len()?;
        let name = String::from_utf8(r.take(n)?.to_vec()).ok()?;
        let n = r.len()?;
        headers.push((name, r.take(n)?.to_vec()));
    }
    r.0.is_empty().then_some(headers)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn len(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn settings() -> Settings {
        parse(
            r#"{"cluster": "authz", "path_prefix": "/check",
                "headers_from_authz": ["x-user", "x-scopes"],
                "headers_to_client": ["www-authenticate"], "timeout_ms": 100}"#,
        )
        .unwrap()
    }

    fn incoming(request_id: &str, authorization: &str) -> Incoming<'static> {
        Incoming {
            method: "GET",
            path: "/orders/1",
            query: Some("full=1"),
            authority: Some("api.example.com"),
            scheme: "https",
            client_addr: "[2001:db8::1]:5123",
            request_id: Box::leak(request_id.to_string().into_boxed_str()),
            headers: vec![("authorization".into(), authorization.as_bytes().to_vec())],
        }
    }

    fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn the_check_keeps_method_and_path_under_the_prefix_without_a_body() {
        let check = outbound(&settings(), incoming("r1", "Bearer a"));
        assert_eq!(check.cluster, "authz");
        assert_eq!(check.method, "GET");
        assert_eq!(check.path_and_query, "/check/orders/1?full=1");
        assert!(check.body.is_empty());
        assert_eq!(check.timeout_ms, Some(100));
        let h = &check.headers;
        assert_eq!(header(h, "x-request-id"), Some("r1"));
        assert_eq!(header(h, "x-forwarded-for"), Some("2001:db8::1"));
        assert_eq!(header(h, "x-forwarded-proto"), Some("https"));
        assert_eq!(header(h, "x-forwarded-host"), Some("api.example.com"));
        assert_eq!(header(h, "authorization"), Some("Bearer a"));
        let mut s = settings();
        s.method = Some("POST".into());
        s.path_prefix = String::new();
        let mut r = incoming("r1", "Bearer a");
        r.query = None;
        let check = outbound(&s, r);
        assert_eq!(
            (check.method.as_str(), check.path_and_query.as_str()),
            ("POST", "/orders/1")
        );
        assert_eq!(client_ip("10.0.0.1:80"), "10.0.0.1");
    }

    #[test]
    fn the_cache_key_covers_what_was_sent_but_the_request_id() {
        let s = settings();
        let key = |id, auth| cache_key(&outbound(&s, incoming(id, auth)));
        let k = key("r1", "Bearer a");
        assert!(k.starts_with("allow:") && k.len() == 6 + 64);
        assert_eq!(k, key("r2", "Bearer a"));
        assert_ne!(k, key("r1", "Bearer b"));
        let mut other_path = incoming("r1", "Bearer a");
        other_path.path = "/orders/2";
        assert_ne!(k, cache_key(&outbound(&s, other_path)));
        let mut other_method = incoming("r1", "Bearer a");
        other_method.method = "DELETE";
        assert_ne!(k, cache_key(&outbound(&s, other_method)));
        let mut other_client = incoming("r1", "Bearer a");
        other_client.client_addr = "10.0.0.1:1";
        assert_ne!(k, cache_key(&outbound(&s, other_client)));
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> OutboundResponse {
        OutboundResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_2xx_allows_with_the_chosen_headers() {
        let d = decide(
            &settings(),
            answer(
                204,
                &[
                    ("X-User", "alice"),
                    ("x-scopes", "a"),
                    ("x-scopes", "b\r\nx-injected: 1"),
                    ("x-scopes", "b"),
                    ("x-other", "no"),
                ],
                b"",
            ),
        );
        assert_eq!(
            d,
            Decision::Allow(vec![
                ("x-user".into(), b"alice".to_vec()),
                ("x-scopes".into(), b"a".to_vec()),
                ("x-scopes".into(), b"b".to_vec()),
            ])
        );
    }

    #[test]
    fn other_answers_deny_with_their_status_and_5xx_fails() {
        let d = decide(
            &settings(),
            answer(
                401,
                &[
                    ("www-authenticate", "Bearer"),
                    ("content-type", "application/json"),
                    ("x-user", "no"),
                ],
                b"{\"error\":\"expired\"}",
            ),
        );
        assert_eq!(
            d,
            Decision::Deny {
                status: 401,
                headers: vec![
                    ("www-authenticate".into(), b"Bearer".to_vec()),
                    ("content-type".into(), b"application/json".to_vec()),
                ],
                body: b"{\"error\":\"expired\"}".to_vec(),
            }
        );
        let Decision::Deny {
            status,
            headers,
            body,
        } = decide(
            &settings(),
            answer(
                403,
                &[("content-type", "text/plain")],
                &vec![b'x'; MAX_DENY_BODY + 1],
            ),
        )
        else {
            panic!("a deny");
        };
        // The body is over the bound: dropped, and its type with it.
        assert_eq!((status, headers.len(), body.len()), (403, 0, 0));
        assert!(matches!(
            decide(&settings(), answer(302, &[], b"")),
            Decision::Deny { status: 302, .. }
        ));
        assert!(matches!(
            decide(&settings(), answer(101, &[], b"")),
            Decision::Deny { status: 403, .. }
        ));
        assert_eq!(
            decide(&settings(), answer(503, &[], b"")),
            Decision::Error(Failure::Status5xx)
        );
    }

    #[test]
    fn callout_errors_map_to_failures_by_kind() {
        use filter_sdk::v2::CalloutError;
        for (e, f) in [
            (CalloutError::Timeout, Failure::Timeout),
            (CalloutError::Unavailable("x".into()), Failure::Unavailable),
            (CalloutError::NotAllowed("x".into()), Failure::NotAllowed),
            (CalloutError::TooManyCalls, Failure::TooManyCalls),
        ] {
            assert_eq!(Failure::of_kind(e.kind()), f);
        }
    }

    #[test]
    fn cached_allows_round_trip() {
        let headers = vec![
            ("x-user".to_string(), b"alice".to_vec()),
            ("x-bin".to_string(), vec![0, 255]),
        ];
        assert_eq!(decode_allow(&encode_allow(&headers)), Some(headers));
        assert_eq!(decode_allow(&encode_allow(&[])), Some(vec![]));
        let bytes = encode_allow(&[("x-user".to_string(), b"alice".to_vec())]);
        assert_eq!(decode_allow(&bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_allow(&longer), None);
    }
}
