//! What the shipped filters share. Pure functions only: each filter passes
//! in what it got from the gateway through its own bindings.

/// Refuses settings for a route the gateway does not have (`known`, from
/// `host::route-ids`): a misspelt id would otherwise leave the real route
/// without them. The message starts with `plugin:` and names the first
/// unknown id in sorted order, so it is the same on every load.
pub fn check_route_ids<'a>(
    plugin: &str,
    named: impl Iterator<Item = &'a String>,
    known: &[String],
) -> Result<(), String> {
    let mut unknown: Vec<&String> = named.filter(|id| !known.contains(id)).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(id) => Err(format!(
            "{plugin}: route `{id}` is not in the gateway's config; the routes are: {}",
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_route_ids_are_named() {
        let known = vec!["api".to_string(), "admin".to_string()];
        let ok = ["api".to_string()];
        assert!(check_route_ids("p", ok.iter(), &known).is_ok());
        let bad = ["zz".to_string(), "admn".to_string()];
        assert_eq!(
            check_route_ids("p", bad.iter(), &known).unwrap_err(),
            "p: route `admn` is not in the gateway's config; the routes are: api, admin"
        );
        assert_eq!(
            check_route_ids("p", bad.iter(), &[]).unwrap_err(),
            "p: route `admn` is not in the gateway's config; the routes are: (none)"
        );
    }
}
