//! The admin page's live traffic: per route, one point a second (request
//! rate, p50 and p99 latency, error rate) over the last few minutes, kept in
//! a ring in the process so the page needs no Prometheus.
//!
//! Nothing is recorded on the request path for it: a sampler reads each
//! route's cumulative duration histogram and 5xx count once a second and
//! keeps the differences.

use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Points kept per route: five minutes at one a second.
pub const POINTS: usize = 300;

/// A route's totals since its instruments were made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// Answered requests.
    pub count: u64,
    /// Of those, answered with a 5xx.
    pub errors: u64,
    /// Cumulative counts at each finite upper bound (seconds), ascending.
    pub buckets: Vec<(f64, u64)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub at: Instant,
    pub rate: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub error_rate: Option<f64>,
}

struct Ring {
    last: Totals,
    last_at: Instant,
    points: VecDeque<Point>,
}

#[derive(Default)]
pub struct Live {
    routes: parking_lot::Mutex<HashMap<Arc<str>, Ring>>,
}

/// `later - earlier`, or `later` itself when the counters started again
/// (the route's instruments were made anew by a reload).
fn since(later: &Totals, earlier: &Totals) -> Totals {
    let restarted = later.count < earlier.count
        || later.errors < earlier.errors
        || later.buckets.len() != earlier.buckets.len();
    if restarted {
        return later.clone();
    }
    Totals {
        count: later.count - earlier.count,
        errors: later.errors - earlier.errors,
        buckets: later
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(&(bound, l), &(_, e))| (bound, l.saturating_sub(e)))
            .collect(),
    }
}

/// The `q` quantile of the requests a difference holds, interpolated
/// within its bucket as Prometheus's `histogram_quantile` does; past the
/// last finite bound it is that bound.
pub fn quantile(d: &Totals, q: f64) -> Option<f64> {
    if d.count == 0 {
        return None;
    }
    let rank = q * d.count as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in &d.buckets {
        if cumulative as f64 >= rank {
            let in_bucket = (cumulative - lower.1) as f64;
            let share = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share.clamp(0.0, 1.0));
        }
        lower = (bound, cumulative);
    }
    d.buckets.last().map(|&(bound, _)| bound)
}

impl Live {
    /// Takes one point per route from their totals now; routes no longer
    /// listed are forgotten. A route's first sample only sets its start.
    pub fn sample(&self, now: Instant, routes: impl IntoIterator<Item = (Arc<str>, Totals)>) {
        let mut rings = self.routes.lock();
        let mut seen = std::collections::HashSet::new();
        for (route, totals) in routes {
            seen.insert(route.clone());
            let Some(ring) = rings.get_mut(&route) else {
                rings.insert(
                    route,
                    Ring {
                        last: totals,
                        last_at: now,
                        points: VecDeque::with_capacity(POINTS),
                    },
                );
                continue;
            };
            let d = since(&totals, &ring.last);
            let secs = now
                .saturating_duration_since(ring.last_at)
                .max(Duration::from_millis(1))
                .as_secs_f64();
            if ring.points.len() == POINTS {
                ring.points.pop_front();
            }
            ring.points.push_back(Point {
                at: now,
                rate: d.count as f64 / secs,
                p50: quantile(&d, 0.5),
                p99: quantile(&d, 0.99),
                error_rate: (d.count > 0).then(|| d.errors as f64 / d.count as f64),
            });
            ring.last = totals;
            ring.last_at = now;
        }
        rings.retain(|route, _| seen.contains(route));
    }

    /// The points of every route, newest last, as the admin page reads
    /// them (`seconds_ago` from `now`; latencies in milliseconds).
    pub fn json(&self, now: Instant, interval: Duration) -> Value {
        let rings = self.routes.lock();
        let mut routes: Vec<(&Arc<str>, &Ring)> = rings.iter().collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        let ms = |s: Option<f64>| s.map(|s| s * 1000.0);
        json!({
            "interval_seconds": interval.as_secs_f64(),
            "routes": routes.iter().map(|(route, ring)| json!({
                "route": &***route,
                "points": ring.points.iter().map(|p| json!({
                    "seconds_ago": now.saturating_duration_since(p.at).as_secs_f64(),
                    "rate": p.rate,
                    "p50_ms": ms(p.p50),
                    "p99_ms": ms(p.p99),
                    "error_rate": p.error_rate,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(count: u64, errors: u64, buckets: &[(f64, u64)]) -> Totals {
        Totals {
            count,
            errors,
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_they_fall_in() {
        // 100 requests: 50 under 1 ms, 40 in (1, 5] ms, 10 in (5, 10] ms.
        let d = totals(100, 0, &[(0.001, 50), (0.005, 90), (0.010, 100)]);
        assert_eq!(quantile(&d, 0.5), Some(0.001));
        let p99 = quantile(&d, 0.99).unwrap();
        assert!((p99 - 0.0095).abs() < 1e-9, "{p99}");
        // Past the last finite bound: that bound.
        let slow = totals(10, 0, &[(0.001, 0), (0.010, 5)]);
        assert_eq!(quantile(&slow, 0.99), Some(0.010));
        assert_eq!(quantile(&totals(0, 0, &[(0.001, 0)]), 0.5), None);
    }

    #[test]
    fn points_are_rates_of_the_differences_and_survive_restarted_counters() {
        let live = Live::default();
        let t0 = Instant::now();
        let route: Arc<str> = "api".into();
        live.sample(t0, [(route.clone(), totals(1000, 0, &[(0.01, 1000)]))]);
        live.sample(
            t0 + Duration::from_secs(1),
            [(route.clone(), totals(1100, 10, &[(0.01, 1100)]))],
        );
        // A reload made the route's instruments anew: counting restarts.
        live.sample(
            t0 + Duration::from_secs(2),
            [(route.clone(), totals(40, 0, &[(0.01, 40)]))],
        );
        let rings = live.routes.lock();
        let points: Vec<&Point> = rings[&route].points.iter().collect();
        assert_eq!(points.len(), 2);
        assert!((points[0].rate - 100.0).abs() < 1e-9);
        assert_eq!(points[0].error_rate, Some(0.1));
        assert!((points[1].rate - 40.0).abs() < 1e-9);
        assert_eq!(points[1].error_rate, Some(0.0));
    }

    #[test]
    fn routes_gone_from_the_configuration_are_forgotten_and_the_ring_is_bounded() {
        let live = Live::default();
        let t0 = Instant::now();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for i in 0..(POINTS as u64 + 10) {
            let at = t0 + Duration::from_secs(i);
            live.sample(
                at,
                [
                    (a.clone(), totals(i, 0, &[])),
                    (b.clone(), totals(i, 0, &[])),
                ],
            );
        }
        live.sample(
            t0 + Duration::from_secs(1000),
            [(a.clone(), totals(0, 0, &[]))],
        );
        let rings = live.routes.lock();
        assert_eq!(rings.len(), 1);
        assert_eq!(rings[&a].points.len(), POINTS);
    }
}
