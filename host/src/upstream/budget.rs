//! A retry budget: over a sliding window, retries may add at most `ratio`
//! of the requests sent, plus a small floor per second so a quiet route can
//! still retry. During an outage every first try fails and wants a retry;
//! the budget is what keeps retries from multiplying the load on a backend
//! that is already failing (the approach of Finagle and linkerd).
//!
//! Time is passed in, so the budget is tested without sleeping.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: Option<Instant>,
    requests: u32,
    retries: u32,
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_second: f64,
    window: Duration,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_second: f64, window: Duration) -> RetryBudget {
        RetryBudget {
            ratio: ratio.max(0.0),
            floor_per_second: floor_per_second.max(0.0),
            window: window.max(Duration::from_millis(BUCKETS as u64)),
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    /// Counts a first try.
    pub fn request(&self, now: Instant) {
        let mut b = self.buckets.lock();
        self.current(&mut b, now).requests += 1;
    }

    /// Takes one retry from the budget if there is room; false when the
    /// retry must not be sent.
    pub fn try_retry(&self, now: Instant) -> bool {
        let mut b = self.buckets.lock();
        let (requests, retries) = self.totals(&b, now);
        let allowed =
            self.ratio * requests as f64 + self.floor_per_second * self.window.as_secs_f64();
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.current(&mut b, now).retries += 1;
        true
    }

    fn current<'a>(&self, b: &'a mut [Bucket; BUCKETS], now: Instant) -> &'a mut Bucket {
        let len = self.window / BUCKETS as u32;
        if b[0]
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= len)
        {
            b.rotate_right(1);
            b[0] = Bucket {
                start: Some(now),
                requests: 0,
                retries: 0,
            };
        }
        &mut b[0]
    }

    fn totals(&self, b: &[Bucket; BUCKETS], now: Instant) -> (u32, u32) {
        b.iter()
            .filter(|x| {
                x.start
                    .is_some_and(|s| now.saturating_duration_since(s) < self.window)
            })
            .fold((0, 0), |(r, t), x| (r + x.requests, t + x.retries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_ratio_plus_floor_during_an_outage() {
        // 20% of requests, plus 1 a second over a 10 s window.
        let b = RetryBudget::new(0.2, 1.0, Duration::from_secs(10));
        let t0 = Instant::now();
        let mut retries = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(i as u64 * 5);
            b.request(now);
            // Every request fails and wants three retries.
            for _ in 0..3 {
                if b.try_retry(now) {
                    retries += 1;
                }
            }
        }
        // 1000 requests over 5 s: at most 0.2 * 1000 + 10 retries.
        assert!(retries <= 210, "{retries}");
        assert!(retries >= 200, "the budget is used, not wasted: {retries}");
    }

    #[test]
    fn a_quiet_route_can_still_retry_within_the_floor() {
        let b = RetryBudget::new(0.2, 1.0, Duration::from_secs(10));
        let t0 = Instant::now();
        b.request(t0);
        let granted = (0..20).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 10, "0.2 * 1 + 1/s * 10 s = 10.2");
    }

    #[test]
    fn the_budget_refills_as_the_window_slides() {
        let b = RetryBudget::new(0.0, 1.0, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| b.try_retry(t0)).count(), 10);
        assert!(!b.try_retry(t0 + Duration::from_secs(5)));
        assert!(b.try_retry(t0 + Duration::from_secs(11)));
    }
}
