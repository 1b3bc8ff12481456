//! A client's request body streamed to the upstream as it arrives, and
//! kept (up to a limit) so that a retry can send it again.
//!
//! Every try gets a `Replay` of one shared body: it hands out the frames
//! earlier tries already read, then reads on from the client, recording
//! what it reads while the record stays within the limit. Once the body
//! outgrows the limit the record is dropped: the try under way carries on,
//! and the exchange no longer retries. A try dropped before it read the
//! body at all (a refused connection) leaves it whole for the next.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Why a streamed body ended a try early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The client sent more than the gateway's `max_body_bytes`.
    TooLarge,
    /// The client's connection failed mid-body.
    Client,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cut::TooLarge => "the request body is over the gateway's limit",
            Cut::Client => "the client's request body broke off",
        })
    }
}

impl std::error::Error for Cut {}

struct Shared {
    source: hyper::body::Incoming,
    /// Frames read so far, while they fit `keep`; the first `pinned`
    /// (read ahead for filters) are kept whatever their size.
    kept: Vec<Bytes>,
    pinned: usize,
    kept_bytes: usize,
    /// Frames read (kept or not).
    read: usize,
    bytes: u64,
    keep: usize,
    max: u64,
    /// The record was dropped: only the try that outgrew it can go on.
    outgrown: bool,
    ended: bool,
    cut: Option<Cut>,
}

/// The shared body; `try_body` makes each try's view of it.
#[derive(Clone)]
pub struct StreamedBody(Arc<Mutex<Shared>>);

impl StreamedBody {
    /// Streams `source`, keeping up to `keep` bytes for retries, and
    /// cutting it (as `Cut::TooLarge`) past `max` bytes.
    pub fn new(source: hyper::body::Incoming, keep: usize, max: u64) -> StreamedBody {
        StreamedBody::after(Vec::new(), source, keep, max)
    }

    /// Like `new`, for a body whose first frames were read already (by
    /// filters that found it over their limits): they go first.
    pub fn after(
        ahead: Vec<Bytes>,
        source: hyper::body::Incoming,
        keep: usize,
        max: u64,
    ) -> StreamedBody {
        let bytes: usize = ahead.iter().map(Bytes::len).sum();
        StreamedBody(Arc::new(Mutex::new(Shared {
            source,
            pinned: ahead.len(),
            read: ahead.len(),
            kept: ahead,
            kept_bytes: bytes,
            bytes: bytes as u64,
            keep,
            max,
            outgrown: false,
            ended: false,
            cut: None,
        })))
    }

    /// The body for one more try, or `None` when it can no longer be sent
    /// whole (the record was outgrown).
    pub fn try_body(&self) -> Option<Replay> {
        let s = self.0.lock();
        (!s.outgrown || s.read == s.pinned).then(|| Replay {
            shared: self.clone(),
            at: 0,
        })
    }

    /// Whether another try could send the body again.
    pub fn replayable(&self) -> bool {
        let s = self.0.lock();
        !s.outgrown && s.cut.is_none()
    }

    /// Bytes read from the client so far.
    pub fn bytes_read(&self) -> u64 {
        self.0.lock().bytes
    }

    /// Whether the client's body has been read to its end.
    pub fn finished(&self) -> bool {
        let s = self.0.lock();
        s.ended || s.source.is_end_stream()
    }

    /// Why a try's body ended early, if it did.
    pub fn cut(&self) -> Option<Cut> {
        self.0.lock().cut
    }
}

/// One try's view of the body.
pub struct Replay {
    shared: StreamedBody,
    /// Frames of the body this try has sent.
    at: usize,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let shared = self.shared.clone();
        let mut s = shared.0.lock();
        if let Some(cut) = s.cut {
            return Poll::Ready(Some(Err(cut)));
        }
        if self.at < s.read {
            // An earlier try read this far: hand its frames out again.
            return match s.kept.get(self.at) {
                Some(b) if !s.outgrown || self.at < s.pinned => {
                    let b = b.clone();
                    self.at += 1;
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                _ => Poll::Ready(Some(Err(Cut::Client))),
            };
        }
        if s.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(_))) => {
                s.cut = Some(Cut::Client);
                Poll::Ready(Some(Err(Cut::Client)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let Some(data) = frame.data_ref().cloned() else {
                    // Trailers go to this try only; a retry sends the data.
                    return Poll::Ready(Some(Ok(frame)));
                };
                s.bytes += data.len() as u64;
                if s.bytes > s.max {
                    s.cut = Some(Cut::TooLarge);
                    return Poll::Ready(Some(Err(Cut::TooLarge)));
                }
                s.read += 1;
                self.at += 1;
                if !s.outgrown {
                    if s.kept_bytes + data.len() <= s.keep {
                        s.kept_bytes += data.len();
                        s.kept.push(data.clone());
                    } else {
                        s.outgrown = true;
                        let pinned = s.pinned;
                        s.kept.truncate(pinned);
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.0.lock();
        s.cut.is_none() && self.at >= s.read && (s.ended || s.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.0.lock();
        if self.at != 0 || s.read != 0 {
            // The client's content-length (kept in the head) frames it.
            return SizeHint::default();
        }
        // Untouched: the client's own framing (its content-length) holds.
        s.source.size_hint()
    }
}
