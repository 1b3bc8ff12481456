//! The filter's table from the gateway's TOML (handed over as JSON) and the
//! settings built from it. Everything that can be checked is checked here,
//! so a mistake stops the gateway from loading instead of refusing (or, worse,
//! letting through) requests later.

use crate::Identity;
use crate::keys::{self, Alg, Key};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default = "default_api_key_header")]
    api_key_header: String,
    api_key_query: Option<String>,
    #[serde(default)]
    api_keys: Vec<ApiKeyConfig>,
    jwt: Option<JwtConfig>,
    /// A JWKS document's text. At the top level, not under `jwt`, because
    /// that is where `config_files` puts a file's text.
    jwks: Option<String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default)]
    routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    strip_credentials: bool,
    #[serde(default = "default_cache_size")]
    cache_size: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyConfig {
    sha256: String,
    subject: String,
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtConfig {
    #[serde(default)]
    keys: Vec<KeyConfig>,
    #[serde(default = "default_leeway")]
    leeway: u32,
    iss: Option<Vec<String>>,
    aud: Option<Vec<String>>,
    #[serde(default = "default_required_claims")]
    required_claims: Vec<String>,
    #[serde(default = "default_tenant_claim")]
    tenant_claim: String,
    #[serde(default = "default_scope_claims")]
    scope_claims: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    kid: Option<String>,
    alg: String,
    pem: Option<String>,
    secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    scopes: Option<Vec<String>>,
    #[serde(default)]
    anonymous: bool,
}

fn default_realm() -> String {
    "gateway".into()
}
fn default_api_key_header() -> String {
    "x-api-key".into()
}
fn default_cache_size() -> usize {
    1024
}
/// Most clock skew the filter will allow: beyond minutes, `exp` means little.
const MAX_LEEWAY_S: u32 = 300;

fn default_leeway() -> u32 {
    30
}
/// As in most JWT libraries: a token that never expires is refused unless
/// the operator says otherwise.
fn default_required_claims() -> Vec<String> {
    vec!["exp".into()]
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
/// `scope` is the space-separated string of RFC 8693 §4.2; `scp`, an array,
/// is what Azure AD and Okta issue.
fn default_scope_claims() -> Vec<String> {
    vec!["scope".into(), "scp".into()]
}

pub struct Settings {
    pub realm: String,
    pub api_key_header: String,
    pub api_key_query: Option<String>,
    /// SHA-256 of each key to whom it belongs.
    pub api_keys: HashMap<[u8; 32], Arc<Identity>>,
    pub jwt: Option<JwtSettings>,
    pub default_policy: Policy,
    pub routes: HashMap<String, Policy>,
    pub strip_credentials: bool,
    pub cache_size: usize,
}

pub struct JwtSettings {
    pub keys: Vec<Key>,
    pub leeway: f64,
    pub issuers: Option<Vec<String>>,
    pub audiences: Option<Vec<String>>,
    pub required_claims: Vec<String>,
    pub tenant_claim: String,
    pub scope_claims: Vec<String>,
}

/// What one route asks of a request.
pub struct Policy {
    /// Sorted; every one must be granted.
    pub scopes: Vec<String>,
    /// The `scope` parameter of a 403's challenge.
    pub scope_text: String,
    pub anonymous: bool,
}

impl Policy {
    fn new(scopes: Vec<String>, anonymous: bool) -> Policy {
        let scopes = sorted(scopes);
        Policy {
            scope_text: scopes.join(" "),
            scopes,
            anonymous,
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// serde_json's message without its " at line 1 column 80": the operator
/// wrote TOML, and positions in the JSON made from it mean nothing to them.
pub fn serde_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// RFC 6749 §3.3: a scope token is printable ASCII without space, `"` or
/// `\`, which also keeps it safe inside a quoted challenge parameter.
fn check_scopes(what: &str, scopes: &[String]) -> Result<(), String> {
    for s in scopes {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(format!(
                "{what} has {s:?}, which is not a scope token (printable ASCII without spaces, `\"` or `\\`)"
            ));
        }
    }
    Ok(())
}

fn check_header_name(what: &str, name: &str) -> Result<String, String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(format!("{what} {name:?} is not a valid header name"));
    }
    Ok(name.to_ascii_lowercase())
}

fn parse_hex_sha256(s: &str) -> Result<[u8; 32], String> {
    let hint = "the SHA-256 of the key in hex, as `printf %s \"$KEY\" | sha256sum` prints it";
    let b = s.as_bytes();
    if b.len() != 64 {
        return Err(format!(
            "sha256 must be 64 hex digits ({hint}); this one has {} characters",
            b.len()
        ));
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = match (nibble(pair[0]), nibble(pair[1])) {
            (Some(hi), Some(lo)) => hi << 4 | lo,
            _ => {
                return Err(format!(
                    "sha256 must be 64 hex digits ({hint}); this one has other characters"
                ));
            }
        };
    }
    Ok(out)
}

/// The largest value the gateway lets a filter put in the context.
pub const MAX_CONTEXT_VALUE: usize = 4096;

pub fn parse(config: &str) -> Result<Settings, String> {
    // A refusal that names its setting (`at `path`: auth: ...`) is
    // already in the form the gateway points at.
    parse_inner(config).map_err(|e| {
        if e.starts_with("at `") {
            e
        } else {
            format!("auth: {e}")
        }
    })
}

fn parse_inner(config: &str) -> Result<Settings, String> {
    let c: Config = filter_sdk::v2::parse_config("auth", config)?;

    // The realm is sent inside a quoted challenge parameter.
    if c.realm.is_empty()
        || !c
            .realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(format!(
            "realm {:?} must be printable ASCII without `\"` or `\\`",
            c.realm
        ));
    }
    let api_key_header = check_header_name("api_key_header", &c.api_key_header)?;
    if let Some(q) = c
        .api_key_query
        .as_ref()
        .filter(|q| q.is_empty() || q.contains(['&', '=']))
    {
        return Err(format!("api_key_query {q:?} is not a query parameter name"));
    }
    if c.strip_credentials && c.api_key_query.is_some() {
        // A filter cannot rewrite the query string, so the key would reach
        // the upstream anyway: refuse rather than promise what cannot hold.
        return Err(
            "strip_credentials cannot remove a key sent in the query string; remove api_key_query or strip_credentials"
                .into(),
        );
    }

    let mut api_keys = HashMap::new();
    for (i, k) in c.api_keys.into_iter().enumerate() {
        let what = format!("api_keys[{i}] ({})", k.subject);
        let digest = parse_hex_sha256(&k.sha256).map_err(|e| format!("{what}: {e}"))?;
        if k.subject.is_empty() {
            return Err(format!("api_keys[{i}]: subject must not be empty"));
        }
        check_scopes(&format!("{what}: scopes"), &k.scopes)?;
        let identity = Identity::new(Some(k.subject), k.tenant, k.scopes)
            .map_err(|e| format!("{what}: {e}"))?;
        if api_keys.insert(digest, Arc::new(identity)).is_some() {
            return Err(format!(
                "{what}: the same key hash is listed twice; each key belongs to one subject"
            ));
        }
    }

    let jwt = match (c.jwt, c.jwks) {
        (None, None) => None,
        (jwt, jwks) => Some(jwt_settings(jwt, jwks)?),
    };
    if api_keys.is_empty() && jwt.is_none() {
        return Err(
            "no credentials configured: add `api_keys`, `jwt.keys` or `jwks` (or both)".into(),
        );
    }

    check_scopes("required_scopes", &c.required_scopes)?;
    let mut routes = HashMap::new();
    for (id, r) in c.routes {
        if let Some(s) = &r.scopes {
            check_scopes(&format!("routes.{id}.scopes"), s)?;
            if r.anonymous && !s.is_empty() {
                return Err(format!(
                    "routes.{id} is anonymous and also requires scopes; an anonymous route requires none"
                ));
            }
        }
        let scopes = r.scopes.unwrap_or_else(|| c.required_scopes.clone());
        let scopes = if r.anonymous { Vec::new() } else { scopes };
        routes.insert(id, Policy::new(scopes, r.anonymous));
    }

    Ok(Settings {
        realm: c.realm,
        api_key_header,
        api_key_query: c.api_key_query,
        api_keys,
        jwt,
        default_policy: Policy::new(c.required_scopes, false),
        routes,
        strip_credentials: c.strip_credentials,
        cache_size: c.cache_size,
    })
}

fn jwt_settings(jwt: Option<JwtConfig>, jwks: Option<String>) -> Result<JwtSettings, String> {
    let jwt = match jwt {
        Some(j) => j,
        // `jwks` alone: the defaults for everything else.
        None => serde_json::from_str("{}").map_err(|e| serde_message(&e))?,
    };
    let mut keys = Vec::new();
    for (i, k) in jwt.keys.into_iter().enumerate() {
        let what = match &k.kid {
            Some(kid) => format!("jwt.keys[{i}] (kid {kid:?})"),
            None => format!("jwt.keys[{i}]"),
        };
        let alg = Alg::parse(&k.alg).ok_or_else(|| {
            format!(
                "{what}: alg {:?} is not supported; use HS256, RS256 or ES256",
                k.alg
            )
        })?;
        let key = match (alg, &k.pem, &k.secret) {
            (Alg::HS256, None, Some(secret)) => keys::from_secret(secret),
            (Alg::HS256, _, _) => Err("HS256 takes a `secret` (and no `pem`)".to_string()),
            (_, Some(pem), None) => keys::from_pem(alg, pem),
            (_, _, _) => Err(format!(
                "{} takes a public key `pem` (and no `secret`)",
                k.alg
            )),
        }
        .map_err(|e| format!("{what}: {e}"))?;
        keys.push(Key {
            kid: k.kid,
            alg,
            key,
        });
    }
    if let Some(text) = jwks {
        keys.extend(keys::from_jwks(&text)?);
    }
    if keys.is_empty() {
        return Err("`jwt` is set but has no keys: add `jwt.keys` or `jwks`".into());
    }
    let mut kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
    kids.sort();
    if let Some(w) = kids.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "two keys have kid {:?}; a kid must name one key",
            w[0]
        ));
    }
    for (what, list) in [("jwt.iss", &jwt.iss), ("jwt.aud", &jwt.aud)] {
        if list.as_ref().is_some_and(|l| l.is_empty()) {
            return Err(format!(
                "{what} is empty, so no token could pass; list the accepted values or remove it"
            ));
        }
    }
    if jwt.leeway > MAX_LEEWAY_S {
        return Err(format!(
            "jwt.leeway is {} s; clock skew worth allowing is seconds, at most {MAX_LEEWAY_S}",
            jwt.leeway
        ));
    }
    if jwt.scope_claims.is_empty() {
        return Err("jwt.scope_claims is empty; name the claim that carries scopes".into());
    }
    Ok(JwtSettings {
        keys,
        leeway: f64::from(jwt.leeway),
        issuers: jwt.iss,
        audiences: jwt.aud,
        required_claims: jwt.required_claims,
        tenant_claim: jwt.tenant_claim,
        scope_claims: jwt.scope_claims,
    })
}
