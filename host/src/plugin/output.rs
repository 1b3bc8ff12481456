//! A filter's standard output and error. What a guest prints (a Rust
//! panic's message, a Python traceback, a JavaScript exception, a
//! `println!`) is kept while the call runs and written to the gateway's log
//! after it, one record per line, tagged with the filter, the plugin and
//! the request, under the same per-call and per-second limits as the
//! filter's `host.log` lines.
//!
//! The guest never waits on it: every write is taken at once, and what
//! passes the per-call cap is counted rather than kept, so a filter
//! printing in a loop costs memory bounded by the cap.

use bytes::Bytes;
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of output one call may leave to be logged (per stream); the rest
/// is counted and reported in one line.
pub const MAX_OUTPUT_PER_CALL: usize = 16 * 1024;

/// The largest write the guest is invited to make at once.
const WRITE_PERMIT: usize = 64 * 1024;

/// One output stream of one instance, shared by every handle the guest
/// opens on it.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Buffer>>);

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Captured {
    fn append(&self, bytes: &[u8]) {
        let mut b = self.0.lock();
        let room = MAX_OUTPUT_PER_CALL.saturating_sub(b.bytes.len());
        let kept = bytes.len().min(room);
        b.bytes.extend_from_slice(&bytes[..kept]);
        b.dropped += bytes.len() - kept;
    }

    /// What was written since the last take, as lines (an unfinished last
    /// line included), and how many bytes passed the cap.
    pub fn take(&self) -> (Vec<String>, usize) {
        let mut b = self.0.lock();
        if b.bytes.is_empty() && b.dropped == 0 {
            return (Vec::new(), 0);
        }
        let bytes = std::mem::take(&mut b.bytes);
        let dropped = std::mem::take(&mut b.dropped);
        drop(b);
        let lines = String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect();
        (lines, dropped)
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_the_excess_counted() {
        let c = Captured::default();
        c.append(b"thread panicked at src/lib.rs:3:5:\r\nboom\n\nno newline");
        let (lines, dropped) = c.take();
        assert_eq!(
            lines,
            ["thread panicked at src/lib.rs:3:5:", "boom", "no newline"]
        );
        assert_eq!(dropped, 0);
        assert_eq!(c.take(), (Vec::new(), 0));

        c.append(&vec![b'x'; MAX_OUTPUT_PER_CALL + 10]);
        let (lines, dropped) = c.take();
        assert_eq!(lines[0].len(), MAX_OUTPUT_PER_CALL);
        assert_eq!(dropped, 10);
    }
}
