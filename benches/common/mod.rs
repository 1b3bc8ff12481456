//! What the criterion benches share: where the built plugins are, requests
//! and responses as the proxy hands them to filters, and filters made the
//! way the gateway makes them.
#![allow(dead_code)]

use gateway::config::FilterConfig;
use gateway::plugin::host::{RequestId, RequestInfo, RequestState, ResponseState};
use gateway::plugin::{Filter, Runtime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin as `make plugins` builds it.
pub fn plugin_path(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/plugins/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `make plugins` first",
        p.display()
    );
    p
}

/// A routed request (route `api`) with these headers.
pub fn request_with(uri: &str, headers: &[(&str, &str)]) -> RequestState {
    let mut b = http::Request::builder().method("GET").uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    RequestState {
        parts: b.body(()).unwrap().into_parts().0,
        info: Arc::new(RequestInfo {
            route: "api".into(),
            client_addr: "127.0.0.1:5555".parse().unwrap(),
            request_id: RequestId::random(),
            scheme: "http",
        }),
        context: Vec::new(),
        body: Default::default(),
    }
}

/// An upstream's 200 with a few headers a header filter would edit.
pub fn response() -> ResponseState {
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("server", "upstream/1.0")
        .header("x-powered-by", "bench")
        .body(())
        .unwrap();
    ResponseState {
        parts: resp.into_parts().0,
        body: Default::default(),
    }
}

/// A filter of the plugin at `path`, configured by a `[filters.NAME]`
/// table's body, on a configuration whose only route is `api`.
pub async fn filter_at(
    rt: &Runtime,
    name: &str,
    plugin: &str,
    path: &Path,
    table: &str,
) -> Arc<Filter> {
    let cfg: FilterConfig = toml::from_str(table).unwrap();
    let loaded = rt.load(plugin, path).unwrap();
    let routes: Arc<[String]> = Arc::from(vec!["api".to_string()]);
    Arc::new(
        rt.filter(name, loaded, &cfg, Path::new("."), routes)
            .await
            .unwrap(),
    )
}
