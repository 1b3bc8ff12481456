//! Verification keys: from PEM, from a shared secret, or from a JWKS
//! document. Every key is parsed completely here, at configure time, into
//! the form the verifier takes (the secret's bytes, or the public key's
//! numbers for the gateway's `crypto` interface), so a damaged key is
//! refused at load instead of failing every token later.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use filter_sdk::v2::crypto::{P256PublicKey, RsaPublicKey as RsaNumbers};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;

/// The algorithms this filter accepts. Everything else, `none` first of
/// all, is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    HS256,
    RS256,
    ES256,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::HS256),
            "RS256" => Some(Alg::RS256),
            "ES256" => Some(Alg::ES256),
            _ => None,
        }
    }
}

/// What a key verifies with: an HS256 secret stays in the filter; RSA and
/// P-256 public keys go to the gateway, which verifies natively.
pub enum Material {
    Secret(Vec<u8>),
    Rsa(RsaNumbers),
    P256(P256PublicKey),
}

/// One key a token may be signed with. A key verifies only tokens of its own
/// algorithm, which is what defeats algorithm confusion (an HS256 token
/// "signed" with an RSA public key).
pub struct Key {
    pub kid: Option<String>,
    pub alg: Alg,
    pub key: Material,
}

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
const MIN_SECRET_BYTES: usize = 32;
/// RSA keys under 2048 bits are breakable with public means (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

pub fn from_secret(secret: &str) -> Result<Material, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "an HS256 secret must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 §3.2); this one is {}",
            secret.len()
        ));
    }
    Ok(Material::Secret(secret.as_bytes().to_vec()))
}

pub fn from_pem(alg: Alg, pem: &str) -> Result<Material, String> {
    if pem.contains("PRIVATE KEY") {
        return Err(
            "`pem` holds a private key; give the public key (`openssl pkey -pubout`)".into(),
        );
    }
    match alg {
        Alg::HS256 => Err("HS256 takes a `secret`, not a `pem`".into()),
        Alg::RS256 => {
            let key = RsaPublicKey::from_public_key_pem(pem)
                .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
                .map_err(|e| format!("`pem` is not an RSA public key in PEM ({e})"))?;
            rsa_key(&key)
        }
        Alg::ES256 => {
            let key = p256::PublicKey::from_public_key_pem(pem)
                .map_err(|e| format!("`pem` is not a P-256 public key in PEM ({e})"))?;
            let point = key.to_encoded_point(false);
            Ok(p256_material(point.as_bytes()))
        }
    }
}

/// The coordinates of an uncompressed SEC1 point (0x04 || x || y).
fn p256_material(point: &[u8]) -> Material {
    Material::P256(P256PublicKey {
        x: point[1..33].to_vec(),
        y: point[33..65].to_vec(),
    })
}

fn rsa_key(key: &RsaPublicKey) -> Result<Material, String> {
    let bits = key.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(Material::Rsa(RsaNumbers {
        n: key.n().to_bytes_be(),
        e: key.e().to_bytes_be(),
    }))
}

/// The members of a JWK this filter reads; the rest (`x5c`, `key_ops`, …)
/// is ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// The RS256 and ES256 signing keys of a JWKS document. An identity
/// provider's set often also holds encryption keys or keys for other
/// algorithms; those are skipped, not refused, so the provider's own file can
/// be used as it is. A usable key that does not parse is refused.
pub fn from_jwks(text: &str) -> Result<Vec<Key>, String> {
    let set: Jwks = serde_json::from_str(text).map_err(|e| {
        format!(
            "`jwks` is not a JWKS document: {}",
            crate::config::serde_message(&e)
        )
    })?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let name = match &jwk.kid {
            Some(kid) => format!("`jwks` key `{kid}`"),
            None => format!("`jwks` key #{i}"),
        };
        let param =
            |v: &Option<String>, what: &str| b64_param(v, what).map_err(|e| format!("{name}: {e}"));
        let (alg, key) = match (jwk.kty.as_str(), jwk.alg.as_deref(), jwk.crv.as_deref()) {
            ("RSA", None | Some("RS256"), _) => {
                let (n, e) = (param(&jwk.n, "n")?, param(&jwk.e, "e")?);
                let key = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                    .map_err(|e| format!("{name}: not a valid RSA public key ({e})"))?;
                (
                    Alg::RS256,
                    rsa_key(&key).map_err(|e| format!("{name}: {e}"))?,
                )
            }
            ("EC", None | Some("ES256"), Some("P-256")) => {
                let (x, y) = (param(&jwk.x, "x")?, param(&jwk.y, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(format!("{name}: a P-256 key has 32-byte `x` and `y`"));
                }
                let point = [&[0x04][..], &x, &y].concat();
                p256::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| format!("{name}: `x` and `y` are not a point on P-256"))?;
                (Alg::ES256, p256_material(&point))
            }
            _ => continue,
        };
        keys.push(Key {
            kid: jwk.kid.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err("`jwks` holds no RS256 or ES256 signing key".into());
    }
    Ok(keys)
}

fn b64_param(v: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let v = v.as_deref().ok_or_else(|| format!("`{name}` is missing"))?;
    URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|_| format!("`{name}` is not base64url"))
}
