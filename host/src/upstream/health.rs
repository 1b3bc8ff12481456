//! Active health checks: every `interval`, a GET of `path` on each instance;
//! `unhealthy_threshold` failed checks in a row take an instance out of
//! rotation, `healthy_threshold` passed checks in a row bring it back.
//! Instances start healthy, so a gateway serves at once and a dead instance
//! leaves after its first few checks.

use crate::config::Millis;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The path checked on each instance.
    pub path: String,
    #[serde(default = "defaults::interval")]
    pub interval: Millis,
    #[serde(default = "defaults::timeout")]
    pub timeout: Millis,
    /// Statuses that pass; any 2xx when absent.
    #[serde(default)]
    pub expected_status: Vec<u16>,
    #[serde(default = "defaults::healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "defaults::unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// `/ready` on the admin listener fails while no instance is healthy.
    #[serde(default)]
    pub required: bool,
}

mod defaults {
    use crate::config::Millis;
    use std::time::Duration;
    pub fn interval() -> Millis {
        Millis(Duration::from_secs(5))
    }
    pub fn timeout() -> Millis {
        Millis(Duration::from_secs(1))
    }
    pub fn healthy_threshold() -> u32 {
        2
    }
    pub fn unhealthy_threshold() -> u32 {
        3
    }
}

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

    fn cfg() -> HealthConfig {
        HealthConfig {
            path: "/healthz".into(),
            interval: defaults::interval(),
            timeout: defaults::timeout(),
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
