//! Connections for TCP routes: an instance picked as for a request (healthy,
//! not ejected, its breaker admitting, under `max_connections_per_instance`),
//! connected within the cluster's `connect_timeout`, and held for as long as
//! the route's connection lives. A connection that cannot be made counts
//! against the instance's breaker and outlier record exactly as a request's
//! connect failure does, and the next instance is tried.

use super::{TryOutcome, Upstream};
use crate::upstream::balancer::OwnedInFlight;
use std::time::Instant;
use tokio::net::TcpStream;

/// Instances tried for one client connection before it is refused.
const MAX_CONNECT_TRIES: usize = 3;

/// A connection to one instance, counted against its connection limit
/// until dropped.
pub struct Connected {
    pub stream: TcpStream,
    /// Which of the cluster's instances, as `instance_labels` orders them.
    pub instance: usize,
    /// One of the instance's `max_connections_per_instance`, the count
    /// requests in flight take theirs from too.
    _slot: OwnedInFlight,
}

/// Why no connection was made; the label of the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotConnected {
    /// No instance could be picked (`no-healthy-instance`,
    /// `all-breakers-open`, `pool-exhausted`, `no-instance`).
    Unavailable(&'static str),
    /// Instances were tried and none took the connection.
    Failed,
}

impl Upstream {
    /// A connection to an instance of this cluster, or why there is none.
    pub async fn connect_stream(&self) -> Result<Connected, NotConnected> {
        let mut tried: Vec<usize> = Vec::new();
        let mut failed = false;
        while tried.len() < MAX_CONNECT_TRIES {
            let now = Instant::now();
            let eligible = |i: usize| self.pickable(i, now);
            let Some(i) = self.balancer.pick(eligible, &tried) else {
                if failed {
                    return Err(NotConnected::Failed);
                }
                return Err(NotConnected::Unavailable(self.unavailable(now)));
            };
            tried.push(i);
            let endpoint = &self.balancer.endpoints()[i];
            self.instruments[i].picked();
            let Some(slot) = endpoint.try_start_owned(self.max_in_flight) else {
                continue;
            };
            let (permit, t) = self.breakers[i].admit(now);
            self.note(i, t);
            let Some(permit) = permit else { continue };
            let started = Instant::now();
            let connected =
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*endpoint.addr))
                    .await;
            let took = started.elapsed();
            let (outcome, why) = match connected {
                Ok(Ok(stream)) => {
                    // A connection made is an answered try for the outlier
                    // record, which starts its failure counts over.
                    self.note_outlier(i, TryOutcome::Status(200));
                    let t = permit.record(Instant::now(), true);
                    self.note(i, t);
                    let _ = stream.set_nodelay(true);
                    return Ok(Connected {
                        stream,
                        instance: i,
                        _slot: slot,
                    });
                }
                Ok(Err(e)) => (TryOutcome::Connect, Some(e)),
                Err(_) => (TryOutcome::Timeout, None),
            };
            failed = true;
            self.instruments[i].tried(outcome.kind(), took);
            self.note_outlier(i, outcome);
            let t = permit.record(Instant::now(), !self.failure_on.matches(outcome));
            self.note(i, t);
            if let Some(suppressed) = self.logs[i].try_failed(outcome).admit() {
                // Worded only for a line the rate limit lets through.
                let why = match why {
                    Some(e) => e.to_string(),
                    None => format!("no connection within {:?}", self.connect_timeout),
                };
                tracing::warn!(
                    upstream = &*self.name,
                    instance = &*endpoint.addr,
                    "TCP connection failed: {why}{suppressed}"
                );
            }
        }
        Err(NotConnected::Failed)
    }
}
