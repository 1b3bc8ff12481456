//! A circuit breaker per instance: closed (requests flow) → open (requests
//! fail fast) after N consecutive failures or a failure rate over a window
//! with a minimum of requests; open → half-open after a cool-down that
//! doubles on each trip in a row; half-open lets a few probes through,
//! closes after M successes and opens again on a failure.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use crate::config::Millis;
use parking_lot::Mutex;
use serde::Deserialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker; 0 turns this trigger off.
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    /// Share of failed requests (0 to 1) over `window` that opens it; 0
    /// turns this trigger off.
    #[serde(default = "defaults::failure_rate")]
    pub failure_rate: f64,
    #[serde(default = "defaults::window")]
    pub window: Millis,
    /// Requests the window must hold before the rate counts.
    #[serde(default = "defaults::min_requests")]
    pub min_requests: u32,
    /// How long the breaker stays open after its first trip; each trip in
    /// a row doubles it, up to `max_cool_down`.
    #[serde(default = "defaults::cool_down")]
    pub cool_down: Millis,
    #[serde(default = "defaults::max_cool_down")]
    pub max_cool_down: Millis,
    /// Requests let through at once while half-open.
    #[serde(default = "defaults::half_open_probes")]
    pub half_open_probes: u32,
    /// Successful probes that close the breaker.
    #[serde(default = "defaults::successes_to_close")]
    pub successes_to_close: u32,
}

mod defaults {
    use crate::config::Millis;
    use std::time::Duration;
    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn failure_rate() -> f64 {
        0.5
    }
    pub fn window() -> Millis {
        Millis(Duration::from_secs(10))
    }
    pub fn min_requests() -> u32 {
        20
    }
    pub fn cool_down() -> Millis {
        Millis(Duration::from_secs(5))
    }
    pub fn max_cool_down() -> Millis {
        Millis(Duration::from_secs(60))
    }
    pub fn half_open_probes() -> u32 {
        1
    }
    pub fn successes_to_close() -> u32 {
        2
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: defaults::consecutive_failures(),
            failure_rate: defaults::failure_rate(),
            window: defaults::window(),
            min_requests: defaults::min_requests(),
            cool_down: defaults::cool_down(),
            max_cool_down: defaults::max_cool_down(),
            half_open_probes: defaults::half_open_probes(),
            successes_to_close: defaults::successes_to_close(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A change of state and why, for the log and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: &'static str,
}

/// Whether a request may go to the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as one of the half-open probes: report its outcome.
    Probe,
    No,
}

/// Outcome counts in one slice of the window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    start: Option<Instant>,
    requests: u32,
    failures: u32,
}

const BUCKETS: usize = 10;

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive_failures: u32,
    buckets: [Bucket; BUCKETS],
    open_until: Option<Instant>,
    /// Trips in a row without closing in between.
    trips: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive_failures: 0,
                buckets: [Bucket::default(); BUCKETS],
                open_until: None,
                trips: 0,
                probes_in_flight: 0,
                probe_successes: 0,
            }),
        }
    }

    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    /// Whether the balancer may pick this instance now, without taking a
    /// probe slot: an open breaker whose cool-down has passed counts as
    /// pickable, and `admit` then moves it to half-open.
    pub fn pickable(&self, now: Instant) -> bool {
        let g = self.inner.lock();
        match g.state {
            State::Closed => true,
            State::Open => g.open_until.is_some_and(|t| now >= t),
            State::HalfOpen => g.probes_in_flight < self.cfg.half_open_probes,
        }
    }

    /// Asks to send one request. A `Probe` must be followed by `record`.
    pub fn admit(&self, now: Instant) -> (Admit, Option<Transition>) {
        let mut g = self.inner.lock();
        let mut transition = None;
        if g.state == State::Open && g.open_until.is_some_and(|t| now >= t) {
            g.state = State::HalfOpen;
            g.probes_in_flight = 0;
            g.probe_successes = 0;
            transition = Some(Transition {
                from: State::Open,
                to: State::HalfOpen,
                reason: "cool_down_elapsed",
            });
        }
        let admit = match g.state {
            State::Closed => Admit::Yes,
            State::Open => Admit::No,
            State::HalfOpen if g.probes_in_flight < self.cfg.half_open_probes => {
                g.probes_in_flight += 1;
                Admit::Probe
            }
            State::HalfOpen => Admit::No,
        };
        (admit, transition)
    }

    /// Records the outcome of a request `admit` let through.
    pub fn record(&self, now: Instant, admitted: Admit, success: bool) -> Option<Transition> {
        let mut g = self.inner.lock();
        if admitted == Admit::Probe {
            g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
        }
        match g.state {
            State::HalfOpen if admitted == Admit::Probe => {
                if success {
                    g.probe_successes += 1;
                    if g.probe_successes >= self.cfg.successes_to_close {
                        g.state = State::Closed;
                        g.trips = 0;
                        g.consecutive_failures = 0;
                        g.buckets = [Bucket::default(); BUCKETS];
                        return Some(Transition {
                            from: State::HalfOpen,
                            to: State::Closed,
                            reason: "probes_succeeded",
                        });
                    }
                    None
                } else {
                    Some(self.trip(&mut g, now, State::HalfOpen, "probe_failed"))
                }
            }
            // Answers to requests sent before the breaker opened (or
            // ordinary requests racing a half-open switch) change nothing.
            State::HalfOpen | State::Open => None,
            State::Closed => {
                self.count(&mut g, now, success);
                if success {
                    g.consecutive_failures = 0;
                    return None;
                }
                g.consecutive_failures += 1;
                if self.cfg.consecutive_failures > 0
                    && g.consecutive_failures >= self.cfg.consecutive_failures
                {
                    return Some(self.trip(&mut g, now, State::Closed, "consecutive_failures"));
                }
                if self.cfg.failure_rate > 0.0 {
                    let (requests, failures) = self.window_counts(&g, now);
                    if requests >= self.cfg.min_requests
                        && failures as f64 >= self.cfg.failure_rate * requests as f64
                    {
                        return Some(self.trip(&mut g, now, State::Closed, "failure_rate"));
                    }
                }
                None
            }
        }
    }

    fn trip(&self, g: &mut Inner, now: Instant, from: State, reason: &'static str) -> Transition {
        g.trips += 1;
        let factor = 1u32 << (g.trips - 1).min(16);
        let cool = self
            .cfg
            .cool_down
            .0
            .saturating_mul(factor)
            .min(self.cfg.max_cool_down.0.max(self.cfg.cool_down.0));
        g.state = State::Open;
        g.open_until = Some(now + cool);
        g.probes_in_flight = 0;
        g.probe_successes = 0;
        Transition {
            from,
            to: State::Open,
            reason,
        }
    }

    fn bucket_len(&self) -> Duration {
        (self.cfg.window.0 / BUCKETS as u32).max(Duration::from_millis(1))
    }

    fn count(&self, g: &mut Inner, now: Instant, success: bool) {
        let len = self.bucket_len();
        let slot = &mut g.buckets[0];
        let fresh = slot
            .start
            .is_some_and(|s| now.saturating_duration_since(s) < len);
        if !fresh {
            // Shift: the newest bucket is always first.
            g.buckets.rotate_right(1);
            g.buckets[0] = Bucket {
                start: Some(now),
                requests: 0,
                failures: 0,
            };
        }
        g.buckets[0].requests += 1;
        if !success {
            g.buckets[0].failures += 1;
        }
    }

    fn window_counts(&self, g: &Inner, now: Instant) -> (u32, u32) {
        g.buckets
            .iter()
            .filter(|b| {
                b.start
                    .is_some_and(|s| now.saturating_duration_since(s) < self.cfg.window.0)
            })
            .fold((0, 0), |(r, f), b| (r + b.requests, f + b.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.0,
            window: Millis(Duration::from_secs(10)),
            min_requests: 10,
            cool_down: Millis(Duration::from_secs(1)),
            max_cool_down: Millis(Duration::from_secs(3)),
            half_open_probes: 1,
            successes_to_close: 2,
        }
    }

    fn send(b: &Breaker, now: Instant, ok: bool) -> (Admit, Option<Transition>) {
        let (a, t1) = b.admit(now);
        if a == Admit::No {
            return (a, t1);
        }
        let t2 = b.record(now, a, ok);
        (a, t2.or(t1))
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        assert_eq!(send(&b, t0, false).1, None);
        assert_eq!(send(&b, t0, true).1, None, "a success resets the run");
        send(&b, t0, false);
        send(&b, t0, false);
        let (_, t) = send(&b, t0, false);
        assert_eq!(
            t,
            Some(Transition {
                from: State::Closed,
                to: State::Open,
                reason: "consecutive_failures"
            })
        );
        assert_eq!(b.admit(t0 + Duration::from_millis(999)).0, Admit::No);
        assert!(!b.pickable(t0 + Duration::from_millis(999)));
    }

    #[test]
    fn half_open_probes_close_it_or_reopen_it_for_longer() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        for _ in 0..3 {
            send(&b, t0, false);
        }
        // After the cool-down one probe goes through, a second must wait.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.pickable(t1));
        let (a, t) = b.admit(t1);
        assert_eq!(a, Admit::Probe);
        assert_eq!(t.unwrap().reason, "cool_down_elapsed");
        assert_eq!(b.admit(t1).0, Admit::No, "one probe at a time");
        // It fails: open again, for twice as long.
        assert_eq!(b.record(t1, a, false).unwrap().reason, "probe_failed");
        assert_eq!(b.admit(t1 + Duration::from_millis(1999)).0, Admit::No);
        let t2 = t1 + Duration::from_secs(2);
        // Two successful probes close it.
        assert_eq!(send(&b, t2, true).0, Admit::Probe);
        let (a, t) = send(&b, t2, true);
        assert_eq!(a, Admit::Probe);
        assert_eq!(
            t,
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed,
                reason: "probes_succeeded"
            })
        );
        assert_eq!(b.admit(t2).0, Admit::Yes);
    }

    #[test]
    fn cool_down_doubles_up_to_its_cap_and_resets_on_close() {
        let b = Breaker::new(cfg());
        let mut now = Instant::now();
        for _ in 0..3 {
            send(&b, now, false);
        }
        let mut waits = Vec::new();
        for _ in 0..4 {
            let mut wait = Duration::ZERO;
            while b.admit(now + wait).0 == Admit::No {
                wait += Duration::from_millis(250);
            }
            waits.push(wait.as_millis());
            now += wait;
            // The probe fails (it was admitted by the loop's last admit).
            b.record(now, Admit::Probe, false);
        }
        assert_eq!(waits, [1000, 2000, 3000, 3000]);
    }

    #[test]
    fn opens_on_failure_rate_once_the_window_has_enough_requests() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            ..cfg()
        });
        let t0 = Instant::now();
        // Alternating outcomes: never 3 in a row, but half fail.
        for i in 0..9 {
            assert_eq!(send(&b, t0, i % 2 == 1).1, None, "below min_requests");
        }
        let (_, t) = send(&b, t0, false);
        assert_eq!(t.unwrap().reason, "failure_rate");
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 0.5,
            ..cfg()
        });
        let t0 = Instant::now();
        for _ in 0..9 {
            send(&b, t0, false);
        }
        // Eleven seconds later those nine are gone; ten new requests with
        // two failures stay under the rate.
        let t1 = t0 + Duration::from_secs(11);
        for i in 0..10 {
            assert_eq!(send(&b, t1, i >= 2).1, None);
        }
    }
}
