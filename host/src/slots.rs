//! Connections open at once, in all and per client address, held to the
//! limits a listener or a TCP route sets: the proxy's, the redirect
//! listener's and each TCP route's connections count the same way.

use crate::telemetry::ConnectionRefusal;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::Notify;

/// Open connections, in all and per client address.
#[derive(Default)]
pub struct Slots {
    counts: Mutex<SlotCounts>,
    /// Woken when the last connection closes.
    all_released: Notify,
}

#[derive(Default)]
struct SlotCounts {
    open: usize,
    /// Kept even where no per-client limit is set, so a limit a reload
    /// adds knows the connections already open.
    per_client: HashMap<IpAddr, usize>,
}

impl Slots {
    /// A slot for a connection from `client`, or why there is none.
    pub fn take(
        self: &Arc<Self>,
        client: IpAddr,
        max: usize,
        max_per_client: Option<usize>,
    ) -> Result<Slot, ConnectionRefusal> {
        let mut counts = self.counts.lock();
        if counts.open >= max {
            return Err(ConnectionRefusal::TooManyConnections);
        }
        let from_client = counts.per_client.get(&client).copied().unwrap_or(0);
        if max_per_client.is_some_and(|most| from_client >= most) {
            return Err(ConnectionRefusal::TooManyClientConnections);
        }
        counts.open += 1;
        *counts.per_client.entry(client).or_default() += 1;
        Ok(Slot {
            slots: self.clone(),
            client,
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.counts.lock().open
    }

    /// Returns once no slot is held.
    pub async fn all_released(&self) {
        loop {
            // Made before the count is read: `notify_waiters` wakes it even
            // if the last slot goes in between.
            let released = self.all_released.notified();
            if self.counts.lock().open == 0 {
                return;
            }
            released.await;
        }
    }
}

/// A connection's place in the limits, given back when it drops.
pub struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock();
        counts.open -= 1;
        if let Some(n) = counts.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&self.client);
            }
        }
        let none_left = counts.open == 0;
        drop(counts);
        if none_left {
            self.slots.all_released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_refuse_over_either_limit_and_come_back_on_drop() {
        let slots = Arc::new(Slots::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.take(a, 3, Some(2)).unwrap();
        let _second = slots.take(a, 3, Some(2)).unwrap();
        assert_eq!(
            slots.take(a, 3, Some(2)).err(),
            Some(ConnectionRefusal::TooManyClientConnections)
        );
        let _third = slots.take(b, 3, Some(2)).unwrap();
        assert_eq!(
            slots.take(b, 3, Some(2)).err(),
            Some(ConnectionRefusal::TooManyConnections)
        );
        drop(first);
        assert!(slots.take(a, 3, Some(2)).is_ok());
        assert!(slots.take(b, 3, None).is_ok());
    }
}
