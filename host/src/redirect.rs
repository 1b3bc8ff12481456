//! The plaintext listener `[server.tls] redirect_listen` opens: every
//! request is answered `308 Permanent Redirect` to the same path and query
//! over https on the proxy listener's port, so a browser typing the bare
//! name lands on TLS and a POST stays a POST. A request whose Host the
//! proxy would refuse is refused here too (400), so the redirect never
//! points at a name nobody asked for. Nothing is forwarded upstream. Its
//! connections keep the proxy's deadlines and connection limits.

use crate::edge;
use crate::server::{self, CurrentSettings};
use crate::serving::Shared;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves redirects on `listener` until `shutdown` turns true; `https_port`
/// is the proxy listener's.
pub async fn serve(
    listener: TcpListener,
    https_port: u16,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut current = CurrentSettings::new(&shared.current().server);
    // Held to the proxy listener's limits, counted apart from its own
    // connections: a flood here cannot take the proxy's slots.
    let slots = Arc::new(crate::slots::Slots::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::listeners::accept(&listener) => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let settings = current.get(&shared.current().server).clone();
        let (max, max_per_client) = current.limits();
        let slot = match slots.take(peer.ip(), max, max_per_client) {
            Ok(slot) => slot,
            Err(reason) => {
                shared.metrics.count_connection_refused(reason);
                continue;
            }
        };
        let mut stopped = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let handler = move |req: Request<Incoming>| async move { redirect(req, https_port) };
            let stopping = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            server::serve_connection(stream, peer, &settings, handler, stopping).await;
        });
    }
}

fn redirect(req: Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let (parts, _) = req.into_parts();
    let location = match edge::request_host(&parts) {
        Ok(Some(host)) => https_url(&host.name, https_port, &parts.uri),
        Ok(None) | Err(_) => None,
    };
    let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONNECTION, "close")
            .body(Full::new(Bytes::from_static(
                b"bad request: a valid Host header is needed to redirect to https\n",
            )))
            .unwrap_or_default();
    };
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, location)
        .header(header::CONTENT_LENGTH, "0")
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

/// `https://NAME[:PORT]/PATH?QUERY`: the port left out when it is 443.
fn https_url(name: &str, port: u16, uri: &http::Uri) -> Option<String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // An absolute-form or asterisk target has no path to keep.
    if !path.starts_with('/') {
        return None;
    }
    Some(match port {
        443 => format!("https://{name}{path}"),
        p => format!("https://{name}:{p}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_keeps_path_and_query_and_names_the_https_port() {
        let uri: http::Uri = "/a/b?c=1".parse().unwrap();
        assert_eq!(
            https_url("example.com", 443, &uri).as_deref(),
            Some("https://example.com/a/b?c=1")
        );
        assert_eq!(
            https_url("[::1]", 8443, &uri).as_deref(),
            Some("https://[::1]:8443/a/b?c=1")
        );
        assert_eq!(https_url("example.com", 443, &"*".parse().unwrap()), None);
    }
}
