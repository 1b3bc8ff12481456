//! What authentication costs, and why RS256/ES256 signatures are checked by
//! the gateway (the WIT `crypto` interface, on ring) while HS256 stays in
//! the guest:
//!
//! - the auth filter's on-request on a warm instance, HS256 / RS256 / ES256,
//!   with `cache_size = 0` so every call verifies the signature;
//! - the same with the cache on, so every call after the first is a lookup
//!   plus the `exp`/`nbf` check;
//! - an API-key request, the cheapest full path through the filter;
//! - the signature check alone, natively, with ring (what the `crypto`
//!   interface runs) and with RustCrypto through jsonwebtoken (what the
//!   plugin ran in wasm before the host lent crypto: 2.0-2.4 ms for RS256
//!   and 2.5-3.1 ms for ES256 per verification there).
//!
//! Needs the plugins built first (`make plugins`); `AUTH_WASM=path` benches
//! another build of the auth plugin.

mod common;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use gateway::plugin::host::RequestState;
use gateway::plugin::{Decision, Filter, Runtime};
use gateway::telemetry::Metrics;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const HS_SECRET: &str = "bench-only-hs256-secret-of-at-least-32-bytes";
const ISSUER: &str = "https://issuer.bench";
const AUDIENCE: &str = "gateway-bench";
const API_KEY: &str = "bench-api-key-0123456789";

fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The auth plugin as `make plugins` builds it, or the build named by
/// `AUTH_WASM` (to compare, say, an `opt-level = 3` build).
fn plugin_path() -> std::path::PathBuf {
    match std::env::var_os("AUTH_WASM") {
        Some(p) => p.into(),
        None => common::plugin_path("auth"),
    }
}

const ALGS: [(Algorithm, &str); 3] = [
    (Algorithm::HS256, "hs"),
    (Algorithm::RS256, "rsa"),
    (Algorithm::ES256, "ec"),
];

fn token(alg: Algorithm, kid: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "tenant": "acme",
        "scope": "orders:read orders:write",
        "iat": now,
        "exp": now + 24 * 3600,
    });
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap()
        }
        _ => EncodingKey::from_ec_pem(fixture("ec_private.pem").as_bytes()).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The production shape of the filter: three keys, issuer, audience and
/// scope checks, one API key.
fn auth_config(cache_size: usize) -> String {
    let api_key_hash: String = Sha256::digest(API_KEY.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        r#"plugin = "auth"
[config]
cache_size = {cache_size}
required_scopes = ["orders:read"]
[config.jwt]
iss = ["{ISSUER}"]
aud = ["{AUDIENCE}"]
[[config.jwt.keys]]
kid = "hs"
alg = "HS256"
secret = "{HS_SECRET}"
[[config.jwt.keys]]
kid = "rsa"
alg = "RS256"
pem = '''
{rsa}'''
[[config.jwt.keys]]
kid = "ec"
alg = "ES256"
pem = '''
{ec}'''
[[config.api_keys]]
sha256 = "{api_key_hash}"
subject = "svc"
scopes = ["orders:read"]
"#,
        rsa = fixture("rsa_public.pem"),
        ec = fixture("ec_public.pem"),
    )
}

fn request(header: &'static str, value: &str) -> RequestState {
    common::request_with(
        "/api/orders/42",
        &[
            ("host", "api.example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
            (header, value),
        ],
    )
}

async fn filter(rt: &Runtime, name: &str, config: &str) -> Arc<Filter> {
    common::filter_at(rt, name, "auth", &plugin_path(), config).await
}

/// One warm call; the request is built outside the measured time. Panics
/// unless the filter let the request through with the identity set, so a
/// refusal (cheaper than a verification) cannot pass for a fast one.
fn bench_call(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    tokio: &tokio::runtime::Runtime,
    id: BenchmarkId,
    f: &Arc<Filter>,
    header: &'static str,
    value: String,
) {
    c.bench_function(id, |b| {
        b.to_async(tokio).iter_batched(
            || request(header, &value),
            |req| {
                let f = f.clone();
                async move {
                    let (req, out) = f.on_request(req).await;
                    assert!(matches!(out, Ok(Decision::Continue)));
                    assert!(req.context.iter().any(|(k, _)| k == "subject"));
                    req
                }
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new(&[0.001, 0.01, 0.1]).unwrap());
    let rt = Runtime::new(metrics).unwrap();
    let (uncached, cached) = tokio.block_on(async {
        (
            filter(&rt, "auth-uncached", &auth_config(0)).await,
            filter(&rt, "auth-cached", &auth_config(1024)).await,
        )
    });
    let tokens: Vec<(Algorithm, String)> = ALGS
        .iter()
        .map(|(alg, kid)| (*alg, token(*alg, kid)))
        .collect();

    let mut g = c.benchmark_group("auth filter, warm instance, verify every call");
    for (alg, t) in &tokens {
        let id = BenchmarkId::from_parameter(format!("{alg:?}"));
        bench_call(
            &mut g,
            &tokio,
            id,
            &uncached,
            "authorization",
            format!("Bearer {t}"),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("auth filter, warm instance, token cached");
    for (alg, t) in &tokens {
        let id = BenchmarkId::from_parameter(format!("{alg:?}"));
        bench_call(
            &mut g,
            &tokio,
            id,
            &cached,
            "authorization",
            format!("Bearer {t}"),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("auth filter, warm instance, API key");
    bench_call(
        &mut g,
        &tokio,
        BenchmarkId::from_parameter("x-api-key"),
        &cached,
        "x-api-key",
        API_KEY.into(),
    );
    g.finish();

    // The signature check alone, as the gateway's crypto interface runs it.
    let jwks: serde_json::Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let jwk = |kid: &str, field: &str| -> Vec<u8> {
        let k = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap();
        base64url(k[field].as_str().unwrap())
    };
    let mut g = c.benchmark_group("native ring signature check (the crypto interface)");
    for (alg, t) in &tokens {
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let (signed, sig) = (signed.as_bytes().to_vec(), base64url(sig));
        match alg {
            Algorithm::RS256 => {
                let key = ring::signature::RsaPublicKeyComponents {
                    n: jwk("test-rsa-1", "n"),
                    e: jwk("test-rsa-1", "e"),
                };
                g.bench_function("RS256", |b| {
                    b.iter(|| {
                        key.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &signed, &sig)
                            .expect("the bench token verifies")
                    })
                });
            }
            Algorithm::ES256 => {
                let point = [vec![4u8], jwk("test-ec-1", "x"), jwk("test-ec-1", "y")].concat();
                let key = ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    point,
                );
                g.bench_function("ES256", |b| {
                    b.iter(|| key.verify(&signed, &sig).expect("the bench token verifies"))
                });
            }
            _ => {}
        }
    }
    g.finish();

    // The same checks natively on RustCrypto: signature, exp, iss, aud.
    let mut g = c.benchmark_group("native jsonwebtoken decode (RustCrypto)");
    for (alg, t) in &tokens {
        let key = match alg {
            Algorithm::HS256 => DecodingKey::from_secret(HS_SECRET.as_bytes()),
            Algorithm::RS256 => {
                DecodingKey::from_rsa_pem(fixture("rsa_public.pem").as_bytes()).unwrap()
            }
            _ => DecodingKey::from_ec_pem(fixture("ec_public.pem").as_bytes()).unwrap(),
        };
        let mut v = Validation::new(*alg);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        g.bench_function(BenchmarkId::from_parameter(format!("{alg:?}")), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(std::hint::black_box(t), &key, &v)
                    .expect("the bench token verifies")
            })
        });
    }
    g.finish();
}

fn base64url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

criterion_group!(benches, bench);
criterion_main!(benches);
