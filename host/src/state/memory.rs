//! The in-memory state backend: counters in shards, each behind its own
//! lock, so requests on different keys rarely wait for each other. Expired
//! counters are dropped lazily, a shard at a time, and the total is capped so
//! a flood of distinct keys (one per spoofed client, say) cannot exhaust
//! memory. Each counter is charged to the filter that made it, until it is
//! swept, so one filter's flood meets its own quota first.

use super::{Counter, CounterOp, ENTRY_COST, KvAnswer, KvOp, Owner, QuotaLimit, StateError, Usage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SHARDS: usize = 64;
/// A shard drops its expired counters at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Entry {
    value: i64,
    /// A key-value entry's value (counters have none).
    data: Option<bytes::Bytes>,
    expires: Instant,
    /// The usage this counter is charged to, and how much.
    owner: Arc<Usage>,
    cost: usize,
}

impl Entry {
    fn release(&self) {
        self.owner.entries.fetch_sub(1, Ordering::Relaxed);
        self.owner.bytes.fetch_sub(self.cost, Ordering::Relaxed);
    }
}

struct Shard {
    map: HashMap<Box<str>, Entry>,
    next_sweep: Instant,
}

pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    entries: AtomicUsize,
    max_entries: usize,
    /// When the store, full, last swept every shard (ms since `epoch`).
    last_full_sweep_ms: AtomicU64,
    epoch: Instant,
}

impl MemoryStore {
    pub fn new(max_entries: usize) -> MemoryStore {
        let now = Instant::now();
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        next_sweep: now + SWEEP_EVERY,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            entries: AtomicUsize::new(0),
            max_entries,
            last_full_sweep_ms: AtomicU64::new(0),
            epoch: now,
        }
    }

    /// Counters held right now, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, key: &str) -> usize {
        self.hasher.hash_one(key) as usize % SHARDS
    }

    /// Drops expired counters from one locked shard.
    fn sweep(&self, shard: &mut Shard, now: Instant) {
        let before = shard.map.len();
        shard.map.retain(|_, e| {
            let live = e.expires > now;
            if !live {
                e.release();
            }
            live
        });
        self.entries
            .fetch_sub(before - shard.map.len(), Ordering::Relaxed);
        shard.next_sweep = now + SWEEP_EVERY;
    }

    /// When the store (or a filter's quota: `quota_full`) is full, expired
    /// counters may sit in shards nobody touches; sweep them all, one lock
    /// at a time, at most every 100 ms.
    fn sweep_all_if_full_or(&self, quota_full: bool) {
        if !quota_full && self.entries.load(Ordering::Relaxed) < self.max_entries {
            return;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_full_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < 100
            || self
                .last_full_sweep_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for shard in &self.shards {
            self.sweep(&mut shard.lock(), Instant::now());
        }
    }

    pub fn add(&self, owner: &Owner, ops: &[CounterOp]) -> Result<Vec<Counter>, StateError> {
        let filter = &*owner.filter;
        let usage = &owner.usage;
        // Expired counters of a filter at its quota may still be charged to
        // it.
        self.sweep_all_if_full_or(
            usage.entries.load(Ordering::Relaxed) >= owner.quota.max_entries
                || usage.bytes.load(Ordering::Relaxed) >= owner.quota.max_bytes,
        );
        let keys: Vec<String> = ops
            .iter()
            .map(|op| format!("{filter}\u{0}{}", op.key))
            .collect();
        let shard_ids: Vec<usize> = keys.iter().map(|k| self.shard_of(k)).collect();
        // Several keys in one call are updated under all their shards' locks,
        // taken in index order so two calls never wait on each other in a
        // cycle: the call is atomic, as the Redis backend's script is.
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<_> = order.iter().map(|&i| (i, self.shards[i].lock())).collect();
        let now = Instant::now();
        for (_, shard) in &mut guards {
            if now >= shard.next_sweep {
                self.sweep(shard, now);
            }
        }
        // The call is atomic: a refusal for any counter changes none.
        let mut new_entries = 0usize;
        let mut new_bytes = 0usize;
        for (key, &sid) in keys
            .iter()
            .zip(&shard_ids)
            .zip(ops)
            .filter_map(|((k, s), op)| (op.delta != 0).then_some((k, s)))
        {
            let shard = &guards
                .iter()
                .find(|(i, _)| *i == sid)
                .expect("every shard of the call is locked")
                .1;
            if !shard.map.contains_key(key.as_str()) {
                new_entries += 1;
                new_bytes += key.len() + ENTRY_COST;
            }
        }
        if new_entries > 0 {
            within_quota(owner, new_entries, new_bytes, "counters")?;
            if self.entries.load(Ordering::Relaxed) + new_entries > self.max_entries {
                return Err(StateError::Invalid(format!(
                    "the memory state holds its maximum of {} counters; raise [state] max_entries or shorten windows",
                    self.max_entries
                )));
            }
        }
        let mut out = Vec::with_capacity(ops.len());
        for ((op, key), sid) in ops.iter().zip(keys).zip(shard_ids) {
            let shard = &mut guards
                .iter_mut()
                .find(|(i, _)| *i == sid)
                .expect("every shard of the call is locked")
                .1;
            let live = shard.map.get(key.as_str()).is_some_and(|e| e.expires > now);
            if op.delta == 0 && !live {
                // A read of a missing counter creates nothing, so reading
                // (a sliding window's previous counter) cannot fill the store.
                out.push(Counter {
                    value: 0,
                    ttl_ms: 0,
                });
                continue;
            }
            let entry = match shard.map.get_mut(key.as_str()) {
                Some(e) if e.expires > now => e,
                Some(e) => {
                    // Expired but not yet swept: it starts a new window,
                    // still charged to its filter.
                    e.value = 0;
                    e.expires = now + op.window;
                    e
                }
                None => {
                    self.entries.fetch_add(1, Ordering::Relaxed);
                    let cost = key.len() + ENTRY_COST;
                    usage.entries.fetch_add(1, Ordering::Relaxed);
                    usage.bytes.fetch_add(cost, Ordering::Relaxed);
                    shard.map.entry(key.into_boxed_str()).or_insert(Entry {
                        value: 0,
                        data: None,
                        expires: now + op.window,
                        owner: usage.clone(),
                        cost,
                    })
                }
            };
            entry.value = entry.value.saturating_add(op.delta);
            out.push(Counter {
                value: entry.value,
                ttl_ms: entry.expires.saturating_duration_since(now).as_millis() as u64,
            });
        }
        Ok(out)
    }
}

/// Refuses what would take `owner` past its quota: `new_entries` more
/// entries (`what` names them) of `new_bytes` more bytes.
fn within_quota(
    owner: &Owner,
    new_entries: usize,
    new_bytes: usize,
    what: &str,
) -> Result<(), StateError> {
    let (filter, usage) = (&*owner.filter, &owner.usage);
    let held = usage.entries.load(Ordering::Relaxed);
    if held + new_entries > owner.quota.max_entries {
        return Err(StateError::Quota(
            QuotaLimit::Entries,
            format!(
                "filter `{filter}` holds {held} {what}; its quota is {} (state_max_entries)",
                owner.quota.max_entries
            ),
        ));
    }
    let bytes = usage.bytes.load(Ordering::Relaxed);
    if bytes + new_bytes > owner.quota.max_bytes {
        return Err(StateError::Quota(
            QuotaLimit::Bytes,
            format!(
                "filter `{filter}` holds {bytes} bytes of {what}; its quota is {} (state_max_bytes)",
                owner.quota.max_bytes
            ),
        ));
    }
    Ok(())
}

impl MemoryStore {
    /// One key-value call. Values live in the same shards as counters,
    /// under keys of their own (a counter's and a value's key never meet),
    /// and are charged to the filter's quota with their bytes.
    pub fn kv(&self, owner: &Owner, key: &str, op: &KvOp) -> Result<KvAnswer, StateError> {
        let filter = &*owner.filter;
        let usage = &owner.usage;
        self.sweep_all_if_full_or(
            usage.entries.load(Ordering::Relaxed) >= owner.quota.max_entries
                || usage.bytes.load(Ordering::Relaxed) >= owner.quota.max_bytes,
        );
        let full_key = format!("{filter}\u{1}{key}");
        let mut shard = self.shards[self.shard_of(&full_key)].lock();
        let now = Instant::now();
        if now >= shard.next_sweep {
            self.sweep(&mut shard, now);
        }
        let current = shard
            .map
            .get(full_key.as_str())
            .filter(|e| e.expires > now)
            .and_then(|e| e.data.clone());
        let (value, ttl) = match op {
            KvOp::Get => return Ok(KvAnswer::Value(current)),
            KvOp::Delete => {
                let removed = match shard.map.remove(full_key.as_str()) {
                    Some(e) => {
                        e.release();
                        self.entries.fetch_sub(1, Ordering::Relaxed);
                        e.expires > now
                    }
                    None => false,
                };
                return Ok(KvAnswer::Done(removed));
            }
            KvOp::Set { value, ttl } => (value, *ttl),
            KvOp::CompareAndSet {
                expected,
                value,
                ttl,
            } => {
                if current.as_ref() != expected.as_ref() {
                    return Ok(KvAnswer::Done(false));
                }
                (value, *ttl)
            }
        };
        let cost = full_key.len() + value.len() + ENTRY_COST;
        let old_cost = shard.map.get(full_key.as_str()).map(|e| e.cost);
        let (new_entries, new_bytes) = match old_cost {
            Some(old) => (0, cost.saturating_sub(old)),
            None => (1, cost),
        };
        within_quota(owner, new_entries, new_bytes, "entries")?;
        if new_entries > 0 && self.entries.load(Ordering::Relaxed) >= self.max_entries {
            return Err(StateError::Invalid(format!(
                "the memory state holds its maximum of {} entries; raise [state] max_entries or shorten lifetimes",
                self.max_entries
            )));
        }
        if let Some(old) = shard.map.remove(full_key.as_str()) {
            old.release();
        } else {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
        usage.entries.fetch_add(1, Ordering::Relaxed);
        usage.bytes.fetch_add(cost, Ordering::Relaxed);
        shard.map.insert(
            full_key.into_boxed_str(),
            Entry {
                value: 0,
                data: Some(value.clone()),
                expires: now + ttl,
                owner: usage.clone(),
                cost,
            },
        );
        Ok(KvAnswer::Done(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, delta: i64, ms: u64) -> CounterOp {
        CounterOp::new(key, delta, ms)
    }

    fn owner_with(name: &str, max_entries: usize, max_bytes: usize) -> Owner {
        Owner {
            filter: name.into(),
            quota: super::super::Quota {
                max_entries,
                max_bytes,
                max_window: Duration::from_secs(3600),
            },
            usage: Arc::default(),
        }
    }

    fn owner(name: &str) -> Owner {
        owner_with(name, 1000, 1 << 20)
    }

    #[test]
    fn counts_within_a_window_and_restarts_after_it() {
        let m = MemoryStore::new(100);
        let f = owner("f");
        for n in 1..=3 {
            let c = m.add(&f, &[op("k", 1, 50)]).unwrap()[0];
            assert_eq!(c.value, n);
            assert!(c.ttl_ms <= 50);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(m.add(&f, &[op("k", 1, 50)]).unwrap()[0].value, 1);
    }

    #[test]
    fn later_adds_do_not_move_the_expiry() {
        let m = MemoryStore::new(100);
        let f = owner("f");
        m.add(&f, &[op("k", 1, 80)]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        let c = m.add(&f, &[op("k", 1, 80)]).unwrap()[0];
        assert_eq!(c.value, 2);
        assert!(c.ttl_ms <= 41, "ttl {} should have shrunk", c.ttl_ms);
    }

    #[test]
    fn filters_do_not_share_keys_and_many_ops_answer_in_order() {
        let m = MemoryStore::new(100);
        let (a, b) = (owner("a"), owner("b"));
        m.add(&a, &[op("k", 5, 1000)]).unwrap();
        let out = m
            .add(&b, &[op("k", 1, 1000), op("j", 0, 1000), op("k", 2, 1000)])
            .unwrap();
        let values: Vec<i64> = out.iter().map(|c| c.value).collect();
        assert_eq!(values, [1, 0, 3]);
    }

    #[test]
    fn reading_a_missing_counter_creates_nothing() {
        let m = MemoryStore::new(100);
        let f = owner("f");
        let c = m.add(&f, &[op("k", 0, 1000)]).unwrap()[0];
        assert_eq!((c.value, c.ttl_ms), (0, 0));
        assert!(m.is_empty());
        m.add(&f, &[op("k", 2, 1000)]).unwrap();
        assert_eq!(m.add(&f, &[op("k", 0, 1000)]).unwrap()[0].value, 2);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_full_store_refuses_new_keys_until_old_ones_expire() {
        let m = MemoryStore::new(2);
        let f = owner("f");
        m.add(&f, &[op("a", 1, 30)]).unwrap();
        m.add(&f, &[op("b", 1, 30)]).unwrap();
        assert!(matches!(
            m.add(&f, &[op("c", 1, 30)]),
            Err(StateError::Invalid(_))
        ));
        // Existing keys still count while the store is full.
        assert_eq!(m.add(&f, &[op("a", 1, 30)]).unwrap()[0].value, 2);
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(m.add(&f, &[op("c", 1, 30)]).unwrap()[0].value, 1);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_filter_over_its_quota_is_refused_alone_and_freed_as_its_counters_expire() {
        let m = MemoryStore::new(1000);
        let bomb = owner_with("bomb", 5, 1 << 20);
        let calm = owner("calm");
        for i in 0..5 {
            m.add(&bomb, &[op(&format!("k{i}"), 1, 40)]).unwrap();
        }
        assert!(matches!(
            m.add(&bomb, &[op("k5", 1, 40)]),
            Err(StateError::Quota(QuotaLimit::Entries, _))
        ));
        // Its existing counters still count; the calm filter is untouched.
        assert_eq!(m.add(&bomb, &[op("k0", 1, 40)]).unwrap()[0].value, 2);
        assert_eq!(m.add(&calm, &[op("k5", 1, 40)]).unwrap()[0].value, 1);
        // A call that would cross the quota changes nothing at all.
        let before = m.len();
        assert!(m.add(&bomb, &[op("k0", 1, 40), op("new", 1, 40)]).is_err());
        assert_eq!(m.len(), before);
        assert_eq!(m.add(&bomb, &[op("k0", 0, 40)]).unwrap()[0].value, 2);
        std::thread::sleep(Duration::from_millis(150));
        m.add(&bomb, &[op("k6", 1, 40)]).unwrap();
        assert_eq!(bomb.usage.entries.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn key_bytes_count_against_the_quota() {
        let m = MemoryStore::new(1000);
        let f = owner_with("f", 1000, 2 * (200 + ENTRY_COST + 2));
        let key = |c: char| c.to_string().repeat(200);
        m.add(&f, &[op(&key('a'), 1, 1000)]).unwrap();
        m.add(&f, &[op(&key('b'), 1, 1000)]).unwrap();
        assert!(matches!(
            m.add(&f, &[op(&key('c'), 1, 1000)]),
            Err(StateError::Quota(QuotaLimit::Bytes, _))
        ));
        assert!(m.add(&f, &[op("c", 1, 1000)]).is_err(), "full is full");
    }

    fn set(value: &str, ms: u64) -> KvOp {
        KvOp::Set {
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            ttl: Duration::from_millis(ms),
        }
    }

    fn cas(expected: Option<&str>, value: &str) -> KvOp {
        KvOp::CompareAndSet {
            expected: expected.map(|e| bytes::Bytes::copy_from_slice(e.as_bytes())),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            ttl: Duration::from_secs(60),
        }
    }

    fn value(v: &str) -> KvAnswer {
        KvAnswer::Value(Some(bytes::Bytes::copy_from_slice(v.as_bytes())))
    }

    #[test]
    fn values_are_set_read_replaced_and_deleted_per_filter() {
        let s = MemoryStore::new(100);
        let (a, b) = (owner("a"), owner("b"));
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), KvAnswer::Value(None));
        assert_eq!(
            s.kv(&a, "k", &set("one", 60_000)).unwrap(),
            KvAnswer::Done(true)
        );
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), value("one"));
        // Another filter's key of the same name is its own.
        assert_eq!(s.kv(&b, "k", &KvOp::Get).unwrap(), KvAnswer::Value(None));
        s.kv(&a, "k", &set("two", 60_000)).unwrap();
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), value("two"));
        assert_eq!(a.usage.entries.load(Ordering::Relaxed), 1);
        assert_eq!(s.kv(&a, "k", &KvOp::Delete).unwrap(), KvAnswer::Done(true));
        assert_eq!(s.kv(&a, "k", &KvOp::Delete).unwrap(), KvAnswer::Done(false));
        assert_eq!(a.usage.entries.load(Ordering::Relaxed), 0);
        assert_eq!(a.usage.bytes.load(Ordering::Relaxed), 0);
        // A counter of the same key is another entry.
        s.add(&a, &[op("k", 1, 60_000)]).unwrap();
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), KvAnswer::Value(None));
    }

    #[test]
    fn a_value_expires_with_its_lifetime() {
        let s = MemoryStore::new(100);
        let a = owner("a");
        s.kv(&a, "k", &set("v", 30)).unwrap();
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), value("v"));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), KvAnswer::Value(None));
        // An expired value does not match a compare-and-set expecting it.
        assert_eq!(
            s.kv(&a, "k", &cas(Some("v"), "w")).unwrap(),
            KvAnswer::Done(false)
        );
        assert_eq!(
            s.kv(&a, "k", &cas(None, "w")).unwrap(),
            KvAnswer::Done(true)
        );
    }

    #[test]
    fn compare_and_set_changes_only_what_it_expected() {
        let s = MemoryStore::new(100);
        let a = owner("a");
        assert_eq!(
            s.kv(&a, "k", &cas(None, "1")).unwrap(),
            KvAnswer::Done(true)
        );
        assert_eq!(
            s.kv(&a, "k", &cas(None, "2")).unwrap(),
            KvAnswer::Done(false)
        );
        assert_eq!(
            s.kv(&a, "k", &cas(Some("2"), "3")).unwrap(),
            KvAnswer::Done(false)
        );
        assert_eq!(
            s.kv(&a, "k", &cas(Some("1"), "3")).unwrap(),
            KvAnswer::Done(true)
        );
        assert_eq!(s.kv(&a, "k", &KvOp::Get).unwrap(), value("3"));
    }

    #[test]
    fn values_count_their_bytes_against_the_quota() {
        let s = MemoryStore::new(100);
        let a = owner_with("a", 100, 1000);
        let big = "x".repeat(900);
        s.kv(&a, "k", &set(&big, 60_000)).unwrap();
        let refused = s.kv(&a, "j", &set(&big, 60_000)).unwrap_err();
        assert!(
            matches!(refused, StateError::Quota(QuotaLimit::Bytes, _)),
            "{refused:?}"
        );
        // Replacing a value charges only the difference.
        s.kv(&a, "k", &set(&"y".repeat(850), 60_000)).unwrap();
    }
}
