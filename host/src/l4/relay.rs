//! Copying a proxied connection's bytes both ways. Each direction runs on
//! its own, so a slow reader on one side never holds the other back; a
//! side that closes its half is passed on as a write shutdown and the
//! other direction goes on (half-close); a failed read or write ends both.
//! A buffer is taken only when its side first has bytes to read, and grows
//! while reads fill it, so an idle connection holds none and a bulk one
//! moves 64 KiB per system call.

use crate::telemetry::tcp::End;
use opentelemetry::metrics::BoundCounter;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

const FIRST_BUFFER: usize = 16 * 1024;
const LARGEST_BUFFER: usize = 64 * 1024;

/// What one direction moved.
pub struct Direction {
    pub counter: BoundCounter<u64>,
    pub bytes: AtomicU64,
}

impl Direction {
    pub fn new(counter: BoundCounter<u64>) -> Direction {
        Direction {
            counter,
            bytes: AtomicU64::new(0),
        }
    }

    pub fn moved(&self, n: usize) {
        self.counter.add(n as u64);
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Copies until both sides have closed their halves (`Closed`), a read or
/// write fails (`Error`), nothing moves for `idle` (`Idle`), or `cut`
/// resolves (`Shutdown`).
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    inbound: &Direction,
    outbound: &Direction,
    idle: Duration,
    cut: impl std::future::Future<Output = ()>,
) -> End {
    let last_moved = AtomicU64::new(crate::clock::monotonic_ns());
    // Directions that read the end of their stream.
    let ended = AtomicU8::new(0);
    let both = async {
        tokio::try_join!(
            one_way(client, upstream, inbound, &last_moved, &ended),
            one_way(upstream, client, outbound, &last_moved, &ended),
        )
    };
    tokio::select! {
        done = both => match done {
            Ok(_) => End::Closed,
            Err(_) => End::Error,
        },
        _ = quiet_for(&last_moved, idle) => End::Idle,
        _ = cut => End::Shutdown,
    }
}

/// Resolves once `last_moved` is `idle` in the past. One timer per idle
/// period rather than one per read: it sleeps until the earliest moment
/// the connection could be idle and looks again.
async fn quiet_for(last_moved: &AtomicU64, idle: Duration) {
    let idle_ns = idle.as_nanos().min(u64::MAX as u128) as u64;
    loop {
        let now = crate::clock::monotonic_ns();
        let quiet = now.saturating_sub(last_moved.load(Ordering::Relaxed));
        if quiet >= idle_ns {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(idle_ns - quiet)).await;
    }
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    direction: &Direction,
    last_moved: &AtomicU64,
    ended: &AtomicU8,
) -> std::io::Result<()> {
    // Filled through its spare capacity, so it is never zeroed.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.capacity() == 0 {
            buf.reserve_exact(FIRST_BUFFER);
        }
        let n = match from.try_read_buf(&mut buf) {
            Ok(0) => {
                // The other side reads the end of the stream; its own half
                // stays open for the other direction. When that direction
                // has ended already, both sockets are closed next anyway.
                if ended.fetch_add(1, Ordering::AcqRel) == 0 {
                    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
                }
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        write_all(to, &buf).await?;
        direction.moved(n);
        last_moved.store(crate::clock::monotonic_ns(), Ordering::Relaxed);
        let full = buf.len() == buf.capacity();
        buf.clear();
        if full && buf.capacity() < LARGEST_BUFFER {
            buf.reserve_exact(buf.capacity() * 2);
        }
    }
}

/// Writes all of `bytes`, waiting whenever the socket's buffer is full.
pub async fn write_all(to: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
