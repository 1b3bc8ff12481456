//! Passive outlier ejection: an instance that answers too many 5xx, or that
//! the gateway fails to reach too many times, in a row is taken out of
//! rotation for a while, longer each time it happens again; never more than
//! a set share of the cluster at once, so ejection cannot empty it (the
//! approach of Envoy's outlier detection).
//!
//! Time is passed in, so ejection is tested without sleeping.

use super::TryOutcome;
pub use crate::config::OutlierConfig;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// One instance's record.
#[derive(Debug, Default)]
pub struct Outlier {
    inner: Mutex<Inner>,
}

impl Outlier {
    pub fn ejected(&self, now: Instant) -> bool {
        self.inner.lock().ejected_until.is_some_and(|t| now < t)
    }

    /// Records a try. Returns the reason when the instance crossed a
    /// threshold and should be ejected; the caller decides, knowing how much
    /// of the cluster is out already, and calls `eject`.
    pub fn record(&self, cfg: &OutlierConfig, outcome: TryOutcome) -> Option<&'static str> {
        let mut g = self.inner.lock();
        let gateway_failure = matches!(
            outcome,
            TryOutcome::Connect
                | TryOutcome::Timeout
                | TryOutcome::Reset
                | TryOutcome::Status(502..=504)
        );
        let any_5xx = gateway_failure || matches!(outcome, TryOutcome::Status(500..=599));
        g.consecutive_5xx = if any_5xx { g.consecutive_5xx + 1 } else { 0 };
        g.consecutive_gateway = if gateway_failure {
            g.consecutive_gateway + 1
        } else {
            0
        };
        if cfg.consecutive_gateway_failures > 0
            && g.consecutive_gateway >= cfg.consecutive_gateway_failures
        {
            Some("consecutive_gateway_failures")
        } else if cfg.consecutive_5xx > 0 && g.consecutive_5xx >= cfg.consecutive_5xx {
            Some("consecutive_5xx")
        } else {
            None
        }
    }

    /// Takes the instance out until `now` plus its ejection time; returns
    /// that time.
    pub fn eject(&self, cfg: &OutlierConfig, now: Instant) -> Duration {
        let mut g = self.inner.lock();
        g.times_ejected += 1;
        let d = cfg
            .base_ejection_time
            .0
            .saturating_mul(g.times_ejected)
            .min(cfg.max_ejection_time.0.max(cfg.base_ejection_time.0));
        g.ejected_until = Some(now + d);
        g.consecutive_5xx = 0;
        g.consecutive_gateway = 0;
        d
    }
}

/// How many of `n` instances may be out at once.
pub fn max_ejected(cfg: &OutlierConfig, n: usize) -> usize {
    (n * cfg.max_ejected_percent.min(100) as usize / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Millis;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_gateway_failures: 2,
            base_ejection_time: Millis(Duration::from_secs(10)),
            max_ejection_time: Millis(Duration::from_secs(25)),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_5xx_or_gateway_failures_call_for_ejection() {
        let (c, o) = (cfg(), Outlier::default());
        assert_eq!(o.record(&c, TryOutcome::Status(500)), None);
        assert_eq!(o.record(&c, TryOutcome::Status(200)), None, "reset");
        assert_eq!(o.record(&c, TryOutcome::Status(500)), None);
        assert_eq!(o.record(&c, TryOutcome::Status(501)), None);
        assert_eq!(
            o.record(&c, TryOutcome::Status(500)),
            Some("consecutive_5xx")
        );
        let o = Outlier::default();
        assert_eq!(o.record(&c, TryOutcome::Connect), None);
        assert_eq!(
            o.record(&c, TryOutcome::Status(503)),
            Some("consecutive_gateway_failures")
        );
    }

    #[test]
    fn ejections_grow_with_repeats_up_to_the_cap_and_end_by_themselves() {
        let (c, o) = (cfg(), Outlier::default());
        let t0 = Instant::now();
        assert_eq!(o.eject(&c, t0), Duration::from_secs(10));
        assert!(o.ejected(t0 + Duration::from_secs(9)));
        assert!(!o.ejected(t0 + Duration::from_secs(10)));
        assert_eq!(o.eject(&c, t0), Duration::from_secs(20));
        assert_eq!(o.eject(&c, t0), Duration::from_secs(25));
    }

    #[test]
    fn at_least_one_and_at_most_the_share_may_be_out() {
        let c = cfg();
        assert_eq!(max_ejected(&c, 1), 1);
        assert_eq!(max_ejected(&c, 2), 1);
        assert_eq!(max_ejected(&c, 10), 5);
    }
}
