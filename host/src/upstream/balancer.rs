//! Picking an instance of a cluster. Every strategy chooses among the
//! instances the caller says are eligible (breaker closed or probing, not
//! ejected, healthy) and not already tried by this request, so a retry
//! lands elsewhere when it can.

pub use crate::config::Strategy;
use parking_lot::Mutex;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What the balancer knows about one instance.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: String,
    pub weight: u32,
    in_flight: AtomicU32,
    /// Exponentially weighted moving average of answer times, in µs.
    latency_ewma_us: AtomicU64,
    /// When the last sample came (µs since the process's monotonic start);
    /// 0 before the first, when the initial guess stands undecayed so that
    /// new instances compare equal.
    last_sample_us: AtomicU64,
}

/// How much a new latency sample moves the average (out of 1).
const EWMA_WEIGHT: f64 = 0.3;
/// The latency assumed before an instance has answered once: optimistic,
/// so new instances get traffic and a sample.
const INITIAL_LATENCY_US: u64 = 1_000;
/// How fast an old latency average fades (its time constant), so an
/// instance that was slow once is tried again later rather than starved
/// forever by P2C (linkerd's peak-EWMA decays the same way).
const LATENCY_DECAY: Duration = Duration::from_secs(10);

fn now_us() -> u64 {
    crate::clock::monotonic_ns() / 1_000
}

impl Endpoint {
    pub fn new(addr: impl Into<String>, weight: u32) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            weight: weight.max(1),
            in_flight: AtomicU32::new(0),
            latency_ewma_us: AtomicU64::new(INITIAL_LATENCY_US),
            last_sample_us: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency_ewma(&self) -> Duration {
        Duration::from_micros(self.latency_ewma_us.load(Ordering::Relaxed))
    }

    /// Folds one answer time into the average. Concurrent updates may lose
    /// a sample; an average does not need every one.
    pub fn record_latency(&self, d: Duration) {
        let sample = d.as_micros().min(u64::MAX as u128) as f64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed) as f64;
        let new = EWMA_WEIGHT * sample + (1.0 - EWMA_WEIGHT) * old;
        self.latency_ewma_us
            .store(new.round().max(1.0) as u64, Ordering::Relaxed);
        self.last_sample_us
            .store(now_us().max(1), Ordering::Relaxed);
    }

    /// The average, faded by the time since its last sample.
    fn decayed_latency_us(&self, now_us: u64) -> f64 {
        let avg = self.latency_ewma_us.load(Ordering::Relaxed) as f64;
        let last = self.last_sample_us.load(Ordering::Relaxed);
        if last == 0 {
            return avg;
        }
        let age = now_us.saturating_sub(last) as f64;
        avg * (-age / LATENCY_DECAY.as_micros() as f64).exp()
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Like `start`, but only while fewer than `max` are in flight.
    pub fn try_start(&self, max: u32) -> Option<InFlight<'_>> {
        self.take_slot(max).then(|| InFlight(self))
    }

    /// Like `try_start`, for a guard that outlives the borrow (a TCP
    /// connection's task holds it).
    pub fn try_start_owned(self: &Arc<Self>, max: u32) -> Option<OwnedInFlight> {
        self.take_slot(max).then(|| OwnedInFlight(self.clone()))
    }

    /// Counts one more in flight if fewer than `max` are; `release` undoes it.
    fn take_slot(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight to an endpoint; dropping it ends the count.
pub struct InFlight<'a>(&'a Endpoint);

/// An `InFlight` that owns its endpoint.
pub struct OwnedInFlight(Arc<Endpoint>);

impl Drop for OwnedInFlight {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

pub struct Balancer {
    strategy: Strategy,
    /// Shared with the next configuration when an instance stays, so its
    /// in-flight count and latency average carry over a reload.
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    /// Smooth weighted round robin's running weights.
    current: Mutex<Vec<i64>>,
}

impl Balancer {
    pub fn new(strategy: Strategy, endpoints: Vec<Arc<Endpoint>>) -> Balancer {
        let n = endpoints.len();
        Balancer {
            strategy,
            endpoints,
            next: AtomicUsize::new(0),
            current: Mutex::new(vec![0; n]),
        }
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// An instance index for the next try, among those `eligible` says yes
    /// to and `tried` does not hold; None when there is none.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool, tried: &[usize]) -> Option<usize> {
        let ok = |i: usize| eligible(i) && !tried.contains(&i);
        let n = self.endpoints.len();
        match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
            }
            Strategy::Random => {
                let candidates: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
                (!candidates.is_empty())
                    .then(|| candidates[rand::rng().random_range(0..candidates.len())])
            }
            Strategy::LeastConnections => {
                // Ties go round in turn, so equal instances share the load
                // instead of the first taking it all.
                // One snapshot of the counts: they move under our feet.
                let loads: Vec<(usize, u32)> = (0..n)
                    .filter(|&i| ok(i))
                    .map(|i| (i, self.endpoints[i].in_flight()))
                    .collect();
                let least = loads.iter().map(|&(_, l)| l).min()?;
                let tied: Vec<usize> = loads
                    .into_iter()
                    .filter(|&(_, l)| l == least)
                    .map(|(i, _)| i)
                    .collect();
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                Some(tied[turn % tied.len()])
            }
            Strategy::Weighted => {
                let mut current = self.current.lock();
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in (0..n).filter(|&i| ok(i)) {
                    let w = self.endpoints[i].weight as i64;
                    current[i] += w;
                    total += w;
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                if let Some(b) = best {
                    current[b] -= total;
                }
                best
            }
            Strategy::P2c => {
                let candidates: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let mut rng = rand::rng();
                        let a = rng.random_range(0..len);
                        let mut b = rng.random_range(0..len - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (candidates[a], candidates[b]);
                        let now = now_us();
                        Some(if self.load(a, now) <= self.load(b, now) {
                            a
                        } else {
                            b
                        })
                    }
                }
            }
        }
    }

    /// P2C's cost of sending one more request to `i`.
    fn load(&self, i: usize, now_us: u64) -> f64 {
        let e = &self.endpoints[i];
        (e.in_flight() as f64 + 1.0) * e.decayed_latency_us(now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(strategy: Strategy, weights: &[u32]) -> Balancer {
        Balancer::new(
            strategy,
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| Arc::new(Endpoint::new(format!("10.0.0.{i}:80"), *w)))
                .collect(),
        )
    }

    fn counts(b: &Balancer, picks: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut c = vec![0; b.endpoints().len()];
        for _ in 0..picks {
            c[b.pick(&eligible, &[]).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_even_within_one() {
        let b = balancer(Strategy::RoundRobin, &[1, 1, 1]);
        let c = counts(&b, 3001, |_| true);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn weighted_follows_the_weights_smoothly() {
        let b = balancer(Strategy::Weighted, &[5, 1, 1]);
        // nginx's example: a, a, b, a, c, a, a in every seven.
        let first: Vec<usize> = (0..7).map(|_| b.pick(|_| true, &[]).unwrap()).collect();
        assert_eq!(first, [0, 0, 1, 0, 2, 0, 0]);
        let b = balancer(Strategy::Weighted, &[3, 2, 1]);
        let c = counts(&b, 6000, |_| true);
        assert_eq!(c, [3000, 2000, 1000]);
    }

    #[test]
    fn random_spreads_within_a_few_percent() {
        let b = balancer(Strategy::Random, &[1, 1, 1, 1]);
        let c = counts(&b, 20_000, |_| true);
        for n in c {
            assert!((4_500..=5_500).contains(&n), "{n}");
        }
    }

    #[test]
    fn least_connections_avoids_busy_instances() {
        let b = balancer(Strategy::LeastConnections, &[1, 1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| b.endpoints()[0].start()).collect();
        let _one = b.endpoints()[1].start();
        for _ in 0..10 {
            assert_eq!(b.pick(|_| true, &[]), Some(2));
        }
        drop(_one);
        let c = counts(&b, 100, |_| true);
        assert_eq!(c[0], 0, "{c:?}");
        assert!(c[1] >= 40 && c[2] >= 40, "idle instances share: {c:?}");
    }

    #[test]
    fn p2c_prefers_the_less_loaded_and_faster() {
        let b = balancer(Strategy::P2c, &[1, 1]);
        for _ in 0..20 {
            b.endpoints()[0].record_latency(Duration::from_millis(50));
            b.endpoints()[1].record_latency(Duration::from_millis(1));
        }
        let c = counts(&b, 100, |_| true);
        assert_eq!(c, [0, 100]);
        let b = balancer(Strategy::P2c, &[1, 1, 1, 1]);
        let c = counts(&b, 20_000, |_| true);
        for n in c {
            assert!((4_000..=6_000).contains(&n), "equal instances share: {n}");
        }
    }

    #[test]
    fn every_strategy_skips_ineligible_and_tried_instances() {
        for s in [
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::LeastConnections,
            Strategy::Weighted,
            Strategy::P2c,
        ] {
            let b = balancer(s, &[1, 2, 3]);
            for _ in 0..50 {
                let i = b.pick(|i| i != 1, &[2]).unwrap();
                assert_eq!(i, 0, "{s:?}");
            }
            assert_eq!(b.pick(|i| i == 1, &[1]), None, "{s:?}");
        }
    }

    #[test]
    fn an_old_latency_average_fades() {
        let e = Endpoint::new("a:1", 1);
        e.record_latency(Duration::from_millis(50));
        let t = now_us();
        let fresh = e.decayed_latency_us(t);
        let later = e.decayed_latency_us(t + LATENCY_DECAY.as_micros() as u64 * 3);
        assert!(later < fresh / 10.0, "{fresh} -> {later}");
    }

    #[test]
    fn latency_average_moves_toward_samples() {
        let e = Endpoint::new("a:1", 1);
        for _ in 0..30 {
            e.record_latency(Duration::from_millis(10));
        }
        let avg = e.latency_ewma().as_micros();
        assert!((9_900..=10_000).contains(&avg), "{avg}");
    }
}
