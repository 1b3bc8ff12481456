//! What the gateway refuses, normalises and survives at the edge: requests
//! an upstream could read differently, hostile headers, connections that
//! never speak. Each case is sent as raw bytes (HTTP/1.1) or frames (h2c)
//! and checked both at the client and at a recording upstream.

mod breaker;
mod connections;
mod headers;
mod hosts;
mod logging;
mod paths;
mod protocol;

use crate::common::{Gateway, Upstream, preamble, tempdir};

/// A gateway with `server` lines added to the harness's `[server]` table,
/// followed by `body`.
fn gateway_with(server: &str, body: &str) -> Gateway {
    Gateway::start_with(tempdir::Dir::new(), |addr, admin| {
        let pre = preamble(addr, admin).replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
        format!("{pre}{body}")
    })
}

fn upstream_block(name: &str, u: &Upstream) -> String {
    format!("[upstreams.{name}]\ninstances = [\"{}\"]\n\n", u.addr)
}

/// What an HTTP/2 client got back.
#[derive(Debug)]
struct H2Answer {
    status: u16,
    headers: http::HeaderMap,
}

impl H2Answer {
    fn error_code(&self) -> Option<&str> {
        self.headers
            .get("x-gateway-error")
            .and_then(|v| v.to_str().ok())
    }
}

/// Sends one request over h2c with prior knowledge. `uri` gives `:path`
/// and, when absolute, `:authority`; `headers` are sent as they are (a
/// `host` among them included). Err when the stream or connection failed.
fn h2(gw: &Gateway, method: &str, uri: &str, headers: &[(&str, &str)]) -> Result<H2Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(gw.addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
            .await
            .map_err(|_| "no answer in 10s".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(H2Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
        })
    })
}
