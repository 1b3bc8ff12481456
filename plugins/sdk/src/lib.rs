//! What the shipped filters share. Pure functions only: each filter passes
//! in what it got from the gateway through its own bindings (and makes the
//! host calls, such as declaring the series in `Declared`, itself).

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

/// Distinct label sets the gateway keeps per plugin counter (its
/// `PLUGIN_SERIES_CAP`); past it, new sets fold into one `overflow="true"`
/// series.
pub const SERIES_CAP: usize = 100;

/// The most series a filter declares per counter in `configure`: half the
/// cap, because the cap is shared by every filter that uses the plugin and
/// by the series traffic creates (a tenant from a token, a route a limit
/// was not declared for), which must not be pushed into the overflow.
pub const DECLARE_MAX: usize = SERIES_CAP / 2;

/// A counter's labels, as `host::counter-add` takes them.
pub type Labels = Vec<(String, String)>;

/// The counter series a filter creates at zero in `configure`, so a scrape
/// shows the whole set before the first request (a dashboard or an alert on
/// a series that does not exist yet sees nothing rather than zero).
///
/// The filter passes each entry to `host::counter-add` with 0.0, which
/// creates the series without counting anything; doing so again (every
/// instance configures) changes nothing.
#[derive(Debug, Default)]
pub struct Declared {
    pub series: Vec<(&'static str, Labels)>,
    /// Label sets left out because their counter had reached `DECLARE_MAX`.
    pub dropped: usize,
}

impl Declared {
    pub fn new() -> Declared {
        Declared::default()
    }

    /// Declares `counter` with every combination of the labels' values, the
    /// last label varying fastest. A set already declared is skipped; past
    /// `DECLARE_MAX` sets for this counter the rest are dropped (and
    /// counted in `dropped`), so callers list the most useful values first.
    pub fn product(&mut self, counter: &'static str, labels: &[(&str, &[&str])]) -> &mut Declared {
        if labels.iter().any(|(_, values)| values.is_empty()) {
            return self;
        }
        let mut at = vec![0usize; labels.len()];
        loop {
            let set: Labels = labels
                .iter()
                .zip(&at)
                .map(|((name, values), &i)| (name.to_string(), values[i].to_string()))
                .collect();
            let known = self.series.iter().any(|(c, l)| *c == counter && *l == set);
            if !known {
                if self.count(counter) < DECLARE_MAX {
                    self.series.push((counter, set));
                } else {
                    self.dropped += 1;
                }
            }
            // The next combination, like an odometer.
            let mut k = labels.len();
            loop {
                if k == 0 {
                    return self;
                }
                k -= 1;
                at[k] += 1;
                if at[k] < labels[k].1.len() {
                    break;
                }
                at[k] = 0;
            }
        }
    }

    /// How many label sets `counter` has been declared with.
    pub fn count(&self, counter: &str) -> usize {
        self.series.iter().filter(|(c, _)| *c == counter).count()
    }

    /// The values `counter` was declared with for `label`, in order, once each.
    pub fn values(&self, counter: &str, label: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, labels) in self.series.iter().filter(|(c, _)| *c == counter) {
            for (k, v) in labels {
                if k == label && !out.contains(&v.as_str()) {
                    out.push(v);
                }
            }
        }
        out
    }
}

/// A field-less enum whose variants are the values of a metric label,
/// with `label()` giving each one's text and `ALL` listing every variant.
/// The code that counts and the code that declares the series at zero both
/// go through it, so the declared list cannot miss a value that is counted.
///
/// ```
/// filter_sdk::label_enum! {
///     /// Why a request was refused.
///     pub enum Reason {
///         TooMany => "too_many",
///         TooLarge => "too_large",
///     }
/// }
/// assert_eq!(Reason::ALL, &[Reason::TooMany, Reason::TooLarge]);
/// assert_eq!(Reason::TooLarge.label(), "too_large");
/// ```
#[macro_export]
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code)]
        impl $name {
            /// Every variant, in the order declared.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The metric label value.
            pub const fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }

            /// The labels of `values`, in order.
            pub fn labels(values: &[$name]) -> Vec<&'static str> {
                values.iter().map(|v| v.label()).collect()
            }
        }
    };
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

    #[test]
    fn products_vary_the_last_label_fastest_and_skip_repeats() {
        let mut d = Declared::new();
        d.product("c", &[("a", &["1", "2"]), ("b", &["x", "y"])]);
        d.product("c", &[("a", &["2"]), ("b", &["y", "z"])]);
        let sets: Vec<String> = d
            .series
            .iter()
            .map(|(_, l)| {
                l.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(
            sets,
            ["a=1,b=x", "a=1,b=y", "a=2,b=x", "a=2,b=y", "a=2,b=z"]
        );
        assert_eq!(d.values("c", "b"), ["x", "y", "z"]);
        // A label without values declares nothing; no labels, one series.
        d.product("c", &[("a", &[])]).product("n", &[]);
        assert_eq!((d.count("c"), d.count("n"), d.dropped), (5, 1, 0));
    }

    #[test]
    fn declarations_stop_at_the_budget_per_counter() {
        let many: Vec<String> = (0..DECLARE_MAX + 7).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut d = Declared::new();
        d.product("big", &[("i", &many)])
            .product("small", &[("i", &["0"])]);
        assert_eq!(d.count("big"), DECLARE_MAX);
        assert_eq!(d.count("small"), 1);
        assert_eq!(d.dropped, 7);
        assert_eq!(d.values("big", "i")[..2], ["0", "1"]);
    }

    label_enum! {
        enum Colour {
            Red => "red",
            Blue => "blue",
        }
    }

    #[test]
    fn label_enums_list_every_variant_with_its_label() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::Blue]);
        assert_eq!(Colour::labels(Colour::ALL), ["red", "blue"]);
    }
}
