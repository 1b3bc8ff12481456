//! Verifying a JWS compact token: header, key choice, signature, then
//! claims, each refusal mapped to one precise reason, with time from the
//! host's clock, checked again on every use of a cached token.
//!
//! HS256 is an HMAC, computed here. RS256 and ES256 signatures are checked
//! by the gateway through the `crypto` interface: in wasm they cost 2 to 3
//! ms each, natively tens of microseconds (`cargo bench --bench jwt`), and
//! a flood of forged tokens, which no cache absorbs, pays that on every
//! request.

use crate::config::JwtSettings;
use crate::keys::{Alg, Key, Material};
use crate::{Identity, Reason};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use filter_sdk::v2::crypto;
use hmac::Mac;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Why a token was refused: the reason for the client and the metric, and a
/// detail for the operator's debug log. Neither ever holds token content.
pub type Refusal = (Reason, &'static str);

/// A token that passed every check. Only `exp` and `nbf` can change their
/// verdict later, so only they are kept for re-checking a cached token.
pub struct Verified {
    pub identity: Arc<Identity>,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the verifier must understand. This filter
    /// understands none, so a token that lists any is refused.
    crit: Option<Value>,
}

pub fn verify(token: &str, s: &JwtSettings, now: f64) -> Result<Verified, Refusal> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((Reason::Malformed, "not three dot-separated segments"));
    };
    let header: Header = decode_json(header_b64).ok_or((Reason::Malformed, "bad header"))?;
    if header.crit.is_some() {
        return Err((Reason::Malformed, "critical header extensions"));
    }
    let alg = Alg::parse(&header.alg).ok_or((Reason::AlgNotAllowed, "algorithm not supported"))?;
    let candidates = candidates(s, alg, header.kid.as_deref())?;

    if sig_b64.is_empty()
        || !sig_b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err((Reason::Malformed, "signature is not base64url"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| (Reason::Malformed, "signature is not base64url"))?;
    let signed = token[..header_b64.len() + 1 + payload_b64.len()].as_bytes();
    let good = candidates
        .iter()
        .any(|k| verify_signature(&k.key, signed, &signature));
    if !good {
        return Err((Reason::BadSignature, "no key verifies the signature"));
    }

    let claims: Map<String, Value> =
        decode_json(payload_b64).ok_or((Reason::Malformed, "payload is not a JSON object"))?;
    check_claims(&claims, s, now)
}

fn verify_signature(key: &Material, signed: &[u8], signature: &[u8]) -> bool {
    match key {
        Material::Secret(secret) => {
            let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
                return false;
            };
            mac.update(signed);
            // Constant-time comparison: no timing hint about the right MAC.
            mac.verify_slice(signature).is_ok()
        }
        Material::Rsa(key) => crypto::verify_rs256(key, signed, signature),
        Material::P256(key) => crypto::verify_es256(key, signed, signature),
    }
}

/// The keys that may have signed a token of `alg` naming `kid`. A key
/// configured without a kid stands for any kid, so an issuer that starts
/// sending kids does not break a single-key set-up.
fn candidates<'a>(
    s: &'a JwtSettings,
    alg: Alg,
    kid: Option<&str>,
) -> Result<Vec<&'a Key>, Refusal> {
    if let Some(kid) = kid {
        if let Some(k) = s.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            return if k.alg == alg {
                Ok(vec![k])
            } else {
                Err((
                    Reason::AlgNotAllowed,
                    "the key named by kid is for another algorithm",
                ))
            };
        }
        let keyless: Vec<&Key> = s.keys.iter().filter(|k| k.kid.is_none()).collect();
        if keyless.is_empty() {
            return Err((Reason::UnknownKey, "no key has the token's kid"));
        }
        let matching: Vec<&Key> = keyless.into_iter().filter(|k| k.alg == alg).collect();
        if matching.is_empty() {
            return Err((Reason::AlgNotAllowed, "no key for the token's algorithm"));
        }
        return Ok(matching);
    }
    let matching: Vec<&Key> = s.keys.iter().filter(|k| k.alg == alg).collect();
    if matching.is_empty() {
        return Err((Reason::AlgNotAllowed, "no key for the token's algorithm"));
    }
    Ok(matching)
}

fn decode_json<T: serde::de::DeserializeOwned>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `exp` and `nbf` against the clock, with the configured leeway either way.
pub fn check_time(
    exp: Option<f64>,
    nbf: Option<f64>,
    now: f64,
    leeway: f64,
) -> Result<(), Refusal> {
    if exp.is_some_and(|exp| now >= exp + leeway) {
        return Err((Reason::Expired, "exp is past"));
    }
    if nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err((Reason::NotYetValid, "nbf is in the future"));
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 §2): seconds, possibly fractional.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Refusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err((Reason::Malformed, "exp or nbf is not a number")),
    }
}

fn check_claims(
    claims: &Map<String, Value>,
    s: &JwtSettings,
    now: f64,
) -> Result<Verified, Refusal> {
    for name in &s.required_claims {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err((Reason::MissingClaim, "a required claim is absent"));
        }
    }
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    check_time(exp, nbf, now, s.leeway)?;

    if let Some(accepted) = &s.issuers {
        match claims.get("iss") {
            None | Some(Value::Null) => return Err((Reason::MissingClaim, "iss is absent")),
            Some(Value::String(iss)) if accepted.contains(iss) => {}
            Some(Value::String(_)) => return Err((Reason::WrongIssuer, "iss is not accepted")),
            Some(_) => return Err((Reason::Malformed, "iss is not a string")),
        }
    }
    if let Some(accepted) = &s.audiences {
        // RFC 7519 §4.1.3: one audience as a string, or several as an array;
        // the token passes when any of them is accepted.
        let ok = match claims.get("aud") {
            None | Some(Value::Null) => return Err((Reason::MissingClaim, "aud is absent")),
            Some(Value::String(aud)) => accepted.contains(aud),
            Some(Value::Array(auds)) => {
                let mut any = false;
                for a in auds {
                    let Value::String(a) = a else {
                        return Err((Reason::Malformed, "aud holds a non-string"));
                    };
                    any |= accepted.contains(a);
                }
                any
            }
            Some(_) => return Err((Reason::Malformed, "aud is not a string or array")),
        };
        if !ok {
            return Err((Reason::WrongAudience, "no aud is accepted"));
        }
    }

    let subject = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err((Reason::Malformed, "sub is not a string")),
    };
    // Tenants are often numeric ids; a number passes on as its JSON text.
    let tenant = match claims.get(&s.tenant_claim) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err((Reason::Malformed, "the tenant claim is not a string")),
    };
    let scopes = scopes(claims, &s.scope_claims)?;
    let identity = Identity::new(subject, tenant, scopes).map_err(|_| {
        (
            Reason::Malformed,
            "a claim is too long to pass along the chain",
        )
    })?;
    Ok(Verified {
        identity: Arc::new(identity),
        exp,
        nbf,
    })
}

/// The scopes granted: the first of the configured claims present, as a
/// space-separated string or an array of strings.
fn scopes(claims: &Map<String, Value>, names: &[String]) -> Result<Vec<String>, Refusal> {
    let Some(v) = names
        .iter()
        .find_map(|n| claims.get(n).filter(|v| !v.is_null()))
    else {
        return Ok(Vec::new());
    };
    Ok(match v {
        Value::String(s) => s.split_ascii_whitespace().map(str::to_string).collect(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) if !s.is_empty() && !s.contains(' ') => out.push(s.clone()),
                    _ => return Err((Reason::Malformed, "a scope is not a scope token")),
                }
            }
            out
        }
        _ => {
            return Err((
                Reason::Malformed,
                "the scope claim is not a string or array",
            ));
        }
    })
}
