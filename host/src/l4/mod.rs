//! TCP routes (`[[tcp_route]]`): listeners whose connections are proxied
//! byte for byte to an upstream cluster, chosen per listener, or by the
//! server name of the TLS ClientHello when routes share a listener.
//!
//! The routes are part of each configuration (`Routes`, built with the
//! upstreams they send to), so a reload changes them like anything else: a
//! connection is routed by the configuration current when it arrives and
//! keeps its route and instance for life. The sockets are not: they live
//! across reloads in `tcp_server`.

pub mod proxy_protocol;
pub mod relay;
pub mod sni;

use crate::config::{ProxyProtocol, ServerNames, TcpRouteConfig};
use crate::slots::{Slot, Slots};
use crate::telemetry::access_log::{TcpEntry, now_rfc3339};
use crate::telemetry::tcp::{End, Refusal, RouteInstruments};
use crate::telemetry::{ConnectionRefusal, Metrics};
use crate::upstream::Upstream;
use crate::upstream::stream::NotConnected;
use opentelemetry::metrics::BoundCounter;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One configuration's TCP routes, by listener.
#[derive(Default)]
pub struct Routes {
    listeners: HashMap<SocketAddr, Arc<Listener>>,
}

/// What a listener does with a connection.
pub struct Listener {
    /// The address as configured, which labels its metrics.
    label: String,
    choice: Choice,
}

enum Choice {
    /// One route takes every connection.
    Plain(Arc<Route>),
    /// Routes chosen by the ClientHello's server name; `default` takes a
    /// hello no route names (or that names none).
    ByName {
        names: ServerNames<Arc<Route>>,
        default: Option<Arc<Route>>,
        /// Connections whose hello is still being read, at most as many
        /// as the routes together take, in all and per client: a client
        /// cannot hold more sockets by never finishing its hello than by
        /// finishing it.
        reading: Arc<Slots>,
        max_reading: u32,
        max_reading_per_client: Option<u32>,
    },
}

pub struct Route {
    pub id: String,
    upstream: Arc<Upstream>,
    idle_timeout: Duration,
    max_connections: u32,
    max_connections_per_client: Option<u32>,
    proxy_protocol: Option<ProxyProtocol>,
    /// The server names it takes, as configured, for the admin page.
    sni: Vec<String>,
    /// Connections open on the route, carried over reloads that keep the
    /// route's id, so the limits count the old ones too.
    open: Arc<Slots>,
    instruments: RouteInstruments,
    /// Bytes from and to the client, per instance of the cluster, bound
    /// once here rather than per connection.
    bytes: Vec<[BoundCounter<u64>; 2]>,
}

impl Routes {
    /// The routes of a configuration, sending to its `upstreams`; routes
    /// of `previous` with the same ids keep their counts of open
    /// connections.
    pub fn new(
        configs: &[TcpRouteConfig],
        upstreams: &HashMap<String, Arc<Upstream>>,
        metrics: &Metrics,
        previous: Option<&Routes>,
    ) -> Routes {
        let previous_open: HashMap<&str, Arc<Slots>> = previous
            .into_iter()
            .flat_map(|p| p.listeners.values())
            .flat_map(|l| l.routes())
            .map(|r| (r.id.as_str(), r.open.clone()))
            .collect();
        let mut by_listener: HashMap<SocketAddr, Vec<&TcpRouteConfig>> = HashMap::new();
        for c in configs {
            by_listener.entry(c.listen).or_default().push(c);
        }
        let listeners = by_listener
            .into_iter()
            .map(|(addr, members)| {
                let label = addr.to_string();
                metrics.tcp.declare_listener(&label);
                let route = |c: &TcpRouteConfig| {
                    let upstream = upstreams[&c.upstream].clone();
                    let instruments = metrics.tcp.route(&label, &c.id);
                    let bytes = upstream
                        .instance_labels()
                        .iter()
                        .map(|instance| {
                            let counters = instruments.bytes(instance);
                            for c in &counters {
                                c.add(0);
                            }
                            counters
                        })
                        .collect();
                    Arc::new(Route {
                        id: c.id.clone(),
                        upstream,
                        idle_timeout: c.idle_timeout.0,
                        max_connections: c.max_connections,
                        max_connections_per_client: c.max_connections_per_client,
                        proxy_protocol: c.proxy_protocol,
                        sni: c.sni.iter().map(ToString::to_string).collect(),
                        open: previous_open
                            .get(c.id.as_str())
                            .cloned()
                            .unwrap_or_default(),
                        instruments,
                        bytes,
                    })
                };
                let by_name = members.iter().any(|c| !c.sni.is_empty());
                let choice = if by_name {
                    let mut names = ServerNames::default();
                    let mut default = None;
                    let max_reading = members
                        .iter()
                        .fold(0u32, |n, c| n.saturating_add(c.max_connections));
                    // Only when every route limits each client.
                    let max_reading_per_client = members.iter().try_fold(0u32, |n, c| {
                        c.max_connections_per_client.map(|m| n.saturating_add(m))
                    });
                    for c in &members {
                        let r = route(c);
                        if c.sni.is_empty() {
                            default = Some(r);
                        } else {
                            for name in &c.sni {
                                names.insert(name, r.clone());
                            }
                        }
                    }
                    Choice::ByName {
                        names,
                        default,
                        reading: Arc::default(),
                        max_reading,
                        max_reading_per_client,
                    }
                } else {
                    Choice::Plain(route(members[0]))
                };
                (addr, Arc::new(Listener { label, choice }))
            })
            .collect();
        Routes { listeners }
    }

    pub(crate) fn listener(&self, addr: &SocketAddr) -> Option<&Arc<Listener>> {
        self.listeners.get(addr)
    }

    pub fn addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.listeners.keys()
    }

    /// Each route with its listener, cluster, limits and open
    /// connections, by listener and id, for `/admin/state`.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        let mut all: Vec<(&Listener, &Arc<Route>)> = self
            .listeners
            .values()
            .flat_map(|l| l.routes().into_iter().map(move |r| (&**l, r)))
            .collect();
        all.sort_by(|a, b| (&a.0.label, &a.1.id).cmp(&(&b.0.label, &b.1.id)));
        // A route with several names is in the name map once per name.
        all.dedup_by(|a, b| Arc::ptr_eq(a.1, b.1));
        all.into_iter()
            .map(|(listener, r)| {
                serde_json::json!({
                    "id": r.id,
                    "listen": listener.label,
                    "upstream": &*r.upstream.name,
                    "sni": r.sni,
                    "default": matches!(&listener.choice, Choice::ByName { .. }) && r.sni.is_empty(),
                    "proxy_protocol": r.proxy_protocol.map(|p| match p {
                        ProxyProtocol::V1 => "v1",
                        ProxyProtocol::V2 => "v2",
                    }),
                    "idle_timeout_seconds": r.idle_timeout.as_secs_f64(),
                    "max_connections": r.max_connections,
                    "max_connections_per_client": r.max_connections_per_client,
                    "open": r.open.open(),
                })
            })
            .collect()
    }
}

impl Listener {
    fn routes(&self) -> Vec<&Arc<Route>> {
        match &self.choice {
            Choice::Plain(r) => vec![r],
            Choice::ByName { names, default, .. } => {
                let mut all: Vec<&Arc<Route>> = names.values().collect();
                all.extend(default);
                all
            }
        }
    }
}

/// The log line and counts of one connection.
struct Record<'a> {
    peer: SocketAddr,
    listener: &'a Listener,
    started: Instant,
    sni: Option<String>,
}

impl Record<'_> {
    fn log(
        &self,
        metrics: &Metrics,
        route: &str,
        upstream: Option<&str>,
        outcome: &'static str,
        bytes: (u64, u64),
    ) {
        let Some(log) = metrics.access_log.get() else {
            return;
        };
        log.write(&TcpEntry {
            time: now_rfc3339(),
            kind: "tcp",
            client: self.peer.to_string(),
            listener: self.listener.label.clone(),
            route,
            sni: self.sni.as_deref(),
            upstream,
            outcome,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
        });
    }

    fn refused(&self, metrics: &Metrics, route: Option<&Route>, why: Refusal) {
        match route {
            Some(r) => r.instruments.refused(why),
            None => metrics.tcp.refused_before_route(&self.listener.label, why),
        }
        tracing::debug!(
            peer = %self.peer,
            listener = &*self.listener.label,
            "tcp connection refused: {}",
            why.as_str()
        );
        let route = route.map_or(crate::telemetry::tcp::NO_ROUTE, |r| r.id.as_str());
        self.log(metrics, route, None, why.as_str(), (0, 0));
    }
}

impl Route {
    fn try_open(&self, client: IpAddr) -> Result<Slot, Refusal> {
        take(
            &self.open,
            client,
            self.max_connections,
            self.max_connections_per_client,
        )
    }
}

/// A slot in `slots` under a route's limits, or the refusal they make.
fn take(
    slots: &Arc<Slots>,
    client: IpAddr,
    max: u32,
    max_per_client: Option<u32>,
) -> Result<Slot, Refusal> {
    slots
        .take(client, max as usize, max_per_client.map(|m| m as usize))
        .map_err(|over| match over {
            ConnectionRefusal::TooManyConnections => Refusal::MaxConnections,
            ConnectionRefusal::TooManyClientConnections => Refusal::MaxConnectionsPerClient,
        })
}

pub(crate) async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    listener: Arc<Listener>,
    metrics: &Metrics,
    cut: impl std::future::Future<Output = ()>,
) {
    let mut record = Record {
        peer,
        listener: &listener,
        started: Instant::now(),
        sni: None,
    };
    let mut hello = Vec::new();
    let route = match &listener.choice {
        Choice::Plain(r) => r,
        Choice::ByName {
            names,
            default,
            reading,
            max_reading,
            max_reading_per_client,
        } => {
            let _reading = match take(reading, peer.ip(), *max_reading, *max_reading_per_client) {
                Ok(slot) => slot,
                Err(why) => return record.refused(metrics, None, why),
            };
            let read = tokio::time::timeout(
                crate::config::CLIENT_HELLO_TIMEOUT,
                sni::read_client_hello(&client, &mut hello),
            )
            .await
            .unwrap_or(Err(Refusal::ClientHelloTimeout));
            let name = match read {
                Ok(name) => name,
                Err(why) => return record.refused(metrics, None, why),
            };
            let chosen = name
                .as_deref()
                .and_then(|n| names.get(n))
                .or(default.as_ref());
            record.sni = name;
            match chosen {
                Some(r) => r,
                None => {
                    let why = if record.sni.is_some() {
                        Refusal::UnknownSni
                    } else {
                        Refusal::NoSni
                    };
                    let _ = relay::write_all(&client, &sni::UNRECOGNIZED_NAME_ALERT).await;
                    return record.refused(metrics, None, why);
                }
            }
        }
    };
    let _slot = match route.try_open(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => return record.refused(metrics, Some(route), why),
    };
    let connected = match route.upstream.connect_stream().await {
        Ok(c) => c,
        Err(NotConnected::Unavailable(_)) => {
            return record.refused(metrics, Some(route), Refusal::UpstreamUnavailable);
        }
        Err(NotConnected::Failed) => {
            return record.refused(metrics, Some(route), Refusal::ConnectFailed);
        }
    };
    route.instruments.accepted();
    let [inbound, outbound] = route.bytes[connected.instance]
        .clone()
        .map(relay::Direction::new);
    let upstream = &connected.stream;
    let mut first = match route.proxy_protocol {
        // The address the client reached: the configured one, unless the
        // listener is on a wildcard address.
        Some(v) => proxy_protocol::header(v, peer, client.local_addr().unwrap_or(listen)),
        None => Vec::new(),
    };
    first.extend_from_slice(&hello);
    // What must reach the upstream before the client's bytes: the PROXY
    // header, the ClientHello already read.
    let end = match relay::write_all(upstream, &first).await {
        Ok(()) => {
            inbound.moved(hello.len());
            relay::relay(
                &client,
                upstream,
                &inbound,
                &outbound,
                route.idle_timeout,
                cut,
            )
            .await
        }
        Err(_) => End::Error,
    };
    route.instruments.closed(record.started.elapsed());
    let instance = route.upstream.instance_addr(connected.instance);
    record.log(
        metrics,
        &route.id,
        instance,
        end.as_str(),
        (
            inbound.bytes.load(Ordering::Relaxed),
            outbound.bytes.load(Ordering::Relaxed),
        ),
    );
}
