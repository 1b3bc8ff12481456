//! An echo upstream the gateway can run itself (`[echo] listen = ...`): it
//! answers every request with a JSON account of the request exactly as it
//! arrived, so `curl localhost:8080/echo` shows what the filters did.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;

async fn echo(
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let headers: Vec<serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| serde_json::json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "peer": peer.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("json");
    out.push(b'\n');
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("server", "gateway-echo")
        .body(Full::new(Bytes::from(out)))
        .expect("valid response"))
}

/// Serves the echo upstream on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| echo(req, peer));
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        });
    }
}
