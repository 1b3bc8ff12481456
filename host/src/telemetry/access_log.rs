//! The access log: one JSON line per request, to stdout or a file, written
//! by a thread of its own so a slow disk or a blocked pipe never holds a
//! request. Lines wait in a bounded queue; when the writer falls that far
//! behind, new lines are dropped and counted
//! (`gateway_access_log_dropped_total`) rather than growing memory.

use crate::config::AccessLogConfig;
use opentelemetry::metrics::Counter;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Lines that may wait for the writer.
const QUEUE: usize = 16 * 1024;

pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: Counter<u64>,
}

/// One request, as logged. Times are the gateway's: `duration_ms` runs from
/// receiving the request head to sending the last byte of the response.
#[derive(Serialize, Debug, Default)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub client: String,
    pub route: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub duration_ms: f64,
    /// The instance that answered (the last tried), if any was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub tries: u32,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The tenant a filter established (the `tenant` context key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The TLS version of the client's connection; absent in plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The subject of the client's verified certificate, if it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Who made the answer: `upstream`, `gateway` (a refusal of its own, or
    /// no instance to ask), or `filter:<name>` when a filter answered or
    /// failed closed.
    pub answered_by: String,
}

/// One connection of a TCP route, as logged when it ends. `kind` is
/// always `tcp`, which tells these lines from requests' in one file.
#[derive(Serialize, Debug)]
pub struct TcpEntry<'a> {
    pub time: String,
    pub kind: &'static str,
    pub client: String,
    pub listener: String,
    pub route: &'a str,
    /// The server name of the ClientHello, on listeners that route by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    /// The instance the connection went to; absent when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// `closed`, `idle`, `error` or `shutdown` for a proxied connection;
    /// the refusal's reason otherwise.
    pub outcome: &'static str,
    pub duration_ms: f64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl AccessLog {
    /// Opens the destination (`stdout`, `stderr` or a file, appended to,
    /// relative to the config's folder) and starts the writer.
    pub fn open(
        cfg: &AccessLogConfig,
        base_dir: &Path,
        dropped: Counter<u64>,
    ) -> anyhow::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match cfg.path.as_str() {
            "stdout" => Box::new(std::io::stdout()),
            "stderr" => Box::new(std::io::stderr()),
            p => {
                let path = base_dir.join(p);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open the access log {}: {e}", path.display())
                    })?;
                Box::new(f)
            }
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, out))?;
        dropped.add(0, &[]);
        Ok(AccessLog { tx, dropped })
    }

    pub fn write(&self, entry: &impl Serialize) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.add(1, &[])
            }
        }
    }

    /// Waits, up to `wait`, until every line queued before this call is
    /// written: the process is about to end, and the lines of its last
    /// connections would go with it.
    pub fn flush(&self, wait: std::time::Duration) {
        let (done, written) = sync_channel(1);
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(wait);
        }
    }
}

enum Message {
    Line(String),
    /// Answered once every line before it is written.
    Flush(SyncSender<()>),
}

/// Writes lines as they come, flushing whenever the queue is empty, so a
/// quiet gateway's log is complete and a busy one writes in large blocks.
fn write_lines(rx: Receiver<Message>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(line.as_bytes());
                }
                Message::Flush(done) => waiting.push(done),
            }
            next = rx.try_recv().ok();
        }
        // A closed stdout: nothing more can be written; draining goes on
        // so senders never block.
        let _ = out.flush();
        for done in waiting.drain(..) {
            let _ = done.try_send(());
        }
    }
}

/// Now, as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
