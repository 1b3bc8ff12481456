//! The cache's settings, read from the filter's `[filters.NAME.config]`
//! table and checked whole, so a bad one refuses the load at its place in
//! the TOML.

use crate::entry::ENTRY_OVERHEAD;
use filter_sdk::v2::{DurationMs, KV_MAX_VALUE, parse_config, refusal};
use serde::Deserialize;

/// The largest body stored: a kv value is at most 64 KiB, and the entry's
/// headers and fields need the rest (4 KiB less what the fields take).
pub const MAX_OBJECT_BYTES: u32 = 60 * 1024;
const _: () = assert!(MAX_OBJECT_BYTES as usize + ENTRY_OVERHEAD < KV_MAX_VALUE);

/// The statuses RFC 9110 (section 15.1) lets a cache store without explicit
/// freshness, less 206 (the cache does not serve ranges).
pub const DEFAULT_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The longest a value may live in kv by default (the filter's
/// `state_max_window`).
const MAX_TTL_MS: u64 = 2 * 86_400_000;
const MAX_KEY_FIELDS: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Freshness for a response that states none (no `Cache-Control`
    /// max-age or s-maxage, no `Expires`); 0 stores none of them.
    #[serde(default)]
    default_ttl: DurationMs,
    /// The longest anything is stored, whatever the response says.
    #[serde(default = "default_max_ttl")]
    max_ttl: DurationMs,
    /// The largest body stored; larger ones stream past uncached.
    #[serde(default = "default_max_object_bytes")]
    max_object_bytes: u32,
    #[serde(default)]
    cacheable_statuses: Option<Vec<u16>>,
    /// Request headers whose values are always part of the key.
    #[serde(default)]
    key_headers: Vec<String>,
    /// Context values (set by earlier filters: `tenant`, `subject`) that
    /// are always part of the key.
    #[serde(default)]
    key_context: Vec<String>,
    /// Treat requests with `Authorization` like any other (the upstream's
    /// answers do not depend on who asks, or `key_headers` names
    /// `authorization`).
    #[serde(default)]
    cache_authorized: bool,
    /// Send `X-Cache: hit | miss | bypass`.
    #[serde(default = "yes")]
    x_cache: bool,
}

fn default_max_ttl() -> DurationMs {
    DurationMs(86_400_000)
}

fn default_max_object_bytes() -> u32 {
    MAX_OBJECT_BYTES
}

fn yes() -> bool {
    true
}

/// The checked settings.
#[derive(Debug, PartialEq, Eq)]
pub struct Settings {
    pub default_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub max_object_bytes: u32,
    /// Sorted.
    pub statuses: Vec<u16>,
    /// Lower case.
    pub key_headers: Vec<String>,
    pub key_context: Vec<String>,
    pub cache_authorized: bool,
    pub x_cache: bool,
}

pub fn parse(json: &str) -> Result<Settings, String> {
    let c: Config = parse_config("cache", json)?;
    let bad = |path: &str, message: String| Err(refusal(path, &format!("cache: {message}")));
    if !(1_000..=MAX_TTL_MS).contains(&c.max_ttl.0) {
        return bad("max_ttl", "must be from 1s to 2d".into());
    }
    if c.default_ttl.0 > c.max_ttl.0 {
        return bad("default_ttl", "is longer than max_ttl".into());
    }
    if !(1..=MAX_OBJECT_BYTES).contains(&c.max_object_bytes) {
        return bad(
            "max_object_bytes",
            format!(
                "must be from 1 to {MAX_OBJECT_BYTES} (a kv value holds 64 KiB, headers included)"
            ),
        );
    }
    let mut statuses = c
        .cacheable_statuses
        .unwrap_or_else(|| DEFAULT_STATUSES.to_vec());
    if statuses.is_empty() {
        return bad(
            "cacheable_statuses",
            "is empty: nothing would be stored".into(),
        );
    }
    for (i, &s) in statuses.iter().enumerate() {
        let why = match s {
            206 => "partial answers are not stored (the cache does not serve ranges)",
            304 => "a 304 has no body to store",
            200..=599 => continue,
            _ => "is not a status an answer may have (200 to 599)",
        };
        return bad(&format!("cacheable_statuses[{i}]"), format!("{s}: {why}"));
    }
    statuses.sort_unstable();
    statuses.dedup();
    let mut key_headers = Vec::new();
    for (i, h) in c.key_headers.iter().enumerate() {
        let name = h.to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_token) {
            return bad(
                &format!("key_headers[{i}]"),
                format!("`{h}` is not a header name"),
            );
        }
        if !key_headers.contains(&name) {
            key_headers.push(name);
        }
    }
    let mut key_context = Vec::new();
    for (i, k) in c.key_context.iter().enumerate() {
        if k.is_empty() || k.len() > 128 {
            return bad(
                &format!("key_context[{i}]"),
                "a context key is 1 to 128 bytes".into(),
            );
        }
        if !key_context.contains(k) {
            key_context.push(k.clone());
        }
    }
    if key_headers.len() + key_context.len() > MAX_KEY_FIELDS {
        return bad(
            "key_headers",
            format!("key_headers and key_context name more than {MAX_KEY_FIELDS} values together"),
        );
    }
    Ok(Settings {
        default_ttl_ms: c.default_ttl.0,
        max_ttl_ms: c.max_ttl.0,
        max_object_bytes: c.max_object_bytes,
        statuses,
        key_headers,
        key_context,
        cache_authorized: c.cache_authorized,
        x_cache: c.x_cache,
    })
}

/// A `tchar` of RFC 9110, the bytes of a header name.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_store_only_what_states_its_freshness() {
        let s = parse("{}").unwrap();
        assert_eq!(s.default_ttl_ms, 0);
        assert_eq!(s.max_ttl_ms, 86_400_000);
        assert_eq!(s.max_object_bytes, MAX_OBJECT_BYTES);
        assert_eq!(s.statuses, DEFAULT_STATUSES);
        assert!(!s.cache_authorized && s.x_cache);
    }

    #[test]
    fn every_setting_is_read() {
        let s = parse(
            r#"{"default_ttl": "30s", "max_ttl": 3600, "max_object_bytes": 1024,
                "cacheable_statuses": [404, 200, 200], "key_headers": ["Accept-Language", "accept-language"],
                "key_context": ["tenant"], "cache_authorized": true, "x_cache": false}"#,
        )
        .unwrap();
        assert_eq!(
            s,
            Settings {
                default_ttl_ms: 30_000,
                max_ttl_ms: 3_600_000,
                max_object_bytes: 1024,
                statuses: vec![200, 404],
                key_headers: vec!["accept-language".into()],
                key_context: vec!["tenant".into()],
                cache_authorized: true,
                x_cache: false,
            }
        );
    }

    #[test]
    fn bad_settings_are_refused_at_their_path() {
        for (json, message) in [
            (
                r#"{"max_object_bytes": 70000}"#,
                "at `max_object_bytes`: cache: must be from 1 to 61440 (a kv value holds 64 KiB, headers included)",
            ),
            (
                r#"{"max_ttl": "3d"}"#,
                "at `max_ttl`: cache: must be from 1s to 2d",
            ),
            (
                r#"{"default_ttl": "2h", "max_ttl": "1h"}"#,
                "at `default_ttl`: cache: is longer than max_ttl",
            ),
            (
                r#"{"cacheable_statuses": [200, 206]}"#,
                "at `cacheable_statuses[1]`: cache: 206: partial answers are not stored (the cache does not serve ranges)",
            ),
            (
                r#"{"cacheable_statuses": [99]}"#,
                "at `cacheable_statuses[0]`: cache: 99: is not a status an answer may have (200 to 599)",
            ),
            (
                r#"{"cacheable_statuses": []}"#,
                "at `cacheable_statuses`: cache: is empty: nothing would be stored",
            ),
            (
                r#"{"key_headers": ["x ok"]}"#,
                "at `key_headers[0]`: cache: `x ok` is not a header name",
            ),
            (
                r#"{"key_context": [""]}"#,
                "at `key_context[0]`: cache: a context key is 1 to 128 bytes",
            ),
        ] {
            assert_eq!(parse(json).unwrap_err(), message, "{json}");
        }
        let typo = parse(r#"{"ttl": 5}"#).unwrap_err();
        assert!(
            typo.starts_with("at `ttl`: cache: unknown field `ttl`"),
            "{typo}"
        );
    }
}
