// The marker filter's code, included by `marker-v1` and `marker-v2`, which
// differ only in `VERSION`: the reload tests swap one file for the other
// under load and check that every response was served by exactly one.
//
// On the way in it records its version in the chain's context and in the
// `x-mark-request` request header; on the way out it sets `x-mark` to its
// version and `x-mark-request` to what the request phase recorded, so a
// request whose two phases ran on different versions shows it.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use exports::gateway::filter::filter::Guest;
use gateway::filter::types::{Action, Request, Response};

struct Marker;

impl Guest for Marker {
    fn configure(config: String) -> Result<(), String> {
        // `{"refuse": true}` lets a test make this plugin refuse its
        // configuration.
        if config.contains("\"refuse\":true") {
            return Err(format!("marker {VERSION} refuses this configuration on purpose"));
        }
        Ok(())
    }

    fn on_request(req: &Request) -> Action {
        req.set_context("marker.version", VERSION);
        let _ = req.set_header("x-mark-request", VERSION.as_bytes());
        Action::Continue
    }

    fn on_response(req: &Request, resp: &Response) -> Action {
        let seen = req
            .get_context("marker.version")
            .unwrap_or_else(|| "<none>".into());
        let _ = resp.set_header("x-mark", VERSION.as_bytes());
        let _ = resp.set_header("x-mark-request", seen.as_bytes());
        Action::Continue
    }
}

export!(Marker);
