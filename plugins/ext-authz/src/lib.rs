//! External authorisation: each request is checked by an HTTP service (one
//! of the gateway's upstreams, through `callout`) before it goes on. The
//! check carries the request's method and path (under `path_prefix`), the
//! headers `headers_to_send` names and no body. A 2xx answer allows, and
//! the headers `headers_from_authz` names are set on the request; any
//! other answer is the client's reply; a service that cannot answer (or
//! answers 5xx) fails closed with `failure_status`, or lets the request
//! through with `failure_mode_allow`.
//!
//! Allow answers may be reused for `allow_cache_ttl` from the gateway's kv
//! store, keyed by everything the check sent but the request id.

mod check;
mod config;

use check::{Decision, Failure, Incoming, Verdict};
use config::Settings;
use filter_sdk::v2::{
    self, Action, Filter, Header, LogLevel, Metric, Needs, Reply, Request, StateError, callout,
    host, kv, label_enum,
};

label_enum! {
    /// The kv call of the allow cache that failed (`kv_errors`).
    enum KvOp {
        Get => "get",
        Set => "set",
    }
}

const KV_ERROR_KINDS: &[&str] = &["unavailable", "invalid", "full"];

struct Metrics {
    decisions: Metric,
    errors: Metric,
    duration: Metric,
    kv_errors: Metric,
}

impl Metrics {
    fn declare() -> Result<Metrics, String> {
        let m = Metrics {
            decisions: Metric::counter("decisions", &["result"])?,
            errors: Metric::counter("errors", &["reason"])?,
            duration: Metric::histogram("check_duration_seconds", &[])?,
            kv_errors: Metric::counter("kv_errors", &["op", "kind"])?,
        };
        m.decisions.zero(&[&Verdict::labels(Verdict::ALL)]);
        m.errors.zero(&[&Failure::labels(Failure::ALL)]);
        m.kv_errors
            .zero(&[&KvOp::labels(KvOp::ALL), KV_ERROR_KINDS]);
        Ok(m)
    }
}

struct ExtAuthz {
    s: Settings,
    m: Metrics,
}

impl Filter for ExtAuthz {
    // Decides on the way in only.
    const RESPONSE_PHASE: bool = false;

    fn configure(config: &str) -> Result<(Self, Needs), String> {
        let s = config::parse(config)?;
        let m = Metrics::declare()?;
        Ok((ExtAuthz { s, m }, Needs::NONE))
    }

    fn on_request(&mut self, req: &Request) -> Action {
        let headers: Vec<Header> = self
            .s
            .headers_to_send
            .iter()
            .flat_map(|n| req.header_all(n).into_iter().map(move |v| (n.clone(), v)))
            .collect();
        let (method, path, query, authority, scheme, client_addr, request_id) = (
            req.method(),
            req.path(),
            req.query(),
            req.authority(),
            req.scheme(),
            req.client_addr(),
            req.request_id(),
        );
        let check = check::outbound(
            &self.s,
            Incoming {
                method: &method,
                path: &path,
                query: query.as_deref(),
                authority: authority.as_deref(),
                scheme: &scheme,
                client_addr: &client_addr,
                request_id: &request_id,
                headers,
            },
        );

        let cache_key = (self.s.allow_cache_ttl_ms > 0).then(|| check::cache_key(&check));
        if let Some(key) = &cache_key {
            match kv::get(key) {
                Ok(Some(bytes)) => {
                    if let Some(headers) = check::decode_allow(&bytes) {
                        self.m.decisions.inc(&[Verdict::CacheHit.label()]);
                        return self.allow(req, &headers);
                    }
                }
                Ok(None) => {}
                // The cache is an optimisation: ask the service instead.
                Err(e) => self.kv_error(KvOp::Get, &e),
            }
        }

        let started = host::monotonic_ns();
        let answer = callout::send(&check);
        let seconds = host::monotonic_ns().saturating_sub(started) as f64 / 1e9;
        self.m.duration.record(&[], seconds);
        let decision = match answer {
            Ok(answer) => check::decide(&self.s, answer),
            Err(e) => {
                // A cluster missing from `callouts` is the operator's to fix.
                let level = match e {
                    callout::CalloutError::NotAllowed(_)
                    | callout::CalloutError::InvalidRequest(_) => LogLevel::Error,
                    _ => LogLevel::Debug,
                };
                if host::log_enabled(level) {
                    host::log(level, &format!("the check failed: {e}"));
                }
                Decision::Error(Failure::of_kind(e.kind()))
            }
        };
        match decision {
            Decision::Allow(headers) => {
                self.m.decisions.inc(&[Verdict::Allow.label()]);
                if let Some(key) = &cache_key
                    && let Err(e) = kv::set(
                        key,
                        &check::encode_allow(&headers),
                        self.s.allow_cache_ttl_ms,
                    )
                {
                    self.kv_error(KvOp::Set, &e);
                }
                self.allow(req, &headers)
            }
            Decision::Deny {
                status,
                headers,
                body,
            } => {
                self.m.decisions.inc(&[Verdict::Deny.label()]);
                Action::Respond(Reply {
                    status,
                    headers,
                    body,
                })
            }
            Decision::Error(why) => self.fail(req, why),
        }
    }
}

impl ExtAuthz {
    /// Lets the request go on carrying the service's headers. Every name
    /// `headers_from_authz` lists is removed first, so a client cannot send
    /// one the service left out.
    fn allow(&self, req: &Request, headers: &[Header]) -> Action {
        self.remove_authz_headers(req);
        for (name, value) in headers {
            if let Err(e) = req.append_header(name, value) {
                v2::log!(Warn, "the service's `{name}` cannot be set: {e}");
                return self.fail(req, Failure::AnswerHeader);
            }
        }
        Action::Continue
    }

    /// Removes every header `headers_from_authz` names: what the upstream
    /// reads there is the service's word or nothing.
    fn remove_authz_headers(&self, req: &Request) {
        for name in &self.s.headers_from_authz {
            req.remove_header(name);
        }
    }

    /// The failure policy's answer to a check that did not decide. With
    /// `failure_mode_allow` the request goes on without any of the
    /// `headers_from_authz`: no service vouched for them, so a client's
    /// copies (or an allow's partly set ones) must not pass as if it had.
    fn fail(&self, req: &Request, why: Failure) -> Action {
        self.m.decisions.inc(&[Verdict::Error.label()]);
        self.m.errors.inc(&[why.label()]);
        if self.s.failure_mode_allow {
            self.remove_authz_headers(req);
            return Action::Continue;
        }
        v2::respond(
            self.s.failure_status,
            "text/plain",
            "the authorisation service did not answer\n",
        )
    }

    fn kv_error(&self, op: KvOp, e: &StateError) {
        self.m.kv_errors.inc(&[op.label(), e.kind()]);
        v2::log!(
            Debug,
            "allow cache: kv {} failed: {}",
            op.label(),
            e.message()
        );
    }
}

v2::export_filter!(ExtAuthz);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kv_error_kind_is_declared() {
        for e in [
            StateError::Unavailable(String::new()),
            StateError::Invalid(String::new()),
            StateError::Full(String::new()),
        ] {
            assert!(KV_ERROR_KINDS.contains(&e.kind()));
        }
    }
}
