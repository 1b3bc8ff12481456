//! Things kept per worker thread: a filter's warm instances, an upstream
//! instance's idle connections. Each worker takes from and gives back to
//! its own shard, so what it uses stays on its core and workers do not
//! wait on each other; threads that are not workers (setup threads, the
//! control runtime) share one more shard.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct PerWorker<T> {
    shards: Box<[Mutex<Vec<T>>]>,
    len: AtomicUsize,
}

std::thread_local! {
    static WORKER_INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the worker thread this runs on, if it runs on one: what
/// keeps per-worker state (warm filter instances, idle upstream
/// connections) on its core.
pub fn worker_index() -> Option<usize> {
    WORKER_INDEX.with(|w| w.get())
}

/// Makes this thread worker `i`: called once by each worker thread as it
/// starts, and by tests of per-worker state.
pub fn set_worker_index(i: usize) {
    WORKER_INDEX.with(|w| w.set(Some(i)));
}

impl<T> Default for PerWorker<T> {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        PerWorker {
            shards: (0..=workers).map(|_| Mutex::new(Vec::new())).collect(),
            len: AtomicUsize::new(0),
        }
    }
}

impl<T> PerWorker<T> {
    /// This thread's shard: its worker's (workers beyond the shards share
    /// them), or the last for any other thread.
    fn home(&self) -> usize {
        let workers = self.shards.len() - 1;
        worker_index().map_or(workers, |i| i % workers)
    }

    /// The most recently given back item of this thread's shard, or when
    /// that is empty, of another's.
    pub fn pop(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let home = self.home();
        let n = self.shards.len();
        (0..n).find_map(|k| self.pop_from((home + k) % n))
    }

    /// The most recently given back item of this thread's shard only.
    pub fn pop_home(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        self.pop_from(self.home())
    }

    fn pop_from(&self, shard: usize) -> Option<T> {
        let t = self.shards[shard].lock().pop()?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        Some(t)
    }

    pub fn push(&self, t: T) {
        self.len.fetch_add(1, Ordering::AcqRel);
        self.shards[self.home()].lock().push(t);
    }

    /// Keeps `t` unless `max` are kept already (over all shards); says
    /// whether it did. One that is not kept is dropped.
    pub fn push_within(&self, t: T, max: usize) -> bool {
        let kept = self
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if kept {
            self.shards[self.home()].lock().push(t);
        }
        kept
    }

    /// Drops, from every shard, the items `keep` says no to.
    pub fn retain(&self, mut keep: impl FnMut(&T) -> bool) {
        for shard in &self.shards {
            let mut items = shard.lock();
            let before = items.len();
            items.retain(&mut keep);
            self.len.fetch_sub(before - items.len(), Ordering::AcqRel);
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_last_in_first_out_and_the_cap_holds_over_shards() {
        let p = PerWorker::default();
        assert!(p.push_within(1, 2));
        assert!(p.push_within(2, 2));
        assert!(!p.push_within(3, 2));
        assert_eq!(p.len(), 2);
        assert_eq!(p.pop_home(), Some(2));
        p.retain(|&x| x != 1);
        assert!(p.is_empty());
        assert_eq!(p.pop(), None);
    }

    #[test]
    fn a_worker_with_an_empty_shard_takes_from_another_only_when_asked() {
        let p = std::sync::Arc::new(PerWorker::default());
        p.push(7);
        let q = p.clone();
        std::thread::spawn(move || {
            set_worker_index(0);
            assert_eq!(q.pop_home(), None);
            assert_eq!(q.pop(), Some(7));
        })
        .join()
        .unwrap();
    }
}
