//! Adds `Server-Timing: gateway;dur=<ms>` to every response: the time from
//! this filter's `on_request` to its `on_response`, upstream included.
use filter_sdk::{Action, Filter, Request, Response, export_filter, host};

struct ServerTiming {
    metric: String,
}

impl Filter for ServerTiming {
    fn configure(config: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Config {
            metric: Option<String>,
        }
        let c: Config = filter_sdk::parse_config("server-timing", config)?;
        let metric = c.metric.unwrap_or_else(|| "gateway".into());
        Ok(ServerTiming { metric })
    }

    fn on_request(&mut self, req: &Request) -> Action {
        // The response may be handled by another instance: keep the start
        // on the request, not in this instance.
        req.set_context("server-timing.start", &host::monotonic_ns().to_string());
        Action::Continue
    }

    fn on_response(&mut self, req: &Request, resp: &Response) -> Action {
        if let Some(start) = req.get_context("server-timing.start") {
            let ns = host::monotonic_ns().saturating_sub(start.parse().unwrap_or(0));
            let value = format!("{};dur={:.3}", self.metric, ns as f64 / 1e6);
            let _ = resp.append_header("server-timing", value.as_bytes());
        }
        Action::Continue
    }
}

export_filter!(ServerTiming);
