//! The listening sockets of TCP routes, kept across reloads: the new ones
//! are bound before a configuration is applied (a port that cannot be
//! bound refuses the reload), the ones no longer listed are closed while
//! their open connections finish on their own, and a shutdown waits for
//! open connections up to the grace period. What a connection does is
//! `l4`'s.

use crate::l4::Routes;
use crate::serving::Shared;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// The listening sockets of TCP routes, and the connections they accepted.
pub struct Server {
    shared: Arc<Shared>,
    accepting: Mutex<HashMap<SocketAddr, tokio::task::AbortHandle>>,
    /// Sockets handed over at start (`LISTEN_FDNAMES` `tcp`), by address,
    /// until a route listens there.
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    open: Arc<OpenConnections>,
    /// Turns true when the grace period of a shutdown is over: connections
    /// still open then are closed.
    cut: watch::Sender<bool>,
}

/// Connections being served (from accept to close), for the shutdown to
/// wait on.
#[derive(Default)]
struct OpenConnections {
    count: AtomicUsize,
    all_closed: Notify,
}

struct Serving(Arc<OpenConnections>);

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// Sockets bound for a configuration not applied yet (and whether each
/// was handed over at start).
pub struct Bound(Vec<(SocketAddr, TcpListener, bool)>);

impl Server {
    pub fn new(
        shared: Arc<Shared>,
        inherited: Vec<std::net::TcpListener>,
    ) -> anyhow::Result<Arc<Server>> {
        let inherited = inherited
            .into_iter()
            .map(|l| Ok((l.local_addr()?, l)))
            .collect::<std::io::Result<_>>()?;
        Ok(Arc::new(Server {
            shared,
            accepting: Mutex::new(HashMap::new()),
            inherited: Mutex::new(inherited),
            open: Arc::default(),
            cut: watch::channel(false).0,
        }))
    }

    /// Binds the listeners `routes` names that are not open yet. An
    /// address that cannot be bound refuses the configuration.
    pub fn bind_new(&self, routes: &Routes) -> Result<Bound, String> {
        let open: Vec<SocketAddr> = self.accepting.lock().keys().copied().collect();
        let mut bound = Vec::new();
        for addr in routes.addresses().filter(|a| !open.contains(a)) {
            let handed_over = self.inherited.lock().remove(addr);
            let inherited = handed_over.is_some();
            let listener = match handed_over {
                Some(l) => crate::listeners::adopt(l),
                None => crate::listeners::bind(*addr),
            }
            // Each accepted connection inherits it.
            .and_then(|l| crate::listeners::no_delay(&l).map(|()| l));
            match listener {
                Ok(l) => bound.push((*addr, l, inherited)),
                Err(e) => {
                    // Sockets handed over go back for a later attempt.
                    self.give_back(bound);
                    return Err(format!("cannot listen on {addr} for a tcp_route: {e}"));
                }
            }
        }
        Ok(Bound(bound))
    }

    /// Keeps the sockets of a configuration that was not applied, for the
    /// next: a fresh one is closed, one handed over at start is kept.
    fn give_back(&self, bound: Vec<(SocketAddr, TcpListener, bool)>) {
        for (addr, listener, inherited) in bound {
            if inherited && let Ok(l) = listener.into_std() {
                self.inherited.lock().insert(addr, l);
            }
        }
    }

    /// Starts accepting on `bound` and closes the listeners `routes` no
    /// longer names, once `routes` is the current configuration's.
    pub fn apply(self: &Arc<Self>, bound: Bound, routes: &Routes) {
        let mut accepting = self.accepting.lock();
        accepting.retain(|addr, task| {
            let kept = routes.listener(addr).is_some();
            if !kept {
                task.abort();
                tracing::info!("tcp listener {addr} closed: no tcp_route uses it now");
            }
            kept
        });
        for (addr, listener, _) in bound.0 {
            tracing::info!("tcp routes listening on {addr}");
            let task = tokio::spawn(self.clone().accept(addr, listener));
            accepting.insert(addr, task.abort_handle());
        }
    }

    /// Stops accepting, waits up to `grace` for open connections to end,
    /// then closes the rest.
    pub async fn shutdown(&self, grace: Duration) {
        for (_, task) in self.accepting.lock().drain() {
            task.abort();
        }
        let open = self.open.count.load(Ordering::Acquire);
        if open == 0 {
            return;
        }
        tracing::info!("tcp routes: waiting up to {grace:?} for {open} open connection(s)");
        let all_closed = async {
            loop {
                let notified = self.open.all_closed.notified();
                if self.open.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            tracing::warn!("tcp routes: grace period over; closing the connections still open");
            let _ = self.cut.send(true);
            // Long enough for each to log and count its end.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while self.open.count.load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }
    }

    async fn accept(self: Arc<Self>, addr: SocketAddr, listener: TcpListener) {
        loop {
            let (stream, peer) = crate::listeners::accept(&listener).await;
            let Some(routes) = self.shared.current().tcp.listener(&addr).cloned() else {
                // Removed by a reload that has not closed this socket yet.
                continue;
            };
            self.open.count.fetch_add(1, Ordering::AcqRel);
            let serving = Serving(self.open.clone());
            let metrics = self.shared.metrics.clone();
            let mut cut = self.cut.subscribe();
            tokio::spawn(async move {
                let _serving = serving;
                let cut = async move {
                    let _ = cut.wait_for(|c| *c).await;
                };
                crate::l4::connection(stream, peer, addr, routes, &metrics, cut).await;
            });
        }
    }
}
