//! Verified tokens, remembered per instance so a client that sends the same
//! token again skips the signature check. Keyed by the token's SHA-256, so
//! the cache holds no credential an attacker could read out of a memory dump.

use std::collections::HashMap;

pub type Digest = [u8; 32];

/// A map bounded to `cap` entries that evicts the least recently used one.
///
/// Eviction scans the whole map, which is O(n); it only happens on an insert,
/// and an insert only follows a full signature verification that costs far
/// more than scanning a thousand entries. Lookups, the common path, are O(1).
pub struct Lru<V> {
    cap: usize,
    clock: u64,
    map: HashMap<Digest, (u64, V)>,
}

impl<V> Lru<V> {
    pub fn new(cap: usize) -> Lru<V> {
        Lru {
            cap,
            clock: 0,
            map: HashMap::new(),
        }
    }

    pub fn get(&mut self, key: &Digest) -> Option<&V> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(key).map(|(used, v)| {
            *used = clock;
            &*v
        })
    }

    pub fn insert(&mut self, key: Digest, value: V) {
        if self.cap == 0 {
            return;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.clock += 1;
        self.map.insert(key, (self.clock, value));
    }

    pub fn remove(&mut self, key: &Digest) {
        self.map.remove(key);
    }
}
