//! Active health checks: every `interval`, a GET of `path` on each instance;
//! `unhealthy_threshold` failed checks in a row take an instance out of
//! rotation, `healthy_threshold` passed checks in a row bring it back.
//! Instances start healthy, so a gateway serves at once and a dead instance
//! leaves after its first few checks; an upstream without checks keeps
//! them healthy, and `gateway_upstream_healthy` says 1 for each.

pub use crate::config::HealthConfig;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

impl HealthConfig {
    pub fn passes(&self, status: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_status.contains(&status)
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval.0.max(Duration::from_millis(10))
    }
}

/// One instance's health as the checks see it.
#[derive(Debug)]
pub struct Health {
    healthy: AtomicBool,
    /// Checks in a row that disagree with `healthy`.
    streak: AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records one check; returns the new state when it changed. Only the
    /// checker task calls this, so the streak needs no stronger ordering.
    pub fn record(&self, cfg: &HealthConfig, passed: bool) -> Option<bool> {
        let healthy = self.is_healthy();
        if passed == healthy {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = if healthy {
            cfg.unhealthy_threshold
        } else {
            cfg.healthy_threshold
        };
        if streak >= threshold.max(1) {
            self.healthy.store(passed, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            Some(passed)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Millis;

    fn cfg() -> HealthConfig {
        HealthConfig {
            path: Some("/healthz".into()),
            interval: Millis(Duration::from_secs(5)),
            timeout: Millis(Duration::from_secs(1)),
            expected_status: vec![],
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            required: false,
        }
    }

    #[test]
    fn thresholds_take_an_instance_out_and_bring_it_back() {
        let (c, h) = (cfg(), Health::default());
        assert!(h.is_healthy());
        assert_eq!(h.record(&c, false), None);
        assert_eq!(h.record(&c, false), None);
        assert_eq!(h.record(&c, true), None, "a pass breaks the streak");
        assert_eq!(h.record(&c, false), None);
        assert_eq!(h.record(&c, false), None);
        assert_eq!(h.record(&c, false), Some(false));
        assert!(!h.is_healthy());
        assert_eq!(h.record(&c, true), None);
        assert_eq!(h.record(&c, true), Some(true));
    }

    #[test]
    fn expected_statuses() {
        let mut c = cfg();
        assert!(c.passes(204) && !c.passes(301) && !c.passes(503));
        c.expected_status = vec![200, 429];
        assert!(c.passes(429) && !c.passes(204));
    }
}
