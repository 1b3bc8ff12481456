//! What the admin page shows of an upstream: per instance its health,
//! breaker (with the reason and age of its last transition), ejection,
//! requests in flight and pooled connections.

use super::Upstream;
use serde_json::{Value, json};
use std::time::Instant;

impl Upstream {
    pub fn describe(&self) -> Value {
        let now = Instant::now();
        let instances: Vec<Value> = self
            .balancer
            .endpoints()
            .iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let (state, last) = self.breakers[i].describe();
                let pool = &self.pools[i];
                json!({
                    "address": &*endpoint.addr,
                    "weight": endpoint.weight,
                    // Without active checks an instance counts as healthy:
                    // only the breaker and outlier detection take it out.
                    "healthy": self.health[i].is_healthy(),
                    "health_checked": self.health_cfg.is_some(),
                    "breaker": {
                        "state": state.label(),
                        "reason": last.map(|(t, _)| t.reason),
                        "since_seconds": last.map(|(_, at)| now.saturating_duration_since(at).as_secs_f64()),
                    },
                    "ejected": self.outlier_cfg.is_some() && self.outliers[i].ejected(now),
                    "in_flight": endpoint.in_flight(),
                    "max_connections": self.max_in_flight,
                    "pool": {
                        "open": pool.connections.open(),
                        "idle": pool.connections.idle(),
                        "max_idle": pool.max_idle(),
                    },
                })
            })
            .collect();
        json!({
            "name": &*self.name,
            "balancer": self.balancer.strategy(),
            "instances": instances,
        })
    }
}
