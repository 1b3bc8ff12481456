//! The rules that span sections: what routes refer to, deadlines measured
//! against `[server]`'s, and plugin files found through `[plugins]`.

use super::{Config, ConfigError, Source, list_or_none};

pub(super) fn across_sections(config: &Config, src: &Source<'_>) -> Result<(), ConfigError> {
    // One file cannot have two hashes: filters sharing a plugin pin it
    // alike, or the later pin could never be met.
    let mut pins: std::collections::BTreeMap<&str, (&str, &str)> = Default::default();
    for (name, f) in &config.filters {
        let Some(pin) = f.sha256.as_deref() else {
            continue;
        };
        match pins.get(f.plugin.as_str()) {
            Some((first, theirs)) if !theirs.eq_ignore_ascii_case(pin) => {
                return Err(src.error_key(
                    &["filters", name, "sha256"],
                    format!(
                        "[filters.{name}] pins plugin `{}` to another hash than [filters.{first}] does; one file has one hash",
                        f.plugin.as_str()
                    ),
                ));
            }
            Some(_) => {}
            None => {
                pins.insert(f.plugin.as_str(), (name, pin));
            }
        }
    }
    // Two listeners on one address: the second would fail to bind at start
    // (port 0 asks for any free port, so it never collides). Each is
    // named by its setting and by the table whose listener it is.
    let tls_redirect = config.server.tls.as_ref().and_then(|t| t.redirect_listen);
    let listeners: Vec<(std::net::SocketAddr, &[&str], &str, &str)> = [
        Some((
            config.server.listen,
            &["server", "listen"][..],
            "[server] listen",
            "[server]",
        )),
        config.admin.as_ref().map(|a| {
            (
                a.listen,
                &["admin", "listen"][..],
                "[admin] listen",
                "[admin]",
            )
        }),
        config
            .echo
            .as_ref()
            .map(|e| (e.listen, &["echo", "listen"][..], "[echo] listen", "[echo]")),
        tls_redirect.map(|a| {
            (
                a,
                &["server", "tls", "redirect_listen"][..],
                "[server.tls] redirect_listen",
                "the https redirect",
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (i, (addr, at, setting, _)) in listeners.iter().enumerate() {
        if let Some((_, _, _, first)) = listeners[..i]
            .iter()
            .find(|(other, ..)| other == addr && addr.port() != 0)
        {
            return Err(src.error_key(
                at,
                format!(
                    "{setting} is {addr}, which {first} listens on already; give each listener its own port"
                ),
            ));
        }
    }
    for (i, r) in config.tcp_routes.iter().enumerate() {
        let index = i.to_string();
        let id = &r.id;
        if let Some((_, _, setting, _)) = listeners.iter().find(|(other, ..)| *other == r.listen) {
            return Err(src.error_key(
                &["tcp_route", &index, "listen"],
                format!(
                    "tcp_route `{id}` listens on {}, which {setting} takes already; give the route its own port",
                    r.listen
                ),
            ));
        }
        let up = &r.upstream;
        let Some(cluster) = config.upstreams.get(up) else {
            let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
            return Err(src.error_key(
                &["tcp_route", &index, "upstream"],
                format!("tcp_route `{id}` sends to upstream `{up}`, which is not defined; define [upstreams.{up}] or use one of: {}", list_or_none(&known)),
            ));
        };
        // The route passes the client's bytes as they are, TLS included; a
        // cluster that speaks TLS to its instances is an HTTP cluster.
        src.require(cluster.tls.is_none(), &["tcp_route", &index, "upstream"], || {
            format!("tcp_route `{id}` sends to upstream `{up}`, which has `tls`; a TCP route passes the client's bytes through unchanged (TLS passthrough included), so give it a cluster without `tls`")
        })?;
    }
    if let Some(token) = config.admin.as_ref().and_then(|a| a.token.as_deref()) {
        src.require(
            token.len() >= super::MIN_ADMIN_TOKEN_BYTES && !token.chars().any(char::is_whitespace),
            &["admin", "token"],
            || {
                format!(
                    "[admin] token must be at least {} characters without spaces; generate one with `openssl rand -hex 32`, or leave it out to keep mutating admin calls to loopback",
                    super::MIN_ADMIN_TOKEN_BYTES
                )
            },
        )?;
    }
    for (name, f) in &config.filters {
        let plugin = f.plugin.as_str();
        let path = config.plugin_path(plugin);
        src.require(path.is_file(), &["filters", name, "plugin"], || {
            format!(
                "filter `{name}` uses plugin `{plugin}`, but {} does not exist; build the plugin or fix the name",
                path.display()
            )
        })?;
    }
    for (name, f) in &config.filters {
        for (i, cluster) in f.callouts.iter().enumerate() {
            src.require(
                config.upstreams.contains_key(cluster),
                &["filters", name, "callouts", &i.to_string()],
                || {
                    let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
                    format!("filter `{name}` may call upstream `{cluster}`, which is not defined; define [upstreams.{cluster}] or use one of: {}", list_or_none(&known))
                },
            )?;
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        let index = i.to_string();
        let id = &r.id;
        let up = &r.upstream;
        src.require(
            config.upstreams.contains_key(up),
            &["route", &index, "upstream"],
            || {
                let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
                format!("route `{id}` sends to upstream `{up}`, which is not defined; define [upstreams.{up}] or use one of: {}", list_or_none(&known))
            },
        )?;
        for (n, f) in r.filters.iter().enumerate() {
            src.require(
                config.filters.contains_key(f),
                &["route", &index, "filters", &n.to_string()],
                || {
                    let known: Vec<&str> = config.filters.keys().map(String::as_str).collect();
                    format!("route `{id}` runs filter `{f}`, which is not defined; define [filters.{f}] or use one of: {}", list_or_none(&known))
                },
            )?;
        }
        if let Some(try_timeout) = r.try_timeout {
            let (overall, whose) = match r.timeout {
                Some(t) => (t, "the route's timeout"),
                None => (config.server.request_timeout, "[server] request_timeout"),
            };
            src.require(
                try_timeout.0 <= overall.0,
                &["route", &index, "try_timeout"],
                || {
                    format!(
                        "try_timeout = {try_timeout} in route `{id}` is longer than {whose}, {overall}, which ends the exchange first; make try_timeout at most that, or remove it to give one try all of it"
                    )
                },
            )?;
        }
    }
    Ok(())
}
