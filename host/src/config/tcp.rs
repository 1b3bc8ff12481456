//! `[[tcp_route]]`: connections proxied byte for byte to an upstream
//! cluster, one route per listener, or several on one listener chosen by
//! the server name of a TLS ClientHello (passthrough: the gateway never
//! holds the services' keys).

use super::{ConfigError, HostPattern, Millis, Source, refuse_labelled};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteConfig {
    pub id: String,
    pub listen: SocketAddr,
    /// An `[upstreams.X]` cluster: its balancing, breakers (on connect
    /// failures), health checks, outlier ejection and
    /// `max_connections_per_instance` apply to each connection.
    pub upstream: String,
    /// A connection on which no byte moves either way for this long is
    /// closed.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Millis,
    /// Connections open on this route at once; more are refused.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// Connections open on this route at once from one client address;
    /// more are refused. No per-client limit when absent.
    pub max_connections_per_client: Option<u32>,
    /// A PROXY protocol header sent to the upstream before the client's
    /// bytes, so it learns the client's address.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Server names (exact, or `*.example.com` for one more label) this
    /// route takes on a listener shared by routes; the route without
    /// `sni` on such a listener takes every other ClientHello.
    #[serde(default)]
    pub sni: Vec<HostPattern>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// How long a TLS listener waits for the ClientHello it routes by.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The rules within the TCP routes: ids, limits, and how routes share a
/// listener. What they refer to is checked in `validate`.
pub(super) fn validate(routes: &[TcpRouteConfig], src: &Source<'_>) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let index = i.to_string();
        let id = r.id.as_str();
        let id_at = src.find(&["tcp_route", &index, "id"]).at;
        // Ids label metrics and name the route in the access log.
        src.require(
            super::is_plain_name(id),
            &["tcp_route", &index, "id"],
            || {
                format!("a tcp_route's id `{id}` is not a plain name; use letters, digits, `-` and `_`, like \"postgres\"")
            },
        )?;
        src.unique_id(&mut seen, "tcp_route", id, id_at)?;
        src.require(r.listen.port() != 0, &["tcp_route", &index, "listen"], || {
            format!("tcp_route `{id}` listens on port 0, which clients could not find; give it a port")
        })?;
        refuse_labelled(
            src,
            &["tcp_route", &index],
            &format!("tcp_route `{id}`"),
            &[
                (
                    "idle_timeout",
                    r.idle_timeout.0.is_zero(),
                    "would close every connection at once",
                    "use a duration like \"10m\"",
                ),
                (
                    "max_connections",
                    r.max_connections == 0,
                    "would refuse every connection",
                    "use 1 or more, like 10000",
                ),
                (
                    "max_connections_per_client",
                    r.max_connections_per_client == Some(0),
                    "would refuse every connection",
                    "use 1 or more, like 100, or leave it out for no per-client limit",
                ),
            ],
        )?;
    }
    // Routes sharing a listener are told apart by server name, so each
    // name belongs to one of them, and at most one takes the rest.
    let mut by_listener: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        by_listener.entry(r.listen).or_default().push(i);
    }
    let mut listeners: Vec<_> = by_listener.into_iter().collect();
    listeners.sort_by_key(|(_, members)| members[0]);
    for (addr, members) in listeners {
        let mut defaults = members.iter().filter(|&&i| routes[i].sni.is_empty());
        let first_default = defaults.next();
        if let Some(&second) = defaults.next() {
            let first = &routes[first_default.copied().unwrap_or(second)].id;
            let id = &routes[second].id;
            let message = if members.len() == 2 && members.iter().all(|&i| routes[i].sni.is_empty())
            {
                format!(
                    "tcp_route `{id}` listens on {addr} like tcp_route `{first}`; routes share a listener only when `sni` tells them apart, so give one its own port or both an `sni` list"
                )
            } else {
                format!(
                    "tcp_route `{id}` and tcp_route `{first}` both listen on {addr} without `sni`; only one route on a listener may take the ClientHellos no other names, so give `{id}` an `sni` list"
                )
            };
            return Err(src.error_key(&["tcp_route", &second.to_string(), "listen"], message));
        }
        let mut names: HashMap<&HostPattern, &str> = HashMap::new();
        for &i in &members {
            let r = &routes[i];
            for (n, name) in r.sni.iter().enumerate() {
                if let Some(other) = names.insert(name, &r.id) {
                    return Err(src.error_key(
                        &["tcp_route", &i.to_string(), "sni", &n.to_string()],
                        format!(
                            "tcp_route `{}` lists server name `{}`, which tcp_route `{other}` on {addr} lists already; a name can lead to one route",
                            r.id,
                            name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

mod defaults {
    use super::*;
    pub fn idle_timeout() -> Millis {
        Millis(Duration::from_secs(3600))
    }
    pub fn max_connections() -> u32 {
        10_000
    }
}
