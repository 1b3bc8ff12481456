//! The instruments of TCP routes: connections accepted and refused (by
//! reason), open, their bytes each way per route and instance, and how long
//! they lived. Each route binds its series once when a configuration is
//! built, so a connection records through handles, and every series exists
//! at zero before the first connection.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, BoundUpDownCounter, Counter, Histogram, Meter, UpDownCounter,
};

/// The route label of refusals made before any route was chosen (a
/// ClientHello that names no route).
pub const NO_ROUTE: &str = "-";

/// Why a client's TCP connection was closed without being proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The route has `max_connections` open.
    MaxConnections,
    /// The route has `max_connections_per_client` open from this client's
    /// address.
    MaxConnectionsPerClient,
    /// The ClientHello names a server no route on the listener takes.
    UnknownSni,
    /// The ClientHello names no server and the listener has no default.
    NoSni,
    /// The first bytes are not a TLS ClientHello.
    BadClientHello,
    /// No complete ClientHello within the wait.
    ClientHelloTimeout,
    /// The cluster had no instance to pick.
    UpstreamUnavailable,
    /// Instances were tried and none took the connection.
    ConnectFailed,
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerClient,
        Refusal::UnknownSni,
        Refusal::NoSni,
        Refusal::BadClientHello,
        Refusal::ClientHelloTimeout,
        Refusal::UpstreamUnavailable,
        Refusal::ConnectFailed,
    ];

    /// Refusals that happen before a route is known (`max-connections`
    /// and `max-connections-per-client`: as many hellos being read as the
    /// listener's routes take, in all or from one client).
    pub const BEFORE_ROUTE: [Refusal; 6] = [
        Refusal::MaxConnections,
        Refusal::MaxConnectionsPerClient,
        Refusal::UnknownSni,
        Refusal::NoSni,
        Refusal::BadClientHello,
        Refusal::ClientHelloTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max-connections",
            Refusal::MaxConnectionsPerClient => "max-connections-per-client",
            Refusal::UnknownSni => "unknown-sni",
            Refusal::NoSni => "no-sni",
            Refusal::BadClientHello => "bad-client-hello",
            Refusal::ClientHelloTimeout => "client-hello-timeout",
            Refusal::UpstreamUnavailable => "upstream-unavailable",
            Refusal::ConnectFailed => "connect-failed",
        }
    }
}

/// Why a proxied connection ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed.
    Closed,
    /// No byte moved for the route's idle timeout.
    Idle,
    /// A read or write failed (a reset, mostly).
    Error,
    /// The gateway stopped and its grace period ran out.
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle",
            End::Error => "error",
            End::Shutdown => "shutdown",
        }
    }
}

pub struct TcpMetrics {
    accepted: Counter<u64>,
    refused: Counter<u64>,
    open: UpDownCounter<i64>,
    bytes: Counter<u64>,
    duration: Histogram<f64>,
}

impl TcpMetrics {
    pub fn new(meter: &Meter) -> TcpMetrics {
        TcpMetrics {
            accepted: meter
                .u64_counter("gateway_tcp_connections_accepted_total")
                .with_description("Client connections a TCP route proxied to an instance, by listener and route")
                .build(),
            refused: meter
                .u64_counter("gateway_tcp_connections_refused_total")
                .with_description("Client connections to TCP listeners closed without being proxied, by listener, route (- before one was chosen) and reason: max-connections, unknown-sni, no-sni, bad-client-hello, client-hello-timeout, upstream-unavailable, connect-failed")
                .build(),
            open: meter
                .i64_up_down_counter("gateway_tcp_connections_open")
                .with_description("Connections being proxied by TCP routes right now, by listener and route")
                .build(),
            bytes: meter
                .u64_counter("gateway_tcp_bytes_total")
                .with_description("Bytes proxied by TCP routes, by route, upstream, endpoint and direction (in: from the client, out: to the client), counted as they move")
                .build(),
            duration: meter
                .f64_histogram("gateway_tcp_connection_duration_seconds")
                .with_description("How long proxied TCP connections lived, by listener and route")
                .with_boundaries(vec![
                    0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
                ])
                .build(),
        }
    }

    /// The series of `listener` that no route owns, at zero.
    pub fn declare_listener(&self, listener: &str) {
        for r in Refusal::BEFORE_ROUTE {
            self.refused.add(0, &refusal_labels(listener, NO_ROUTE, r));
        }
    }

    /// A refusal before a route was chosen.
    pub fn refused_before_route(&self, listener: &str, why: Refusal) {
        self.refused
            .add(1, &refusal_labels(listener, NO_ROUTE, why));
    }

    /// A route's handles, every series at zero.
    pub fn route(&self, listener: &str, route: &str) -> RouteInstruments {
        let labels = [
            KeyValue::new("listener", listener.to_string()),
            KeyValue::new("route", route.to_string()),
        ];
        let accepted = self.accepted.bind(&labels);
        accepted.add(0);
        let open = self.open.bind(&labels);
        open.add(0);
        let refused = Refusal::ALL.map(|r| {
            let b = self.refused.bind(&refusal_labels(listener, route, r));
            b.add(0);
            b
        });
        RouteInstruments {
            route: route.to_string(),
            accepted,
            open,
            refused,
            duration: self.duration.bind(&labels),
            bytes: self.bytes.clone(),
        }
    }
}

fn refusal_labels(listener: &str, route: &str, why: Refusal) -> [KeyValue; 3] {
    [
        KeyValue::new("listener", listener.to_string()),
        KeyValue::new("route", route.to_string()),
        KeyValue::new("reason", why.as_str()),
    ]
}

/// One TCP route's instruments.
pub struct RouteInstruments {
    route: String,
    accepted: BoundCounter<u64>,
    open: BoundUpDownCounter<i64>,
    refused: [BoundCounter<u64>; Refusal::ALL.len()],
    duration: BoundHistogram<f64>,
    bytes: Counter<u64>,
}

impl RouteInstruments {
    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL
            .iter()
            .position(|r| *r == why)
            .expect("ALL lists every refusal");
        self.refused[i].add(1);
    }

    /// Counts a connection proxied, open until `closed`.
    pub fn accepted(&self) {
        self.accepted.add(1);
        self.open.add(1);
    }

    pub fn closed(&self, lived: std::time::Duration) {
        self.open.add(-1);
        self.duration.record(lived.as_secs_f64());
    }

    /// The byte counters (from the client, to the client) of one instance
    /// of this route's cluster, by its `upstream` and `endpoint` labels.
    pub fn bytes(&self, instance: &[KeyValue; 2]) -> [BoundCounter<u64>; 2] {
        ["in", "out"].map(|direction| {
            self.bytes.bind(&[
                KeyValue::new("route", self.route.clone()),
                instance[0].clone(),
                instance[1].clone(),
                KeyValue::new("direction", direction),
            ])
        })
    }
}
