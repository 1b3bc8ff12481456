//! The response cache: answers GET and HEAD from what an earlier response
//! left in the gateway's kv store, for as long as HTTP caching (RFC 9111)
//! says it stays fresh. Entries live in kv (the gateway's memory, or Redis
//! shared by every replica) with their freshness as their lifetime, so
//! nothing is ever served stale and nothing needs sweeping.
//!
//! A miss goes upstream; `on_response` stores the answer when its status,
//! `Cache-Control`, `Expires`, `Vary` and size allow. The cache fails open:
//! when kv cannot be reached the request goes upstream, counted.
//!
//! `on_response` stores what the request's earlier filters answered too, so
//! the cache belongs last in a chain: after authentication (a hit answers
//! before any later filter runs) and after anything that edits requests.

mod config;
mod entry;
mod key;
mod policy;

use config::Settings;
use entry::{Entry, NOT_STORED, Record, VaryRecord};
use filter_sdk::v2::{
    self, Action, BodyError, BodyLimit, Filter, Header, KV_MAX_VALUE, Metric, Needs, Reply,
    Request, Response, StateError, host, kv, label_enum,
};
use policy::{Bypass, NotStored, Plan};

/// The context entry that carries a request's outcome to `on_response`,
/// which may run on another instance.
const CONTEXT_KEY: &str = "cache";

label_enum! {
    /// What the request got from the cache, as `X-Cache` says it.
    enum Outcome {
        Miss => "miss",
        Bypass => "bypass",
        /// An unsafe method: its success drops the stored answer.
        Invalidate => "invalidate",
    }
}

label_enum! {
    /// Why a stored value was deleted or overwritten (`evictions`).
    enum Eviction {
        /// Found past its freshness (kv had not dropped it yet).
        Stale => "stale",
        /// Not a value this version can read.
        Unreadable => "unreadable",
        /// The resource's answers now vary on other headers.
        Replaced => "replaced",
        /// A POST, PUT, PATCH or DELETE to the resource succeeded.
        Invalidated => "invalidated",
    }
}

label_enum! {
    /// The kv call that failed (`kv_errors`).
    enum KvOp {
        Get => "get",
        Set => "set",
        Delete => "delete",
    }
}

const KV_ERROR_KINDS: &[&str] = &["unavailable", "invalid", "full"];

/// What `on_request` decided, for `on_response`.
#[derive(Debug, PartialEq, Eq)]
struct Pending {
    outcome: Outcome,
    /// The answer may be stored (a GET that did not say `no-store`).
    store: bool,
    /// The request carried `Authorization`: store only shareable answers.
    authorized: bool,
    /// The resource's base key.
    base: String,
}

impl Pending {
    fn encode(&self) -> String {
        format!(
            "{} {}{} {}",
            self.outcome.label(),
            u8::from(self.store),
            u8::from(self.authorized),
            self.base
        )
    }

    fn decode(text: &str) -> Option<Pending> {
        let mut parts = text.split(' ');
        let outcome = parts.next()?;
        let outcome = *Outcome::ALL.iter().find(|o| o.label() == outcome)?;
        let flags = parts.next()?.as_bytes();
        let base = parts.next()?.to_string();
        if flags.len() != 2 || base.len() != 64 || parts.next().is_some() {
            return None;
        }
        Some(Pending {
            outcome,
            store: flags[0] == b'1',
            authorized: flags[1] == b'1',
            base,
        })
    }
}

/// The cache's metrics, declared by every instance in `configure`.
struct Metrics {
    hits: Metric,
    misses: Metric,
    bypasses: Metric,
    stores: Metric,
    uncacheable: Metric,
    evictions: Metric,
    kv_errors: Metric,
    stored_bytes: Metric,
    object_size: Metric,
}

impl Metrics {
    fn declare() -> Result<Metrics, String> {
        let m = Metrics {
            hits: Metric::counter("hits", &[])?,
            misses: Metric::counter("misses", &[])?,
            bypasses: Metric::counter("bypasses", &["reason"])?,
            stores: Metric::counter("stores", &[])?,
            uncacheable: Metric::counter("uncacheable", &["reason"])?,
            evictions: Metric::counter("evictions", &["reason"])?,
            kv_errors: Metric::counter("kv_errors", &["op", "kind"])?,
            stored_bytes: Metric::counter("stored_bytes", &[])?,
            object_size: Metric::histogram("object_size_bytes", &[])?,
        };
        m.bypasses.zero(&[&Bypass::labels(Bypass::ALL)]);
        m.uncacheable.zero(&[&NotStored::labels(NotStored::ALL)]);
        m.evictions.zero(&[&Eviction::labels(Eviction::ALL)]);
        m.kv_errors
            .zero(&[&KvOp::labels(KvOp::ALL), KV_ERROR_KINDS]);
        Ok(m)
    }
}

struct Cache {
    s: Settings,
    m: Metrics,
}

impl Filter for Cache {
    fn configure(config: &str) -> Result<(Self, Needs), String> {
        let s = config::parse(config)?;
        let m = Metrics::declare()?;
        // Bodies over the limit stream past unread, and are not stored.
        let needs = Needs::NONE.with_response_body(BodyLimit::pass(s.max_object_bytes));
        Ok((Cache { s, m }, needs))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let method = req.method();
        let cache_control = req.header_list("cache-control");
        let pragma = req.header_list("pragma");
        let facts = policy::RequestFacts {
            method: &method,
            cache_control: cache_control.as_deref(),
            pragma: pragma.as_deref(),
            authorization: req.header("authorization").is_some(),
        };
        let is_get = method == "GET";
        let pend = |outcome, store, authorized| Pending {
            outcome,
            store,
            authorized,
            base: self.base_key(req),
        };
        let pending = match policy::plan(&facts, self.s.cache_authorized) {
            Plan::Ignore => return Action::Continue,
            Plan::Invalidate => pend(Outcome::Invalidate, false, false),
            Plan::Bypass { reason, store } => {
                self.m.bypasses.inc(&[reason.label()]);
                let authorized = facts.authorization && !self.s.cache_authorized;
                pend(Outcome::Bypass, store && is_get, authorized)
            }
            Plan::Lookup {
                authorized,
                max_age,
            } => {
                let now = host::now_ms();
                let p = pend(Outcome::Miss, is_get, authorized);
                match self.find(req, &p.base, now) {
                    Err(()) => {
                        self.m.bypasses.inc(&[Bypass::KvError.label()]);
                        // kv is failing: storing would fail the same way.
                        Pending {
                            outcome: Outcome::Bypass,
                            store: false,
                            ..p
                        }
                    }
                    Ok(Some(entry)) if authorized && !entry.shared => {
                        self.m.bypasses.inc(&[Bypass::Authorization.label()]);
                        Pending {
                            outcome: Outcome::Bypass,
                            ..p
                        }
                    }
                    Ok(Some(entry)) if max_age.is_none_or(|m| entry.age_at(now) <= m) => {
                        self.m.hits.inc(&[]);
                        return self.answer(req, entry, now, method == "HEAD");
                    }
                    // Absent, or older than the request accepts.
                    Ok(_) => {
                        self.m.misses.inc(&[]);
                        p
                    }
                }
            }
        };
        if let Err(e) = req.set_context(CONTEXT_KEY, &pending.encode()) {
            v2::log!(Debug, "the outcome cannot travel to the response: {e}");
        }
        Action::Continue
    }

    fn on_response(&mut self, req: &Request, resp: &Response) -> Action {
        let Some(p) = req
            .get_context(CONTEXT_KEY)
            .and_then(|c| Pending::decode(&c))
        else {
            return Action::Continue;
        };
        match p.outcome {
            Outcome::Invalidate => {
                if (200..400).contains(&resp.status()) {
                    self.evict(&key::head_key(&p.base), Eviction::Invalidated);
                }
            }
            Outcome::Miss | Outcome::Bypass => {
                if p.store {
                    self.store(req, resp, &p);
                }
                if self.s.x_cache {
                    let _ = resp.set_header("x-cache", p.outcome.label().as_bytes());
                }
            }
        }
        Action::Continue
    }
}

impl Cache {
    /// The request's base key: always GET's, as a HEAD is answered, and an
    /// unsafe method invalidates, what a GET stored.
    fn base_key(&self, req: &Request) -> String {
        let extra: Vec<(&str, Option<String>)> = self
            .s
            .key_headers
            .iter()
            .map(|h| (h.as_str(), req.header_list(h)))
            .chain(
                self.s
                    .key_context
                    .iter()
                    .map(|k| (k.as_str(), req.get_context(k))),
            )
            .collect();
        let (scheme, authority, path, query) =
            (req.scheme(), req.authority(), req.path(), req.query());
        key::base(&key::Resource {
            method: "GET",
            scheme: &scheme,
            authority: authority.as_deref(),
            path: &path,
            query: query.as_deref(),
            extra: &extra,
        })
    }

    /// The request's values of the headers a resource varies on.
    fn vary_values<'a>(
        &self,
        req: &Request,
        names: &'a [String],
    ) -> Vec<(&'a str, Option<String>)> {
        names
            .iter()
            .map(|n| (n.as_str(), req.header_list(n)))
            .collect()
    }

    /// The fresh stored answer for this request, if any; `Err` when kv
    /// failed. Unusable values found on the way are deleted.
    fn find(&self, req: &Request, base: &str, now: u64) -> Result<Option<Entry>, ()> {
        let head = key::head_key(base);
        let Some(bytes) = self.get(&head)? else {
            return Ok(None);
        };
        let (at, entry) = match Record::decode(&bytes) {
            Ok(Record::Entry(entry)) => (head, entry),
            Ok(Record::Vary(record)) => {
                let values = self.vary_values(req, &record.names);
                let variant = key::variant_key(base, record.nonce, &values);
                let Some(bytes) = self.get(&variant)? else {
                    return Ok(None);
                };
                match Record::decode(&bytes) {
                    Ok(Record::Entry(entry)) => (variant, entry),
                    _ => {
                        self.evict(&variant, Eviction::Unreadable);
                        return Ok(None);
                    }
                }
            }
            Err(_) => {
                self.evict(&head, Eviction::Unreadable);
                return Ok(None);
            }
        };
        if now >= entry.expires_at_ms {
            self.evict(&at, Eviction::Stale);
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// The reply a hit gets: the stored answer with its `Age`, or a 304
    /// when the request's conditions hold for it.
    fn answer(&self, req: &Request, entry: Entry, now: u64, head: bool) -> Action {
        let age = entry.age_at(now).to_string().into_bytes();
        let conditional = policy::not_modified(
            req.header_list("if-none-match").as_deref(),
            req.header_str("if-modified-since").as_deref(),
            entry.header("etag"),
            entry.header("last-modified"),
        );
        let (status, mut headers, body) = if conditional && entry.status == 200 {
            // RFC 9110 section 15.4.5: what a 304 carries.
            let keep = [
                "cache-control",
                "content-location",
                "date",
                "etag",
                "expires",
                "last-modified",
                "vary",
            ];
            let headers: Vec<Header> = entry
                .headers
                .into_iter()
                .filter(|(n, _)| keep.contains(&n.as_str()))
                .collect();
            (304, headers, Vec::new())
        } else if head {
            (entry.status, entry.headers, Vec::new())
        } else {
            (entry.status, entry.headers, entry.body)
        };
        headers.push(("age".into(), age));
        if self.s.x_cache {
            headers.push(("x-cache".into(), b"hit".to_vec()));
        }
        Action::Respond(Reply {
            status,
            headers,
            body,
        })
    }

    /// Stores the upstream's answer when it may be.
    fn store(&self, req: &Request, resp: &Response, p: &Pending) {
        let now = host::now_ms();
        let cache_control = resp.header_list("cache-control");
        let (expires, date, age) = (
            resp.header_str("expires"),
            resp.header_str("date"),
            resp.header_str("age"),
        );
        let vary = resp.header_list("vary");
        let facts = policy::ResponseFacts {
            status: resp.status(),
            cache_control: cache_control.as_deref(),
            expires: expires.as_deref(),
            date: date.as_deref(),
            age: age.as_deref(),
            vary: vary.as_deref(),
            set_cookie: resp.header("set-cookie").is_some(),
        };
        let rules = policy::StoreRules {
            statuses: &self.s.statuses,
            default_ttl_ms: self.s.default_ttl_ms,
            max_ttl_ms: self.s.max_ttl_ms,
        };
        let ok = match policy::storable(&facts, p.authorized, &rules, now) {
            Ok(ok) => ok,
            Err(why) => return self.m.uncacheable.inc(&[why.label()]),
        };
        let body = match resp.body() {
            Ok(body) if body.len() <= self.s.max_object_bytes as usize => body,
            Ok(_) | Err(BodyError::TooLarge) => {
                return self.m.uncacheable.inc(&[NotStored::TooLarge.label()]);
            }
            Err(e) => {
                v2::log!(Warn, "the response body cannot be read: {e}");
                return;
            }
        };
        let headers: Vec<Header> = resp
            .headers()
            .into_iter()
            .filter(|(n, _)| !NOT_STORED.contains(&n.as_str()))
            .collect();
        let entry = Entry {
            stored_at_ms: now,
            expires_at_ms: now + ok.ttl_ms,
            age_s: u32::try_from(ok.age_s).unwrap_or(u32::MAX),
            shared: ok.shared,
            status: facts.status,
            headers,
            body,
        };
        let bytes = entry.encode();
        if bytes.len() > KV_MAX_VALUE {
            return self.m.uncacheable.inc(&[NotStored::TooLarge.label()]);
        }
        let names = vary
            .as_deref()
            .and_then(|v| policy::vary_names(v).ok())
            .unwrap_or_default();
        let head = key::head_key(&p.base);
        let stored = if names.is_empty() {
            self.set(&head, &bytes, ok.ttl_ms)
        } else {
            // The record listing the names is kept while they stay the
            // same, so the other variants stay reachable.
            let Ok(current) = self.get(&head) else {
                return;
            };
            let record = match current.and_then(|b| Record::decode(&b).ok()) {
                Some(Record::Vary(v)) if v.names == names => VaryRecord {
                    expires_at_ms: v.expires_at_ms.max(entry.expires_at_ms),
                    ..v
                },
                other => {
                    if other.is_some() {
                        self.m.evictions.inc(&[Eviction::Replaced.label()]);
                    }
                    VaryRecord {
                        nonce: now.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ host::monotonic_ns(),
                        expires_at_ms: entry.expires_at_ms,
                        names,
                    }
                }
            };
            let variant =
                key::variant_key(&p.base, record.nonce, &self.vary_values(req, &record.names));
            self.set(&variant, &bytes, ok.ttl_ms)
                && self.set(&head, &record.encode(), record.expires_at_ms - now)
        };
        if stored {
            self.m.stores.inc(&[]);
            self.m.stored_bytes.record(&[], bytes.len() as f64);
            self.m.object_size.record(&[], bytes.len() as f64);
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ()> {
        kv::get(key).map_err(|e| self.kv_error(KvOp::Get, &e))
    }

    fn set(&self, key: &str, value: &[u8], ttl_ms: u64) -> bool {
        kv::set(key, value, ttl_ms.max(1))
            .map_err(|e| self.kv_error(KvOp::Set, &e))
            .is_ok()
    }

    fn evict(&self, key: &str, why: Eviction) {
        if let Ok(true) = kv::delete(key).map_err(|e| self.kv_error(KvOp::Delete, &e)) {
            self.m.evictions.inc(&[why.label()]);
        }
    }

    fn kv_error(&self, op: KvOp, e: &StateError) {
        self.m.kv_errors.inc(&[op.label(), e.kind()]);
        v2::log!(Debug, "kv {} failed: {}", op.label(), e.message());
    }
}

v2::export_filter!(Cache);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_travels_in_the_context_and_nothing_else_decodes() {
        let p = Pending {
            outcome: Outcome::Miss,
            store: true,
            authorized: false,
            base: "a".repeat(64),
        };
        let text = p.encode();
        assert_eq!(text, format!("miss 10 {}", "a".repeat(64)));
        assert!(text.len() <= 4096);
        assert_eq!(Pending::decode(&text), Some(p));
        for bad in [
            "",
            "miss",
            "hit 10 aaaa",
            &format!("miss 1 {}", "a".repeat(64)),
            &format!("miss 10 {} x", "a".repeat(64)),
        ] {
            assert_eq!(Pending::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_kv_error_kind_is_declared() {
        use filter_sdk::v2::StateError;
        for e in [
            StateError::Unavailable(String::new()),
            StateError::Invalid(String::new()),
            StateError::Full(String::new()),
        ] {
            assert!(KV_ERROR_KINDS.contains(&e.kind()));
        }
    }
}
