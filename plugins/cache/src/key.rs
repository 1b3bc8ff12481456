//! The kv keys of stored answers. A request's base key names the resource
//! (method, scheme, host, path, query, and the values of `key_headers` and
//! `key_context`); the record there is either the answer itself or, for a
//! resource whose answers `Vary`, the list of request headers they vary on,
//! and each variant is stored under a key that adds those headers' values.
//! Keys are SHA-256 digests: whatever the URI's length, they fit kv's 256
//! bytes, and no request text can make two fields run together.

use sha2::{Digest, Sha256};

/// The parts of a request that name a resource.
pub struct Resource<'a> {
    /// `GET` for both GET and HEAD: a HEAD is answered from the GET's entry.
    pub method: &'a str,
    pub scheme: &'a str,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `key_headers` then `key_context`, each with the request's value.
    pub extra: &'a [(&'a str, Option<String>)],
}

/// The base key's digest, in hex; the record key is [`head_key`] of it.
/// It travels to `on_response` in the request's context.
pub fn base(r: &Resource) -> String {
    let mut h = Field::new();
    h.text(r.method)
        .text(r.scheme)
        .opt(r.authority)
        .text(r.path)
        .opt(r.query);
    for (name, value) in r.extra {
        h.text(name).opt(value.as_deref());
    }
    h.hex()
}

/// The key of a resource's record.
pub fn head_key(base: &str) -> String {
    format!("h:{base}")
}

/// The key of one variant of a resource whose answers vary on `values`
/// (the `Vary` names with the request's values, in the record's order).
/// `nonce` is the record's: a new record (other names, or an invalidation)
/// leaves the variants of the old one unreachable until they expire.
pub fn variant_key(base: &str, nonce: u64, values: &[(&str, Option<String>)]) -> String {
    let mut h = Field::new();
    h.text(base).text(&nonce.to_string());
    for (name, value) in values {
        h.text(name).opt(value.as_deref().map(normalise).as_deref());
    }
    format!("v:{}", h.hex())
}

/// A header value as it is compared: list members trimmed, so
/// `gzip, br` and `gzip,br` select the same variant.
pub fn normalise(value: &str) -> String {
    value
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

/// Fields fed to the digest with their lengths, and absent apart from empty.
struct Field(Sha256);

impl Field {
    fn new() -> Field {
        Field(Sha256::new())
    }

    fn text(&mut self, s: &str) -> &mut Field {
        self.0.update([1u8]);
        self.0.update((s.len() as u64).to_be_bytes());
        self.0.update(s.as_bytes());
        self
    }

    fn opt(&mut self, s: Option<&str>) -> &mut Field {
        match s {
            Some(s) => self.text(s),
            None => {
                self.0.update([0u8]);
                self
            }
        }
    }

    fn hex(&mut self) -> String {
        let digest = std::mem::take(&mut self.0).finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource<'a>(
        path: &'a str,
        query: Option<&'a str>,
        extra: &'a [(&'a str, Option<String>)],
    ) -> Resource<'a> {
        Resource {
            method: "GET",
            scheme: "https",
            authority: Some("api.example.com"),
            path,
            query,
            extra,
        }
    }

    #[test]
    fn every_part_of_the_resource_is_in_the_key() {
        let k = base(&resource("/a", Some("x=1"), &[]));
        assert_eq!(k.len(), 64);
        assert_eq!(k, base(&resource("/a", Some("x=1"), &[])));
        assert_ne!(k, base(&resource("/a", Some("x=2"), &[])));
        assert_ne!(k, base(&resource("/b", Some("x=1"), &[])));
        // No query is not an empty query.
        assert_ne!(
            base(&resource("/a", None, &[])),
            base(&resource("/a", Some(""), &[]))
        );
        // Fields cannot run together.
        assert_ne!(
            base(&resource("/a?x", Some(""), &[])),
            base(&resource("/a", Some("x"), &[]))
        );
        let mut other_host = resource("/a", Some("x=1"), &[]);
        other_host.authority = Some("other.example.com");
        assert_ne!(k, base(&other_host));
        let mut http = resource("/a", Some("x=1"), &[]);
        http.scheme = "http";
        assert_ne!(k, base(&http));
        let tenant = [("tenant", Some("acme".to_string()))];
        let none = [("tenant", None)];
        assert_ne!(k, base(&resource("/a", Some("x=1"), &tenant)));
        assert_ne!(
            base(&resource("/a", Some("x=1"), &tenant)),
            base(&resource("/a", Some("x=1"), &none))
        );
        assert!(head_key(&k).len() <= filter_sdk::v2::KV_MAX_KEY);
    }

    #[test]
    fn variants_differ_by_value_and_nonce_but_not_list_spacing() {
        let b = base(&resource("/a", None, &[]));
        let gzip = [("accept-encoding", Some("gzip, br".to_string()))];
        let gzip_tight = [("accept-encoding", Some("gzip,br".to_string()))];
        let absent = [("accept-encoding", None)];
        let k = variant_key(&b, 7, &gzip);
        assert!(k.starts_with("v:") && k.len() == 66);
        assert_eq!(k, variant_key(&b, 7, &gzip_tight));
        assert_ne!(k, variant_key(&b, 8, &gzip));
        assert_ne!(k, variant_key(&b, 7, &absent));
        assert_ne!(
            variant_key(&b, 7, &[("accept-encoding", Some(String::new()))]),
            variant_key(&b, 7, &absent)
        );
    }
}
