//! {{name}}: a gateway filter. Requests without the header named by the
//! `require` setting are answered 403; the others go on, tagged with
//! `x-{{name}}: seen`.

use filter_sdk::{Action, Filter, Request, export_filter, log, parse_config, respond};
use serde::Deserialize;

/// The filter's settings: its `[filters.NAME.config]` table in the
/// gateway's TOML. Unknown keys are refused, so a typo is reported at load
/// rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A header every request must carry.
    require: Option<String>,
}

struct Tagger {
    settings: Settings,
}

impl Filter for Tagger {
    // This filter has nothing to do on the way back: the gateway skips
    // the call.
    const RESPONSE_PHASE: bool = false;

    fn configure(config: &str) -> Result<Self, String> {
        let settings: Settings = parse_config("{{name}}", config)?;
        Ok(Tagger { settings })
    }

    fn on_request(&mut self, req: &Request) -> Action {
        if let Some(name) = &self.settings.require {
            if req.header(name).is_none() {
                log!(Debug, "refused {}: no {name} header", req.path());
                return respond(403, "text/plain", format!("missing header {name}\n"));
            }
        }
        let _ = req.set_header("x-{{name}}", b"seen");
        Action::Continue
    }
}

export_filter!(Tagger);

#[cfg(test)]
mod tests {
    use super::Settings;
    use filter_sdk::parse_config;

    #[test]
    fn settings_are_read_and_typos_refused() {
        let s: Settings = parse_config("t", r#"{"require": "x-client"}"#).unwrap();
        assert_eq!(s.require.as_deref(), Some("x-client"));
        let typo = parse_config::<Settings>("t", r#"{"requires": "x-client"}"#).unwrap_err();
        assert!(typo.contains("unknown field `requires`"), "{typo}");
    }
}
