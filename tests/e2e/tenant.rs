//! End-to-end behaviour of the tenant filter through the real gateway: a
//! probe filter before it plays the auth filter that puts a verified tenant
//! in the context, and a real upstream shows what got through.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

const FORBIDDEN: &str = r#"{"error":"forbidden","reason":"cross_tenant"}"#;
const CROSS: &str = "gateway_plugin_tenant_cross_tenant_total";
const REQUESTS: &str = "gateway_plugin_tenant_requests_total";

fn upstream_block(u: &Upstream) -> String {
    format!("[upstreams.up]\ninstances = [\"{}\"]\n\n", u.addr)
}

/// A probe filter named after a tenant, putting that tenant in the
/// context as an auth filter would after verifying a credential.
fn as_tenant(tenant: &str) -> String {
    format!(
        "[filters.{tenant}]\nplugin = \"probe\"\n[filters.{tenant}.config]\nname = \"{tenant}\"\nset_context = \"tenant\"\n\n"
    )
}

/// A probe after the tenant filter, copying the context's tenant into the
/// `x-context` header so the upstream shows what later filters see.
const READ_CONTEXT: &str = "[filters.after]\nplugin = \"probe\"\n[filters.after.config]\nname = \"after\"\nread_context = \"tenant\"\n\n";

/// The tenant filter `tenant` with `config` as its table (TOML lines;
/// sub-tables such as `routes.x` are written relative to the config table).
fn tenant_filter(config: &str) -> String {
    let mut out = String::from("[filters.tenant]\nplugin = \"tenant\"\n[filters.tenant.config]\n");
    for line in config.lines() {
        match line.strip_prefix('[') {
            Some(table) => out.push_str(&format!("[filters.tenant.config.{table}\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out.push('\n');
    out
}

fn route(id: &str, prefix: &str, filters: &[&str]) -> String {
    let list: Vec<String> = filters.iter().map(|f| format!("\"{f}\"")).collect();
    format!(
        "[[route]]\nid = \"{id}\"\npath_prefix = \"{prefix}\"\nupstream = \"up\"\nfilters = [{}]\n\n",
        list.join(", ")
    )
}

fn assert_refused(r: &RawResponse, status: u16, body: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body_text());
    assert_eq!(r.body_text(), body, "{what}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
}

#[test]
fn context_tenant_owning_the_route_passes_and_forged_headers_are_replaced() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{}{READ_CONTEXT}{}",
        upstream_block(&up),
        as_tenant("acme"),
        tenant_filter("[routes.orders]\ntenants = [\"acme\", \"globex\"]"),
        route("orders", "/orders", &["acme", "tenant", "after"]),
    ));
    let r = gw.get("/orders/7", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = up.last();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header_count("x-tenant-id"), 1);
    assert_eq!(seen.header("x-context"), Some("acme"));

    // A client claiming another tenant, twice and in mixed case: every copy
    // goes, and the upstream sees only the verified tenant.
    let r = gw.raw(
        b"GET /orders/7 HTTP/1.1\r\nhost: test.local\r\nX-Tenant-Id: globex\r\n\
          x-tenant-id: initech\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = up.last();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header_count("x-tenant-id"), 1);
    assert_eq!(up.count(), 2);

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[
                ("plugin", "tenant"),
                ("tenant", "acme"),
                ("route", "orders"),
                ("result", "allowed")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, CROSS, &[]),
        Some(0.0),
        "nothing cross-tenant happened"
    );
}

#[test]
fn a_header_contradicting_the_context_is_refused_as_a_conflict() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream_block(&up),
        as_tenant("acme"),
        tenant_filter("sources = [\"context\", \"header\"]"),
        route("api", "/api", &["acme", "tenant"]),
    ));
    let r = gw.get("/api/x", &[("X-Tenant-Id", "globex")]);
    assert_refused(&r, 403, FORBIDDEN, "forged header");
    assert_eq!(up.count(), 0, "the upstream is not called");
    // Two copies that disagree are a conflict as well, even when one of
    // them agrees with the context.
    let r = gw.raw(
        b"GET /api/x HTTP/1.1\r\nhost: test.local\r\nx-tenant-id: acme\r\n\
          x-tenant-id: globex\r\nconnection: close\r\n\r\n",
    );
    assert_refused(&r, 403, FORBIDDEN, "two copies");
    assert_eq!(up.count(), 0);

    // Agreeing sources, or a source that says nothing, are no conflict.
    let r = gw.get("/api/x", &[("x-tenant-id", "acme")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-tenant-id"), Some("acme"));
    assert_eq!(up.last().header_count("x-tenant-id"), 1);
    let r = gw.get("/api/x", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-tenant-id"), Some("acme"));

    let m = gw.metrics();
    assert_eq!(
        metric(&m, CROSS, &[("route", "api"), ("reason", "conflict")]),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[("tenant", "acme"), ("route", "api"), ("result", "refused")]
        ),
        Some(2.0)
    );
    let log = gw.log();
    assert!(
        log.contains(
            // The filter's words, quoted and escaped in the record's `text`.
            r#"text="cross-tenant request refused on route \"api\": context says \"acme\", header says \"globex\"""#
        ),
        "the conflict is logged with both tenants:\n{log}"
    );
}

#[test]
fn a_tenant_not_owning_the_route_is_refused_and_counted() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}{}",
        upstream_block(&up),
        as_tenant("acme"),
        as_tenant("globex"),
        tenant_filter(
            "[routes.billing-acme]\ntenants = [\"globex\"]\n[routes.billing-globex]\ntenants = [\"globex\"]"
        ),
        route("billing-acme", "/a/billing", &["acme", "tenant"]),
        route("billing-globex", "/g/billing", &["globex", "tenant"]),
    ));
    let r = gw.get("/g/billing", &[]);
    assert_eq!(r.status, 200, "the owner passes: {}", r.body_text());
    assert_eq!(up.last().header("x-tenant-id"), Some("globex"));
    for _ in 0..2 {
        let r = gw.get("/a/billing", &[("x-tenant-id", "globex")]);
        assert_refused(&r, 403, FORBIDDEN, "acme on globex's route");
    }
    assert_eq!(up.count(), 1, "refused requests never reach the upstream");

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            CROSS,
            &[
                ("plugin", "tenant"),
                ("route", "billing-acme"),
                ("reason", "not_owner")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[
                ("tenant", "acme"),
                ("route", "billing-acme"),
                ("result", "refused")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[
                ("tenant", "globex"),
                ("route", "billing-globex"),
                ("result", "allowed")
            ]
        ),
        Some(1.0)
    );
    let log = gw.log();
    assert!(
        log.contains("cross-tenant request refused") && log.contains("does not own it"),
        "the refusal is logged at info:\n{log}"
    );
}

#[test]
fn the_path_must_name_the_tenant_however_it_is_spelled() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream_block(&up),
        as_tenant("acme"),
        tenant_filter("[routes.tenants]\npath_template = \"/tenants/{tenant}/\""),
        route("tenants", "/tenants", &["acme", "tenant"]),
    ));
    // The gateway normalises before the filter runs, and the upstream gets
    // the same path the filter checked.
    for (raw, upstream_path) in [
        ("/tenants/acme/x", "/tenants/acme/x"),
        ("/tenants/acme", "/tenants/acme"),
        ("/tenants/%61cme/x", "/tenants/acme/x"),
        ("/tenants/globex/../acme/x", "/tenants/acme/x"),
    ] {
        let r = gw.get(raw, &[]);
        assert_eq!(r.status, 200, "{raw}: {}", r.body_text());
        assert_eq!(up.last().uri, upstream_path, "{raw}");
        assert_eq!(up.last().header("x-tenant-id"), Some("acme"), "{raw}");
    }
    let allowed = up.count();
    let refused = [
        "/tenants/globex/x",
        "/tenants/acme/../globex/x",
        "/tenants/%67lobex/x",
        "/tenants/acme/%2e%2e/globex/x",
        "/tenants/acme/%2E%2E/globex/x",
        // Escapes of reserved characters are kept, so the segment is not
        // `acme` and never matches.
        "/tenants/acme%40globex/x",
        "/tenants/ACME/x",
        "/tenants/acmecorp/x",
        "/tenants/",
        "/tenants",
    ];
    for raw in refused {
        let r = gw.get(raw, &[]);
        assert_refused(&r, 403, FORBIDDEN, raw);
    }
    // An encoded slash or a path parameter never reaches the filter: the
    // gateway refuses it.
    for raw in [
        "/tenants/acme%2Fglobex/x",
        "/tenants/acme%3B/x",
        "/tenants/acme/..;/globex/x",
    ] {
        let r = gw.get(raw, &[]);
        assert_eq!(r.status, 400, "{raw}");
        assert_eq!(r.header("x-gateway-error"), Some("bad-path"), "{raw}");
    }
    assert_eq!(up.count(), allowed, "no refused path reached the upstream");

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            CROSS,
            &[("route", "tenants"), ("reason", "path_mismatch")]
        ),
        Some(refused.len() as f64)
    );
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[
                ("tenant", "acme"),
                ("route", "tenants"),
                ("result", "allowed")
            ]
        ),
        Some(allowed as f64)
    );
}

#[test]
fn the_subdomain_names_the_tenant() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{READ_CONTEXT}{}",
        upstream_block(&up),
        tenant_filter(
            "sources = [\"subdomain\"]\nsubdomain_of = \"api.example.com\"\n[routes.app]\ntenants = [\"acme\"]"
        ),
        route("app", "/", &["tenant", "after"]),
    ));
    for host in [
        "acme.api.example.com",
        "ACME.Api.Example.com:8443",
        "acme.api.example.com.",
    ] {
        let r = gw.get("/x", &[("host", host), ("x-tenant-id", "globex")]);
        assert_eq!(r.status, 200, "{host}: {}", r.body_text());
        let seen = up.last();
        assert_eq!(seen.header("x-tenant-id"), Some("acme"), "{host}");
        assert_eq!(seen.header_count("x-tenant-id"), 1, "{host}");
        // Later filters see the tenant too.
        assert_eq!(seen.header("x-context"), Some("acme"), "{host}");
    }
    let before = up.count();
    let r = gw.get("/x", &[("host", "globex.api.example.com")]);
    assert_refused(&r, 403, FORBIDDEN, "another tenant's subdomain");
    // No label under the parent, or a look-alike parent: no tenant at all.
    for host in [
        "api.example.com",
        "acme.evilapi.example.com",
        "acme.api.example.com.evil.net",
    ] {
        let r = gw.get("/x", &[("host", host), ("x-tenant-id", "acme")]);
        assert_refused(
            &r,
            403,
            r#"{"error":"forbidden","reason":"no_tenant"}"#,
            host,
        );
    }
    // Two labels under the parent are not guessed at.
    let r = gw.get("/x", &[("host", "www.acme.api.example.com")]);
    assert_refused(
        &r,
        400,
        r#"{"error":"bad_request","reason":"invalid_tenant"}"#,
        "two labels",
    );
    assert_eq!(up.count(), before);

    let m = gw.metrics();
    assert_eq!(
        metric(&m, CROSS, &[("route", "app"), ("reason", "not_owner")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_tenant_refused_total",
            &[("route", "app"), ("reason", "no_tenant")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_tenant_refused_total",
            &[("route", "app"), ("reason", "invalid")]
        ),
        Some(1.0)
    );
}

#[test]
fn without_a_tenant_the_answer_is_403_unless_it_is_optional() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}[filters.optional]\nplugin = \"tenant\"\n[filters.optional.config]\nrequire_tenant = false\n\
         [filters.optional.config.routes.owned]\ntenants = [\"acme\"]\n\n\
         [filters.closed]\nplugin = \"tenant\"\n[filters.closed.config]\nunlisted_routes = \"deny\"\n\
         [filters.closed.config.routes.listed]\ntenants = [\"acme\"]\n\n{}{}{}{}{}{}",
        upstream_block(&up),
        as_tenant("acme"),
        tenant_filter(""),
        route("required", "/required", &["tenant"]),
        route("public", "/public", &["optional"]),
        route("owned", "/owned", &["optional"]),
        route("listed", "/listed", &["acme", "closed"]),
        route("unlisted", "/unlisted", &["acme", "closed"]),
    ));
    let no_tenant = r#"{"error":"forbidden","reason":"no_tenant"}"#;
    // By default a tenant is required; a client's own header is no tenant.
    let r = gw.get("/required", &[("x-tenant-id", "acme")]);
    assert_refused(&r, 403, no_tenant, "required");
    // Optional: the request passes, but a forged header still does not.
    let r = gw.get("/public", &[("x-tenant-id", "acme")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-tenant-id"), None);
    // A route with owners needs a tenant even when tenants are optional.
    let r = gw.get("/owned", &[]);
    assert_refused(&r, 403, no_tenant, "owned");
    // `unlisted_routes = "deny"`: only listed routes are open.
    let r = gw.get("/listed", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = gw.get("/unlisted", &[]);
    assert_refused(
        &r,
        403,
        r#"{"error":"forbidden","reason":"route_not_allowed"}"#,
        "unlisted",
    );
    assert_eq!(up.count(), 2);

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[("tenant", "-"), ("route", "public"), ("result", "allowed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "gateway_plugin_tenant_refused_total",
            &[("route", "unlisted"), ("reason", "unlisted_route")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[
                ("tenant", "acme"),
                ("route", "unlisted"),
                ("result", "refused")
            ]
        ),
        Some(1.0)
    );
}

#[test]
fn a_malformed_tenant_is_refused_with_400() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream_block(&up),
        tenant_filter("sources = [\"header\"]\nheader = \"X-Trusted-Tenant\""),
        route("api", "/api", &["tenant"]),
    ));
    let invalid = r#"{"error":"bad_request","reason":"invalid_tenant"}"#;
    let long = "a".repeat(64);
    for bad in [
        "Acme",
        "acme%2Fx",
        "-acme",
        "acme.corp",
        "acme,globex",
        long.as_str(),
    ] {
        let r = gw.get("/api", &[("x-trusted-tenant", bad)]);
        assert_refused(&r, 400, invalid, bad);
    }
    assert_eq!(up.count(), 0);
    let r = gw.get("/api", &[("x-trusted-tenant", &"a".repeat(63))]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    // Read from its own header, set on the upstream's: both names cleaned.
    let r = gw.get(
        "/api",
        &[("x-trusted-tenant", "acme_1"), ("x-tenant-id", "globex")],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = up.last();
    assert_eq!(seen.header("x-trusted-tenant"), None);
    assert_eq!(seen.header("x-tenant-id"), Some("acme_1"));
    assert_eq!(seen.header_count("x-tenant-id"), 1);
}

const HS_SECRET: &str = "tenant-tests-hs256-secret-of-32-bytes-or-more";

/// An HS256 token as an identity provider would issue it, ten minutes to
/// live, with `tenant` as its tenant claim when given.
fn token(sub: &str, tenant: Option<&str>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = json!({ "sub": sub, "exp": exp });
    if let Some(t) = tenant {
        claims["tenant"] = json!(t);
    }
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    format!(
        "Bearer {}",
        encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    )
}

#[test]
fn a_verified_token_for_one_tenant_cannot_reach_another() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "{}[filters.auth]\nplugin = \"auth\"\n[filters.auth.config.jwt]\n\
         keys = [{{ alg = \"HS256\", secret = \"{HS_SECRET}\" }}]\n\n{}{}",
        upstream_block(&up),
        tenant_filter("[routes.tenants]\npath_template = \"/tenants/{tenant}/\""),
        route("tenants", "/tenants", &["auth", "tenant"]),
    ));
    let acme = token("alice", Some("acme"));
    let r = gw.get("/tenants/acme/orders", &[("authorization", &acme)]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-tenant-id"), Some("acme"));
    let allowed = up.count();

    // The same token, another tenant's path, however it is spelled, and
    // whatever tenant header the client adds.
    for path in [
        "/tenants/globex/orders",
        "/tenants/acme/../globex/orders",
        "/tenants/%67lobex/orders",
    ] {
        let r = gw.get(path, &[("authorization", &acme), ("x-tenant-id", "globex")]);
        assert_refused(&r, 403, FORBIDDEN, path);
    }
    // Globex's own token does reach it.
    let globex = token("bob", Some("globex"));
    let r = gw.get("/tenants/globex/orders", &[("authorization", &globex)]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(up.last().header("x-tenant-id"), Some("globex"));
    // A verified token that names no tenant is no way in either.
    let r = gw.get(
        "/tenants/acme/orders",
        &[("authorization", &token("carol", None))],
    );
    assert_refused(
        &r,
        403,
        r#"{"error":"forbidden","reason":"no_tenant"}"#,
        "no claim",
    );
    assert_eq!(up.count(), allowed + 1);

    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            CROSS,
            &[("route", "tenants"), ("reason", "path_mismatch")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &m,
            REQUESTS,
            &[
                ("tenant", "acme"),
                ("route", "tenants"),
                ("result", "refused")
            ]
        ),
        Some(3.0)
    );
}

/// `gateway check` on a config with a tenant filter; the error line.
fn check(config: &str) -> String {
    check_config(&format!(
        "[upstreams.up]\ninstances = [\"127.0.0.1:3000\"]\n\n[[route]]\nid = \"x\"\nupstream = \"up\"\n\n{}",
        tenant_filter(config)
    ))
    .2
}

#[test]
fn mistakes_in_the_config_are_refused_at_load() {
    let refused =
        |msg: &str| format!("error: filter `tenant` refused its configuration: tenant: {msg}");
    assert_eq!(
        check("[routes.x]\ntenants = [\"acme\"]"),
        "",
        "a good config"
    );
    assert_eq!(
        check("[routes.y]\ntenants = [\"acme\"]"),
        refused("route `y` is not in the gateway's config; the routes are: x"),
        "a misspelt route id would leave the real route unguarded"
    );
    assert_eq!(
        check("sources = [\"subdomain\"]"),
        refused(
            "`sources` includes \"subdomain\" but `subdomain_of` is not set; set it to the parent domain, e.g. \"api.example.com\""
        )
    );
    assert_eq!(
        check("sources = [\"context\", \"context\"]"),
        refused("`sources` lists \"context\" twice")
    );
    assert_eq!(
        check("[routes.x]\npath_template = \"/tenants/{id}/\""),
        refused(
            "routes.x.path_template = \"/tenants/{id}/\" has a placeholder other than a whole `{tenant}` segment; write it like \"/tenants/{tenant}/\""
        )
    );
    assert_eq!(
        check("[routes.x]\ntenants = [\"Acme\"]"),
        refused(
            "routes.x.tenants has \"Acme\", which is not a tenant id (lower-case letters, digits, `-`, `_`; at most 63)"
        )
    );
    assert_eq!(
        check("upstream_header = \"connection\""),
        refused(
            "`upstream_header` = \"connection\" is managed by the gateway; choose another header"
        )
    );
    // A value its types refuse is named by path, and so pointed at.
    let cookie = check("sources = [\"cookie\"]");
    assert!(
        cookie.starts_with("error: CONFIG:")
            && cookie.contains(
                ": filter `tenant` refused its configuration: at `sources[0]`: tenant: unknown variant `cookie`"
            ),
        "{cookie}"
    );
}
