//! Tunnels for upgraded connections (WebSockets and other `Upgrade`s):
//! once the upstream has answered `101 Switching Protocols` and the client
//! has been told so, bytes are copied both ways until either side closes,
//! no byte moves for the idle timeout, or the tunnel reaches its maximum
//! lifetime. Each tunnel is counted open while it lives, and when it ends
//! by why and by the bytes it carried each way; one cut by the end of a
//! graceful shutdown's grace (its worker stopping) is counted as
//! `shutdown`.

use crate::telemetry::{Metrics, TunnelOpen};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How long a tunnel may stay quiet, and live at all.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub idle: Duration,
    pub lifetime: Duration,
}

/// A tunnel's counts, written to the metrics when it ends however it ends.
struct Counted {
    metrics: Arc<Metrics>,
    route: opentelemetry::Value,
    to_upstream: u64,
    to_client: u64,
    /// Why it ended; None while it runs, so a tunnel dropped mid-copy (its
    /// worker stopped at the end of the grace period) counts as `shutdown`.
    ended: Option<&'static str>,
    _open: TunnelOpen,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.tunnel_closed(
            &self.route,
            self.ended.unwrap_or("shutdown"),
            self.to_upstream,
            self.to_client,
        );
    }
}

/// Copies between the client's and the upstream's upgraded connections
/// once both are ready. `hold` is kept until the tunnel ends (it keeps
/// the client connection counted).
pub async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    limits: Limits,
    metrics: Arc<Metrics>,
    route: opentelemetry::Value,
    protocol: String,
    hold: Option<Arc<dyn Any + Send + Sync>>,
) {
    let _hold = hold;
    let open = metrics.tunnel_opened(&route, &protocol);
    let mut counted = Counted {
        metrics,
        route,
        to_upstream: 0,
        to_client: 0,
        ended: None,
        _open: open,
    };
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        _ => {
            counted.ended = Some("error");
            return;
        }
    };
    let ended = pump(
        &mut TokioIo::new(client),
        &mut TokioIo::new(upstream),
        limits,
        &mut counted,
    )
    .await;
    counted.ended = Some(ended);
}

/// Copies until both sides have closed (`closed`), a read or write fails
/// (`error`), nothing moves for `limits.idle` (`idle`) or the tunnel is
/// `limits.lifetime` old (`lifetime`). A side that closes its half is
/// passed on as a write shutdown, and the other direction goes on.
async fn pump<C, U>(
    client: &mut C,
    upstream: &mut U,
    limits: Limits,
    counted: &mut Counted,
) -> &'static str
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    const BUF: usize = 16 * 1024;
    let mut from_client = vec![0u8; BUF];
    let mut from_upstream = vec![0u8; BUF];
    let ends = Instant::now() + limits.lifetime;
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        tokio::select! {
            read = client.read(&mut from_client), if client_open => match read {
                Ok(0) => {
                    client_open = false;
                    let _ = upstream.shutdown().await;
                }
                Ok(n) => {
                    if upstream.write_all(&from_client[..n]).await.is_err() {
                        return "error";
                    }
                    counted.to_upstream += n as u64;
                }
                Err(_) => return "error",
            },
            read = upstream.read(&mut from_upstream), if upstream_open => match read {
                Ok(0) => {
                    upstream_open = false;
                    let _ = client.shutdown().await;
                }
                Ok(n) => {
                    if client.write_all(&from_upstream[..n]).await.is_err() {
                        return "error";
                    }
                    counted.to_client += n as u64;
                }
                Err(_) => return "error",
            },
            _ = tokio::time::sleep(limits.idle) => return "idle",
            _ = tokio::time::sleep_until(ends) => return "lifetime",
        }
    }
    "closed"
}
