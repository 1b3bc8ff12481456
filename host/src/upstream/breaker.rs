//! A circuit breaker per instance: closed (requests flow) → open (requests
//! fail fast) after N consecutive failures or a failure rate over a window
//! with a minimum of requests; open → half-open after a cool-down that
//! doubles on each trip in a row; half-open lets a few probes through,
//! closes after M successes and opens again on a failure.
//!
//! Time is passed in, so the state machine is tested without sleeping.

pub use crate::config::BreakerConfig;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

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

/// A request the breaker let through. Its outcome goes back through
/// [`Permit::record`]. A permit dropped without one belongs to a request
/// that was cancelled (its client reset the stream or went away mid-try):
/// a probe then gives its slot back, so the next request can probe.
///
/// A cancelled request counts as neither success nor failure. It says
/// nothing about the instance, only about the client; counting it as a
/// failure would let clients that give up early hold a healthy instance
/// out of service, and as a success would close the breaker on an instance
/// never heard from. Envoy and linkerd likewise do not count a request the
/// client cancelled as an upstream failure.
#[must_use = "a permit records the try's outcome; dropped, it counts as cancelled"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// For a half-open probe, the half-open period it was admitted in; a
    /// probe outliving its period (the breaker opened again meanwhile)
    /// must not take a slot or a vote from the next one.
    probe: Option<u64>,
}

impl Permit<'_> {
    /// Whether this request is one of the half-open probes.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Reports how the request ended.
    pub fn record(mut self, now: Instant, success: bool) -> Option<Transition> {
        let probe = self.probe.take();
        self.breaker.record(now, probe, success)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(period) = self.probe.take() {
            self.breaker.release(period);
        }
    }
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
    /// Counts half-open periods, so a probe can tell whether the period it
    /// was admitted in is still the current one.
    half_open_period: u64,
    /// The latest change of state and when, for the admin page.
    last: Option<(Transition, Instant)>,
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
                half_open_period: 0,
                last: None,
            }),
        }
    }

    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    /// The state, and the latest transition with when it happened.
    pub fn describe(&self) -> (State, Option<(Transition, Instant)>) {
        let g = self.inner.lock();
        (g.state, g.last)
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

    /// Asks to send one request: a permit when it may go, to be told the
    /// outcome (or dropped if the request is cancelled).
    pub fn admit(&self, now: Instant) -> (Option<Permit<'_>>, Option<Transition>) {
        let mut g = self.inner.lock();
        let mut transition = None;
        if g.state == State::Open && g.open_until.is_some_and(|t| now >= t) {
            g.state = State::HalfOpen;
            g.probes_in_flight = 0;
            g.probe_successes = 0;
            g.half_open_period += 1;
            let t = Transition {
                from: State::Open,
                to: State::HalfOpen,
                reason: "cool_down_elapsed",
            };
            g.last = Some((t, now));
            transition = Some(t);
        }
        let probe = match g.state {
            State::Closed => None,
            State::Open => return (None, transition),
            State::HalfOpen if g.probes_in_flight < self.cfg.half_open_probes => {
                g.probes_in_flight += 1;
                Some(g.half_open_period)
            }
            State::HalfOpen => return (None, transition),
        };
        let permit = Permit {
            breaker: self,
            probe,
        };
        (Some(permit), transition)
    }

    /// Whether `period` is the half-open period the breaker is in now.
    fn current_probe(g: &Inner, period: Option<u64>) -> bool {
        g.state == State::HalfOpen && period == Some(g.half_open_period)
    }

    /// Gives back the slot of a probe that ended without an outcome.
    fn release(&self, period: u64) {
        let mut g = self.inner.lock();
        if Breaker::current_probe(&g, Some(period)) {
            g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
        }
    }

    /// Records the outcome of a request `admit` let through; `probe` is the
    /// half-open period of a probe.
    fn record(&self, now: Instant, probe: Option<u64>, success: bool) -> Option<Transition> {
        let mut g = self.inner.lock();
        let transition = self.record_locked(&mut g, now, probe, success);
        if let Some(t) = transition {
            g.last = Some((t, now));
        }
        transition
    }

    fn record_locked(
        &self,
        g: &mut Inner,
        now: Instant,
        probe: Option<u64>,
        success: bool,
    ) -> Option<Transition> {
        let current_probe = Breaker::current_probe(g, probe);
        if current_probe {
            g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
        }
        match g.state {
            State::HalfOpen if current_probe => {
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
                    Some(self.trip(g, now, State::HalfOpen, "probe_failed"))
                }
            }
            // Answers to requests sent before the breaker opened, probes
            // of an earlier half-open period, and ordinary requests racing
            // a half-open switch change nothing.
            State::HalfOpen | State::Open => None,
            State::Closed => {
                self.count(g, now, success);
                if success {
                    g.consecutive_failures = 0;
                    return None;
                }
                g.consecutive_failures += 1;
                if self.cfg.consecutive_failures > 0
                    && g.consecutive_failures >= self.cfg.consecutive_failures
                {
                    return Some(self.trip(g, now, State::Closed, "consecutive_failures"));
                }
                if self.cfg.failure_rate > 0.0 {
                    let (requests, failures) = self.window_counts(g, now);
                    if requests >= self.cfg.min_requests
                        && failures as f64 >= self.cfg.failure_rate * requests as f64
                    {
                        return Some(self.trip(g, now, State::Closed, "failure_rate"));
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
    use crate::config::Millis;

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

    /// What `admit` said, for comparing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Admit {
        Yes,
        Probe,
        No,
    }

    fn kind(p: &Option<Permit<'_>>) -> Admit {
        match p {
            None => Admit::No,
            Some(p) if p.is_probe() => Admit::Probe,
            Some(_) => Admit::Yes,
        }
    }

    /// Admits one request and, if it may go, records its outcome.
    fn send(b: &Breaker, now: Instant, ok: bool) -> (Admit, Option<Transition>) {
        let (p, t1) = b.admit(now);
        let a = kind(&p);
        let t2 = p.and_then(|p| p.record(now, ok));
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
        assert_eq!(kind(&b.admit(t0 + Duration::from_millis(999)).0), Admit::No);
        assert!(!b.pickable(t0 + Duration::from_millis(999)));
    }

    #[test]
    fn describe_gives_the_latest_transition_and_when() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        assert_eq!(b.describe(), (State::Closed, None));
        for _ in 0..3 {
            send(&b, t0, false);
        }
        let (state, last) = b.describe();
        assert_eq!(state, State::Open);
        assert_eq!(
            last.map(|(t, at)| (t.reason, at)),
            Some(("consecutive_failures", t0))
        );
        // The cool-down passing is a transition too, seen on the next admit.
        let t1 = t0 + Duration::from_secs(1);
        let (permit, _) = b.admit(t1);
        let (state, last) = b.describe();
        assert_eq!(state, State::HalfOpen);
        assert_eq!(
            last.map(|(t, at)| (t.reason, at)),
            Some(("cool_down_elapsed", t1))
        );
        drop(permit);
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
        let (p, t) = b.admit(t1);
        assert_eq!(kind(&p), Admit::Probe);
        assert_eq!(t.unwrap().reason, "cool_down_elapsed");
        assert_eq!(kind(&b.admit(t1).0), Admit::No, "one probe at a time");
        // It fails: open again, for twice as long.
        assert_eq!(p.unwrap().record(t1, false).unwrap().reason, "probe_failed");
        assert_eq!(
            kind(&b.admit(t1 + Duration::from_millis(1999)).0),
            Admit::No
        );
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
        assert_eq!(kind(&b.admit(t2).0), Admit::Yes);
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
            let probe = loop {
                if let (Some(p), _) = b.admit(now + wait) {
                    break p;
                }
                wait += Duration::from_millis(250);
            };
            waits.push(wait.as_millis());
            now += wait;
            assert!(
                probe.record(now, false).is_some(),
                "a failed probe opens it"
            );
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

    #[test]
    fn a_cancelled_probe_gives_its_slot_back_and_counts_for_nothing() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        for _ in 0..3 {
            send(&b, t0, false);
        }
        let t1 = t0 + Duration::from_secs(1);
        let (probe, _) = b.admit(t1);
        assert_eq!(kind(&probe), Admit::Probe);
        assert!(!b.pickable(t1), "the one probe slot is taken");
        assert_eq!(kind(&b.admit(t1).0), Admit::No);
        // The request carrying it is cancelled: its future, and with it
        // the permit, is dropped before an outcome.
        drop(probe);
        assert!(b.pickable(t1), "the slot is free again");
        assert_eq!(b.state(), State::HalfOpen, "not counted as a failure");
        // Two more successful probes close it: the cancelled one was not
        // counted as a success either.
        assert_eq!(send(&b, t1, true), (Admit::Probe, None));
        assert_eq!(send(&b, t1, true).1.unwrap().reason, "probes_succeeded");
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn an_ordinary_request_cancelled_changes_nothing() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        send(&b, t0, false);
        send(&b, t0, false);
        drop(b.admit(t0).0);
        // Still two failures in a row: the third opens it.
        assert_eq!(
            send(&b, t0, false).1.unwrap().reason,
            "consecutive_failures"
        );
    }

    #[test]
    fn a_probe_of_an_earlier_half_open_period_takes_no_slot_or_vote() {
        let b = Breaker::new(BreakerConfig {
            half_open_probes: 2,
            ..cfg()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            send(&b, t0, false);
        }
        let t1 = t0 + Duration::from_secs(1);
        let (failing, _) = b.admit(t1);
        let (cancelled_late, _) = b.admit(t1);
        assert_eq!(kind(&b.admit(t1).0), Admit::No, "two probes at most");
        assert_eq!(failing.unwrap().record(t1, false).unwrap().to, State::Open);

        // A new period with both its slots taken. The old period's other
        // probe is cancelled now: it frees no slot of the new period.
        let t2 = t1 + Duration::from_secs(2);
        let (failing, _) = b.admit(t2);
        let (answered_late, _) = b.admit(t2);
        drop(cancelled_late);
        assert!(!b.pickable(t2), "the new period's slots stay taken");
        assert_eq!(failing.unwrap().record(t2, false).unwrap().to, State::Open);

        // And a probe answering in a later period has no vote there.
        let t3 = t2 + Duration::from_secs(3);
        let (a, _) = b.admit(t3);
        let (c, _) = b.admit(t3);
        assert_eq!((kind(&a), kind(&c)), (Admit::Probe, Admit::Probe));
        assert_eq!(answered_late.unwrap().record(t3, true), None);
        assert!(!b.pickable(t3), "the new period's slots stay taken");
        assert_eq!(a.unwrap().record(t3, true), None, "one vote of two");
        assert_eq!(
            c.unwrap().record(t3, true).unwrap().reason,
            "probes_succeeded"
        );
    }
}
