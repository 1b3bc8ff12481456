//! The filter's settings: parsed once per instance from the JSON the gateway
//! hands to `configure`, and checked so that a mistake is refused at load
//! rather than discovered as a wrong decision on live traffic.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Where a tenant may come from, tried in the configured order.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A context key set by an earlier filter (auth) from a verified claim.
    Context,
    /// A request header set by a trusted component in front of the gateway.
    Header,
    /// The first label of the host under `subdomain_of`.
    Subdomain,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Context => "context",
            Source::Header => "header",
            Source::Subdomain => "subdomain",
        }
    }
}

/// What happens on a route the `routes` table does not list.
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unlisted {
    #[default]
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_sources")]
    sources: Vec<Source>,
    #[serde(default = "default_context_key")]
    context_key: String,
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_header")]
    upstream_header: String,
    subdomain_of: Option<String>,
    #[serde(default = "default_true")]
    require_tenant: bool,
    #[serde(default)]
    unlisted_routes: Unlisted,
    #[serde(default)]
    routes: BTreeMap<String, RouteConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    tenants: Option<Vec<String>>,
    path_template: Option<String>,
}

fn default_sources() -> Vec<Source> {
    vec![Source::Context]
}
fn default_context_key() -> String {
    "tenant".into()
}
fn default_header() -> String {
    "x-tenant-id".into()
}
fn default_true() -> bool {
    true
}

/// Who may use one route.
pub struct Ownership {
    /// The tenants that own the route, sorted; `None` when any tenant may.
    pub tenants: Option<Vec<String>>,
    pub template: Option<Template>,
}

pub struct Settings {
    pub sources: Vec<Source>,
    pub context_key: String,
    pub header: String,
    pub upstream_header: String,
    /// `subdomain_of` with a leading dot (`.api.example.com`), lower case,
    /// so that a suffix match cannot take `evilapi.example.com` for it.
    pub subdomain_suffix: Option<String>,
    pub require_tenant: bool,
    pub unlisted: Unlisted,
    pub routes: HashMap<String, Ownership>,
}

/// The tenant id rule: a lower-case DNS-label-like name of 1 to 63
/// characters, `[a-z0-9][a-z0-9_-]{0,62}`. It is fixed rather than
/// configurable because it is what makes a tenant safe to put in a header,
/// a log line and a metric label, and it can never contain `%`, `/` or `.`,
/// so it can never equal a path segment that still carries an escape.
pub fn valid_tenant(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// Headers the gateway manages itself: a filter cannot set them, so naming
/// one here could only be a mistake.
const MANAGED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn header_name(key: &str, name: &str) -> Result<String, String> {
    let n = name.to_ascii_lowercase();
    if n.is_empty()
        || !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "tenant: `{key}` = {name:?} is not a valid header name"
        ));
    }
    if MANAGED_HEADERS.contains(&n.as_str()) {
        return Err(format!(
            "tenant: `{key}` = {name:?} is managed by the gateway; choose another header"
        ));
    }
    Ok(n)
}

fn subdomain_suffix(parent: &str) -> Result<String, String> {
    let p = parent
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ok = !p.is_empty()
        && p.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !ok {
        return Err(format!(
            "tenant: `subdomain_of` = {parent:?} is not a host name such as \"api.example.com\""
        ));
    }
    Ok(format!(".{p}"))
}

/// One segment of a path template.
#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Tenant,
}

/// A path template such as `/tenants/{tenant}/`: the path must start with
/// these segments, and the one at `{tenant}` names the tenant. What follows
/// the template's last segment is free.
#[derive(Debug)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    pub fn parse(route: &str, t: &str) -> Result<Template, String> {
        let bad = |why: &str| {
            Err(format!(
                "tenant: routes.{route}.path_template = {t:?} {why}; write it like \"/tenants/{{tenant}}/\""
            ))
        };
        let Some(rest) = t.strip_prefix('/') else {
            return bad("does not start with `/`");
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut segments = Vec::new();
        for s in rest.split('/') {
            if s == "{tenant}" {
                segments.push(Segment::Tenant);
            } else if s.is_empty() || s == "." || s == ".." {
                // The gateway normalises these away, so no path could match.
                return bad("has an empty, `.` or `..` segment");
            } else if s.contains(['{', '}']) {
                return bad("has a placeholder other than a whole `{tenant}` segment");
            } else {
                segments.push(Segment::Literal(s.to_string()));
            }
        }
        if segments.iter().filter(|s| **s == Segment::Tenant).count() != 1 {
            return bad("must contain `{tenant}` exactly once");
        }
        Ok(Template { segments })
    }

    /// The path's segment at `{tenant}`, when the path starts with the
    /// template's literal segments; `None` when it does not.
    pub fn tenant_in<'p>(&self, path: &'p str) -> Option<&'p str> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut found = None;
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l != part => return None,
                Segment::Literal(_) => {}
                Segment::Tenant => found = Some(part),
            }
        }
        found
    }
}

pub fn parse(json: &str) -> Result<Settings, String> {
    let c: Config = filter_sdk::v2::parse_config("tenant", json)?;
    if c.sources.is_empty() {
        return Err("tenant: `sources` is empty; list at least one of \"context\", \"header\", \"subdomain\"".into());
    }
    for (i, s) in c.sources.iter().enumerate() {
        if c.sources[..i].contains(s) {
            return Err(format!("tenant: `sources` lists {:?} twice", s.name()));
        }
    }
    if c.context_key.is_empty() || c.context_key.len() > 128 {
        return Err("tenant: `context_key` must be 1 to 128 bytes".into());
    }
    let subdomain_suffix = match (&c.subdomain_of, c.sources.contains(&Source::Subdomain)) {
        (Some(p), true) => Some(subdomain_suffix(p)?),
        (None, true) => {
            return Err(
                "tenant: `sources` includes \"subdomain\" but `subdomain_of` is not set; set it to the parent domain, e.g. \"api.example.com\"".into(),
            );
        }
        (Some(_), false) => {
            return Err(
                "tenant: `subdomain_of` is set but `sources` does not include \"subdomain\"; add it or remove `subdomain_of`".into(),
            );
        }
        (None, false) => None,
    };
    let mut routes = HashMap::new();
    for (id, r) in c.routes {
        if r.tenants.is_none() && r.path_template.is_none() {
            return Err(format!(
                "tenant: routes.{id} sets neither `tenants` nor `path_template`; set one, or remove the route to leave it to `unlisted_routes`"
            ));
        }
        let tenants = match r.tenants {
            Some(ts) => {
                if ts.is_empty() {
                    return Err(format!(
                        "tenant: routes.{id}.tenants is empty, which no tenant could pass; list the owners"
                    ));
                }
                if let Some(bad) = ts.iter().find(|t| !valid_tenant(t)) {
                    return Err(format!(
                        "tenant: routes.{id}.tenants has {bad:?}, which is not a tenant id (lower-case letters, digits, `-`, `_`; at most 63)"
                    ));
                }
                let mut ts = ts;
                ts.sort();
                ts.dedup();
                Some(ts)
            }
            None => None,
        };
        let template = r
            .path_template
            .map(|t| Template::parse(&id, &t))
            .transpose()?;
        routes.insert(id, Ownership { tenants, template });
    }
    Ok(Settings {
        sources: c.sources,
        context_key: c.context_key,
        header: header_name("header", &c.header)?,
        upstream_header: header_name("upstream_header", &c.upstream_header)?,
        subdomain_suffix,
        require_tenant: c.require_tenant,
        unlisted: c.unlisted_routes,
        routes,
    })
}
