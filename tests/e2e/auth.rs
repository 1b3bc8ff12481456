//! End-to-end behaviour of the auth plugin through the real gateway: which
//! credentials pass, which are refused with which status, challenge and
//! reason, what later filters and the upstream see, what is counted, and
//! which configurations `gateway check` refuses.
//!
//! Tokens are signed here with the test-only keys in tests/fixtures/auth.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HS_SECRET: &str = "test-only-hs256-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "gateway-tests";
/// The API keys the tests present; the config holds only their hashes.
const KEY_BILLING: &str = "test-key-billing-5f1c0a";
const KEY_READONLY: &str = "test-key-no-scopes-77b2e4";
const METRIC: &str = "gateway_plugin_auth_attempts_total";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/auth").join(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Base64url without padding, for tokens crafted by hand.
fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Claims that pass the main test config: its issuer and audience, a
/// subject, a tenant, the scope every route needs, ten minutes to live.
/// Keys in `changes` replace the defaults; a null removes the claim.
fn claims(changes: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "tenant": "acme",
        "scope": "orders:read",
        "iat": now(),
        "exp": now() + 600,
    });
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::RS256 | Algorithm::RS384 => {
            EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap()
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    sign_with(alg, kid, &key, claims)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn upstream_block(u: &Upstream) -> String {
    format!("[upstreams.up]\ninstances = [\"{}\"]\n\n", u.addr)
}

/// A probe after auth that copies one context key into `x-context`.
fn reader(name: &str, key: &str) -> String {
    format!(
        "[filters.{name}]\nplugin = \"probe\"\n[filters.{name}.config]\nname = \"{name}\"\nread_context = \"{key}\"\n\n"
    )
}

/// The main filter: every kind of key, issuer and audience checks, API keys
/// in a header or the query, scopes per route, one anonymous route.
fn auth_filter(name: &str, extra: &str) -> String {
    format!(
        r#"[filters.{name}]
plugin = "auth"
[filters.{name}.config]
realm = "test"
api_key_query = "api_key"
required_scopes = ["orders:read"]
{extra}
[filters.{name}.config.jwt]
iss = ["{ISSUER}"]
aud = ["{AUDIENCE}", "other-audience"]
required_claims = ["exp", "sub"]

[[filters.{name}.config.jwt.keys]]
kid = "hs"
alg = "HS256"
secret = "{HS_SECRET}"

[[filters.{name}.config.jwt.keys]]
kid = "rsa"
alg = "RS256"
pem = '''
{rsa}'''

[[filters.{name}.config.jwt.keys]]
kid = "ec"
alg = "ES256"
pem = '''
{ec}'''

[[filters.{name}.config.api_keys]]
sha256 = "{billing}"
subject = "svc-billing"
tenant = "globex"
scopes = ["orders:read", "orders:write"]

[[filters.{name}.config.api_keys]]
sha256 = "{readonly}"
subject = "svc-no-scopes"

[filters.{name}.config.routes.admin]
scopes = ["admin"]

[filters.{name}.config.routes.public]
anonymous = true

"#,
        rsa = fixture("rsa_public.pem"),
        ec = fixture("ec_public.pem"),
        billing = sha256_hex(KEY_BILLING),
        readonly = sha256_hex(KEY_READONLY),
    )
}

/// One route per context key to read, plus `admin` (needs scope `admin`)
/// and `public` (anonymous).
fn start(up: &Upstream) -> Gateway {
    let mut body = upstream_block(up);
    body.push_str(&auth_filter("auth", ""));
    for (route, key) in [
        ("tenant", "tenant"),
        ("subject", "subject"),
        ("method", "auth.method"),
        ("scopes", "scopes"),
        ("public", "subject"),
    ] {
        body.push_str(&reader(&format!("read-{route}"), key));
        body.push_str(&format!(
            "[[route]]\nid = \"{route}\"\npath_prefix = \"/{route}\"\nupstream = \"up\"\nfilters = [\"auth\", \"read-{route}\"]\n\n"
        ));
    }
    body.push_str(
        "[[route]]\nid = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"up\"\nfilters = [\"auth\"]\n\n",
    );
    Gateway::start(&body)
}

fn attempts(gw: &Gateway, method: &str, result: &str, reason: &str) -> Option<f64> {
    metric(
        &gw.metrics(),
        METRIC,
        &[("method", method), ("result", result), ("reason", reason)],
    )
}

/// Asserts a 401 for an invalid credential: the RFC 6750 challenge with the
/// reason, the JSON body, and that the upstream never saw the request.
fn assert_invalid(r: &RawResponse, reason: &str) {
    assert_invalid_in("test", r, reason);
}

fn assert_invalid_in(realm: &str, r: &RawResponse, reason: &str) {
    assert_eq!(r.status, 401, "expected {reason}: {}", r.body_text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{reason}\""
            )
            .as_str()
        )
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body_text(),
        format!("{{\"error\":\"invalid_token\",\"reason\":\"{reason}\"}}\n")
    );
}

#[test]
fn hs256_rs256_and_es256_tokens_pass_and_set_the_context() {
    let up = Upstream::start("up");
    let gw = start(&up);
    let cases = [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
    ];
    for (alg, kid) in cases {
        let t = sign(
            alg,
            Some(kid),
            &claims(json!({"sub": format!("user-{kid}"), "tenant": format!("tenant-{kid}")})),
        );
        let r = gw.get("/tenant", &[("authorization", &bearer(&t))]);
        assert_eq!(r.status, 200, "{alg:?}: {}", r.body_text());
        let seen = up.last();
        assert_eq!(
            seen.header("x-context"),
            Some(format!("tenant-{kid}").as_str())
        );
        assert_eq!(
            seen.header("authorization"),
            Some(bearer(&t).as_str()),
            "kept by default"
        );
        let r = gw.get("/subject", &[("authorization", &bearer(&t))]);
        assert_eq!(r.status, 200);
        assert_eq!(
            up.last().header("x-context"),
            Some(format!("user-{kid}").as_str())
        );
    }
    // Without a kid, the keys of the token's algorithm are tried.
    let t = sign(Algorithm::ES256, None, &claims(json!({})));
    let r = gw.get("/method", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-context"), Some("jwt"));
    // `scp` as an array is read when `scope` is absent; scopes pass on sorted.
    let t = sign(
        Algorithm::RS256,
        Some("rsa"),
        &claims(json!({"scope": null, "scp": ["orders:read", "admin"]})),
    );
    let r = gw.get("/scopes", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-context"), Some("admin orders:read"));
    let r = gw.get("/admin", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 200);
    // A token whose `aud` is an array passes when one entry is accepted.
    let t = sign(
        Algorithm::HS256,
        Some("hs"),
        &claims(json!({"aud": ["someone-else", "other-audience"]})),
    );
    assert_eq!(
        gw.get("/tenant", &[("authorization", &bearer(&t))]).status,
        200
    );

    assert_eq!(attempts(&gw, "jwt", "allowed", "ok"), Some(10.0));
    assert_eq!(up.count(), 10);
}

#[test]
fn the_auth_filter_is_called_on_the_way_in_only_as_its_plugin_declares() {
    let up = Upstream::start("up");
    let gw = start(&up);
    for _ in 0..3 {
        let r = gw.get("/tenant", &[("x-api-key", KEY_BILLING)]);
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let calls = |filter: &str, phase: &str| {
        metric(
            &gw.metrics(),
            "gateway_plugin_calls_total",
            &[("filter", filter), ("phase", phase)],
        )
    };
    // The SDK's `RESPONSE_PHASE = false`, read from the plugin at load.
    assert_eq!(calls("auth", "request"), Some(3.0));
    assert_eq!(calls("auth", "response"), Some(0.0));
    // A plugin without the section (the probe is built without the SDK)
    // gets both calls, as 0.1.0 plugins do.
    assert_eq!(calls("read-tenant", "request"), Some(3.0));
    assert_eq!(calls("read-tenant", "response"), Some(3.0));
    assert_eq!(up.last().header("x-context"), Some("globex"));
}

#[test]
fn invalid_tokens_are_refused_with_their_reason_and_counted() {
    let up = Upstream::start("up");
    let gw = start(&up);
    let good = sign(Algorithm::RS256, Some("rsa"), &claims(json!({})));
    let [h, p, s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let other = sign(
        Algorithm::RS256,
        Some("rsa"),
        &claims(json!({"sub": "admin", "scope": "orders:read admin"})),
    );
    let other_payload = other.split('.').nth(1).unwrap();
    // One character of the signature changed, away from the last one whose
    // low bits base64 may ignore.
    let mut sig = s.as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let tampered_sig = format!("{h}.{p}.{}", String::from_utf8(sig).unwrap());
    let alg_none = format!("{}.{p}.", b64url(br#"{"alg":"none","typ":"JWT"}"#));
    // Algorithm confusion: an HS256 token keyed with the RSA public key's
    // PEM, which an attacker can read. Named for the RSA key, and unnamed.
    let rsa_pem_as_secret = EncodingKey::from_secret(fixture("rsa_public.pem").as_bytes());
    let confused_kid = sign_with(
        Algorithm::HS256,
        Some("rsa"),
        &rsa_pem_as_secret,
        &claims(json!({})),
    );
    let confused = sign_with(
        Algorithm::HS256,
        None,
        &rsa_pem_as_secret,
        &claims(json!({})),
    );
    let hs = |c: Value| sign(Algorithm::HS256, Some("hs"), &claims(c));

    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", hs(json!({"exp": now() - 3600})), "expired"),
        (
            "not yet valid",
            hs(json!({"nbf": now() + 3600})),
            "not_yet_valid",
        ),
        (
            "wrong audience",
            hs(json!({"aud": "someone-else"})),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            hs(json!({"iss": "https://evil.test"})),
            "wrong_issuer",
        ),
        (
            "no sub (required)",
            hs(json!({"sub": null})),
            "missing_claim",
        ),
        (
            "no exp (required by default)",
            hs(json!({"exp": null})),
            "missing_claim",
        ),
        (
            "tampered payload",
            format!("{h}.{other_payload}.{s}"),
            "bad_signature",
        ),
        ("tampered signature", tampered_sig, "bad_signature"),
        ("alg none", alg_none, "alg_not_allowed"),
        (
            "HS256 keyed with the RSA PEM, kid rsa",
            confused_kid,
            "alg_not_allowed",
        ),
        (
            "HS256 keyed with the RSA PEM, no kid",
            confused,
            "bad_signature",
        ),
        (
            "unknown kid",
            sign(Algorithm::ES256, Some("nope"), &claims(json!({}))),
            "unknown_key",
        ),
        (
            "RS384",
            sign(Algorithm::RS384, Some("rsa"), &claims(json!({}))),
            "alg_not_allowed",
        ),
        ("two segments", format!("{h}.{p}"), "malformed"),
        ("empty token", String::new(), "malformed"),
        (
            "header not JSON",
            format!("{}.{p}.{s}", b64url(b"nope")),
            "malformed",
        ),
    ];
    for (what, token, reason) in &cases {
        let r = gw.get("/tenant", &[("authorization", &bearer(token))]);
        assert_eq!(
            r.header("www-authenticate")
                .and_then(|c| c.split("error_description=").nth(1)),
            Some(format!("\"{reason}\"").as_str()),
            "{what}"
        );
        assert_invalid(&r, reason);
    }
    assert_eq!(up.count(), 0, "no invalid token reached the upstream");

    let m = gw.metrics();
    let mut expected: std::collections::BTreeMap<&str, f64> = Default::default();
    for (_, _, reason) in &cases {
        *expected.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in expected {
        assert_eq!(
            metric(
                &m,
                METRIC,
                &[("method", "jwt"), ("result", "denied"), ("reason", reason)]
            ),
            Some(n),
            "{reason}"
        );
    }
    assert_eq!(
        metric(&m, METRIC, &[("method", "jwt"), ("result", "allowed")]),
        Some(0.0),
        "nothing was allowed"
    );
    // A valid token still passes on the same instances.
    assert_eq!(
        gw.get("/tenant", &[("authorization", &bearer(&good))])
            .status,
        200
    );
}

#[test]
fn leeway_tolerates_small_clock_skew() {
    let up = Upstream::start("up");
    let gw = start(&up);
    // Expired 10 s ago and valid from 10 s ahead: inside the default 30 s.
    let t = sign(
        Algorithm::HS256,
        Some("hs"),
        &claims(json!({"exp": now() - 10})),
    );
    assert_eq!(
        gw.get("/tenant", &[("authorization", &bearer(&t))]).status,
        200
    );
    let t = sign(
        Algorithm::HS256,
        Some("hs"),
        &claims(json!({"nbf": now() + 10})),
    );
    assert_eq!(
        gw.get("/tenant", &[("authorization", &bearer(&t))]).status,
        200
    );
}

#[test]
fn rs256_and_es256_keys_from_a_jwks_file() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[filters.auth]\nplugin = \"auth\"\n[filters.auth.config]\n[filters.auth.config_files]\njwks = \"{}\"\n\n{}\
         [[route]]\nid = \"r\"\nupstream = \"up\"\nfilters = [\"auth\", \"read\"]\n",
        upstream_block(&up),
        repo().join("tests/fixtures/auth/jwks.json").display(),
        reader("read", "subject"),
    ));
    for (alg, kid) in [
        (Algorithm::RS256, "test-rsa-1"),
        (Algorithm::ES256, "test-ec-1"),
    ] {
        let t = sign(alg, Some(kid), &claims(json!({"sub": kid})));
        let r = gw.get("/", &[("authorization", &bearer(&t))]);
        assert_eq!(r.status, 200, "{kid}: {}", r.body_text());
        assert_eq!(up.last().header("x-context"), Some(kid));
    }
    // The JWKS key is RS256 only: an ES256 token naming it is refused.
    let t = sign(Algorithm::ES256, Some("test-rsa-1"), &claims(json!({})));
    assert_invalid_in(
        "gateway",
        &gw.get("/", &[("authorization", &bearer(&t))]),
        "alg_not_allowed",
    );
    let t = sign(Algorithm::RS256, Some("rotated-away"), &claims(json!({})));
    assert_invalid_in(
        "gateway",
        &gw.get("/", &[("authorization", &bearer(&t))]),
        "unknown_key",
    );
}

#[test]
fn api_keys_by_hash_in_header_or_query() {
    let up = Upstream::start("up");
    let gw = start(&up);
    let r = gw.get("/tenant", &[("x-api-key", KEY_BILLING)]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-context"), Some("globex"));
    assert_eq!(
        up.last().header("x-api-key"),
        Some(KEY_BILLING),
        "kept by default"
    );
    gw.get("/method", &[("x-api-key", KEY_BILLING)]);
    assert_eq!(up.last().header("x-context"), Some("api_key"));
    gw.get("/scopes", &[("x-api-key", KEY_BILLING)]);
    assert_eq!(
        up.last().header("x-context"),
        Some("orders:read orders:write")
    );
    // In the query, percent-encoded like any parameter.
    let r = gw.get(
        &format!("/subject?x=1&api_key={}", KEY_BILLING.replace('-', "%2D")),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-context"), Some("svc-billing"));

    let before = up.count();
    let r = gw.get("/tenant", &[("x-api-key", "test-key-guessed")]);
    assert_invalid(&r, "unknown_api_key");
    let r = gw.get("/tenant?api_key=test-key-guessed", &[]);
    assert_invalid(&r, "unknown_api_key");
    // Twice in the query: which one counts would be a guess.
    let r = gw.get(&format!("/tenant?api_key={KEY_BILLING}&api_key=other"), &[]);
    assert_invalid(&r, "malformed");
    assert_eq!(up.count(), before);

    assert_eq!(attempts(&gw, "api_key", "allowed", "ok"), Some(4.0));
    assert_eq!(
        attempts(&gw, "api_key", "denied", "unknown_api_key"),
        Some(2.0)
    );
    assert_eq!(attempts(&gw, "api_key", "denied", "malformed"), Some(1.0));
}

#[test]
fn missing_credentials_get_a_bare_challenge() {
    let up = Upstream::start("up");
    let gw = start(&up);
    // A scheme other than Bearer is not a credential this filter reads.
    for headers in [vec![], vec![("authorization", "Basic dXNlcjpwYXNz")]] {
        let r = gw.get("/tenant", &headers);
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"test\""));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.body_text(),
            "{\"error\":\"unauthorized\",\"reason\":\"missing\"}\n"
        );
    }
    assert_eq!(up.count(), 0);
    assert_eq!(attempts(&gw, "none", "denied", "missing"), Some(2.0));
}

#[test]
fn insufficient_scope_is_403_naming_the_scope() {
    let up = Upstream::start("up");
    let gw = start(&up);
    // The route `admin` overrides the filter's `orders:read` with `admin`.
    let t = sign(Algorithm::HS256, Some("hs"), &claims(json!({})));
    let r = gw.get("/admin", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"test\", error=\"insufficient_scope\", scope=\"admin\"")
    );
    assert_eq!(
        r.body_text(),
        "{\"error\":\"insufficient_scope\",\"reason\":\"insufficient_scope\"}\n"
    );
    // Every other route needs the filter-wide `orders:read`.
    let t = sign(
        Algorithm::HS256,
        Some("hs"),
        &claims(json!({"scope": "orders:write"})),
    );
    let r = gw.get("/tenant", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"test\", error=\"insufficient_scope\", scope=\"orders:read\"")
    );
    let r = gw.get("/tenant", &[("x-api-key", KEY_READONLY)]);
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), 0);
    assert_eq!(
        attempts(&gw, "jwt", "denied", "insufficient_scope"),
        Some(2.0)
    );
    assert_eq!(
        attempts(&gw, "api_key", "denied", "insufficient_scope"),
        Some(1.0)
    );
}

#[test]
fn anonymous_route_passes_without_credentials_but_checks_given_ones() {
    let up = Upstream::start("up");
    let gw = start(&up);
    let r = gw.get("/public", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("x-context"),
        Some("<none>"),
        "no identity set"
    );
    // Credentials given on an anonymous route are still verified and used.
    let t = sign(
        Algorithm::ES256,
        Some("ec"),
        &claims(json!({"scope": null})),
    );
    let r = gw.get("/public", &[("authorization", &bearer(&t))]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-context"), Some("user-42"));
    let t = sign(
        Algorithm::ES256,
        Some("ec"),
        &claims(json!({"exp": now() - 3600})),
    );
    assert_invalid(
        &gw.get("/public", &[("authorization", &bearer(&t))]),
        "expired",
    );
    // The other routes still need credentials.
    assert_eq!(gw.get("/tenant", &[]).status, 401);
    assert_eq!(attempts(&gw, "none", "allowed", "missing"), Some(1.0));
    assert_eq!(attempts(&gw, "none", "denied", "missing"), Some(1.0));
}

#[test]
fn strip_credentials_removes_them_before_the_upstream() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}[[route]]\nid = \"r\"\nupstream = \"up\"\nfilters = [\"auth\"]\n{}",
        upstream_block(&up),
        // A key in the query cannot be stripped, so that source is off here.
        auth_filter("auth", "strip_credentials = true")
            .replace("api_key_query = \"api_key\"\n", ""),
        // The routes the filter's settings name must exist.
        "[[route]]\nid = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"up\"\n\
         [[route]]\nid = \"public\"\npath_prefix = \"/public\"\nupstream = \"up\"\n",
    ));
    let t = sign(Algorithm::HS256, Some("hs"), &claims(json!({})));
    let r = gw.get("/", &[("authorization", &bearer(&t)), ("x-kept", "yes")]);
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-kept"), Some("yes"));
    let r = gw.get("/", &[("x-api-key", KEY_BILLING)]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-api-key"), None);
}

#[test]
fn a_cached_token_is_refused_once_it_expires() {
    let up = Upstream::start("up");
    // One warm instance, so the second request meets the token the first
    // one cached; no leeway, so expiry is exact.
    let gw = Gateway::start(&format!(
        "{}[filters.auth]\nplugin = \"auth\"\ninstances = 1\n[filters.auth.config]\n[filters.auth.config.jwt]\nleeway = 0\n\
         [[filters.auth.config.jwt.keys]]\nalg = \"HS256\"\nsecret = \"{HS_SECRET}\"\n\n\
         [[route]]\nid = \"r\"\nupstream = \"up\"\nfilters = [\"auth\"]\n",
        upstream_block(&up),
    ));
    let exp = now() + 2;
    let t = sign(Algorithm::HS256, None, &claims(json!({"exp": exp})));
    for _ in 0..3 {
        assert_eq!(gw.get("/", &[("authorization", &bearer(&t))]).status, 200);
    }
    while now() < exp {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_invalid_in(
        "gateway",
        &gw.get("/", &[("authorization", &bearer(&t))]),
        "expired",
    );
}

/// Runs `gateway check` on a config with one auth filter whose `config`
/// table is `config`; returns (success, stderr).
fn check(config: &str) -> (bool, String) {
    let (ok, _, err) = check_config(&format!(
        "[upstreams.api]\ninstances = [\"127.0.0.1:3000\"]\n\n\
         [[route]]\nid = \"api\"\nupstream = \"api\"\nfilters = [\"auth\"]\n\n\
         [filters.auth]\nplugin = \"auth\"\n[filters.auth.config]\n{config}"
    ));
    (ok, err)
}

#[test]
fn check_accepts_a_good_config_and_refuses_bad_ones_clearly() {
    let (ok, err) = check(&format!(
        "[[filters.auth.config.api_keys]]\nsha256 = \"{}\"\nsubject = \"svc\"\n",
        sha256_hex("k")
    ));
    assert!(ok, "{err}");

    let refused = "error: filter `auth` refused its configuration: auth:";
    let pem = |alg: &str, pem: &str| {
        format!("[[filters.auth.config.jwt.keys]]\nalg = \"{alg}\"\npem = '''\n{pem}'''\n")
    };
    let cases: Vec<(String, String)> = vec![
        (
            "[[filters.auth.config.api_keys]]\nsha256 = \"abc123\"\nsubject = \"svc\"\n".into(),
            "api_keys[0] (svc): sha256 must be 64 hex digits (the SHA-256 of the key in hex, as `printf %s \"$KEY\" | sha256sum` prints it); this one has 6 characters".into(),
        ),
        (
            format!("[[filters.auth.config.api_keys]]\nsha256 = \"{}\"\nsubject = \"svc\"\n", "z".repeat(64)),
            "api_keys[0] (svc): sha256 must be 64 hex digits (the SHA-256 of the key in hex, as `printf %s \"$KEY\" | sha256sum` prints it); this one has other characters".into(),
        ),
        (
            "[[filters.auth.config.jwt.keys]]\nkid = \"k1\"\nalg = \"RS512\"\npem = \"x\"\n".into(),
            "jwt.keys[0] (kid \"k1\"): alg \"RS512\" is not supported; use HS256, RS256 or ES256".into(),
        ),
        (
            "[[filters.auth.config.jwt.keys]]\nalg = \"none\"\nsecret = \"x\"\n".into(),
            "jwt.keys[0]: alg \"none\" is not supported; use HS256, RS256 or ES256".into(),
        ),
        (
            pem("RS256", "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"),
            "jwt.keys[0]: `pem` is not an RSA public key in PEM".into(),
        ),
        (
            pem("RS256", &fixture("ec_public.pem")),
            "jwt.keys[0]: `pem` is not an RSA public key in PEM".into(),
        ),
        (
            pem("ES256", &fixture("rsa_public.pem")),
            "jwt.keys[0]: `pem` is not a P-256 public key in PEM".into(),
        ),
        (
            pem("RS256", &fixture("rsa_private.pem")),
            "jwt.keys[0]: `pem` holds a private key; give the public key (`openssl pkey -pubout`)".into(),
        ),
        (
            "[[filters.auth.config.jwt.keys]]\nalg = \"HS256\"\nsecret = \"short\"\n".into(),
            "jwt.keys[0]: an HS256 secret must be at least 32 bytes (RFC 7518 §3.2); this one is 5".into(),
        ),
        (
            format!(
                "strip_credentials = true\napi_key_query = \"k\"\n[[filters.auth.config.api_keys]]\nsha256 = \"{}\"\nsubject = \"svc\"\n",
                sha256_hex("k")
            ),
            "strip_credentials cannot remove a key sent in the query string; remove api_key_query or strip_credentials".into(),
        ),
        (
            "[filters.auth.config.jwt]\nleeway = 3600\n[[filters.auth.config.jwt.keys]]\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n".into(),
            "jwt.leeway is 3600 s; clock skew worth allowing is seconds, at most 300".into(),
        ),
        (
            format!(
                "[[filters.auth.config.api_keys]]\nsha256 = \"{}\"\nsubject = \"svc\"\n[filters.auth.config.routes.admn]\nscopes = [\"admin\"]\n",
                sha256_hex("k")
            ),
            "route `admn` is not in the gateway's config; the routes are: api".into(),
        ),
        (
            "realm = \"x\"\n".into(),
            "no credentials configured: add `api_keys`, `jwt.keys` or `jwks` (or both)".into(),
        ),
    ];
    for (config, message) in cases {
        let (ok, err) = check(&config);
        assert!(!ok, "accepted:\n{config}");
        assert!(
            err.starts_with(&format!("{refused} {message}")),
            "for\n{config}\nexpected `{refused} {message}`, got\n{err}"
        );
    }
    // A setting its types refuse is named by path, and so pointed at.
    let (ok, err) = check("cache_sise = 10\n");
    assert!(!ok);
    assert!(
        err.starts_with("error: CONFIG:")
            && err.contains(
                ": filter `auth` refused its configuration: at `cache_sise`: auth: unknown field `cache_sise`"
            ),
        "{err}"
    );
}
