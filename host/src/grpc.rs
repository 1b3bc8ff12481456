//! What the gateway knows of gRPC: which requests are calls, the client's
//! deadline (`grpc-timeout`), and how an answer the gateway or a filter
//! made is given to a gRPC client: as a trailers-only response whose
//! `grpc-status` stands for the HTTP status, since a gRPC client reads no
//! HTTP error body.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::time::Duration;

/// Whether a request is a gRPC call (`application/grpc`, `+proto`, …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The client's deadline: `grpc-timeout`, 1 to 8 digits and a unit (`H`,
/// `M`, `S`, `m`, `u`, `n`). None when absent or malformed, as gRPC
/// servers treat it.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status an HTTP status stands for: gRPC's own mapping, except
/// that 429 (a rate limit) is RESOURCE_EXHAUSTED rather than UNAVAILABLE,
/// so clients do not retry into the limit, and 504 (the deadline passed)
/// is DEADLINE_EXCEEDED.
pub fn status_for(http: StatusCode) -> u8 {
    match http.as_u16() {
        400 => 13,       // INTERNAL
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 | 501 => 12, // UNIMPLEMENTED
        408 | 504 => 4,  // DEADLINE_EXCEEDED
        413 | 429 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14, // UNAVAILABLE
        200..=299 => 0,  // OK
        _ => 2,          // UNKNOWN
    }
}

/// `resp` as a trailers-only gRPC answer: HTTP 200, `application/grpc`,
/// `grpc-status` and `grpc-message` in the head, `empty` as the body. The
/// message is the gateway's error code (`x-gateway-error`), kept too, or
/// the HTTP status a filter answered with; other headers stay.
pub fn trailers_only<B>(resp: Response<B>, empty: B) -> Response<B> {
    let (mut parts, _) = resp.into_parts();
    let code = status_for(parts.status);
    let message = match parts.headers.get("x-gateway-error") {
        Some(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        None => format!("HTTP {}", parts.status.as_u16()),
    };
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(CONTENT_LENGTH);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        h.insert("grpc-message", v);
    }
    Response::from_parts(parts, empty)
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as
/// `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn calls_are_told_by_their_content_type() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "Application/GRPC;x=1"
        )])));
        assert!(!is_grpc(&headers(&[(
            "content-type",
            "application/grpc-web"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
        assert!(!is_grpc(&headers(&[])));
    }

    #[test]
    fn deadlines_read_as_grpc_writes_them() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("123456789m"), None, "more than 8 digits");
        assert_eq!(t("10x"), None);
        assert_eq!(t("m"), None);
        assert_eq!(t("-1S"), None);
    }

    #[test]
    fn answers_become_trailers_only_with_a_status_that_stands_for_them() {
        let resp = Response::builder()
            .status(401)
            .header("content-type", "text/plain")
            .header("content-length", "12")
            .header("www-authenticate", "Bearer")
            .body("unauthorised")
            .unwrap();
        let g = trailers_only(resp, "");
        assert_eq!(g.status(), 200);
        assert_eq!(g.headers()["content-type"], "application/grpc");
        assert_eq!(g.headers()["grpc-status"], "16");
        assert_eq!(g.headers()["grpc-message"], "HTTP 401");
        assert_eq!(g.headers()["www-authenticate"], "Bearer");
        assert!(g.headers().get("content-length").is_none());
        assert_eq!(status_for(StatusCode::TOO_MANY_REQUESTS), 8);
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_for(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(percent_encode("50% off\n"), "50%25 off%0A");
    }
}
