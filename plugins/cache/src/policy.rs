//! What HTTP caching (RFC 9111) allows, as pure functions of header text
//! and the time: `Cache-Control` directives, HTTP dates, how long a response
//! stays fresh, and whether a request may use the cache or a response may
//! be stored. Nothing here calls the gateway.

use filter_sdk::v2::label_enum;

/// The `Cache-Control` directives the cache acts on; the rest are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    /// `max-age`: `Some(None)` when present but not a number, which makes a
    /// response stale (RFC 9111 section 4.2.1).
    pub max_age: Option<Option<u64>>,
    pub s_maxage: Option<Option<u64>>,
}

/// Reads a `Cache-Control` list (every line of the header joined with
/// commas). Names are case-insensitive; a value is a token or a quoted
/// string, which may hold commas. A directive given twice keeps its first
/// value.
pub fn parse_cache_control(list: &str) -> Directives {
    let mut d = Directives::default();
    for (name, value) in directives(list) {
        let seconds = || Some(value.as_deref().and_then(delta_seconds));
        match name.as_str() {
            "no-store" => d.no_store = true,
            // The qualified forms (`no-cache="set-cookie"`) are treated as
            // the plain one: the cache never edits what it stores.
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "public" => d.public = true,
            "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
            "max-age" if d.max_age.is_none() => d.max_age = seconds(),
            "s-maxage" if d.s_maxage.is_none() => d.s_maxage = seconds(),
            _ => {}
        }
    }
    d
}

/// The directives of a list as (lower-case name, unquoted value).
fn directives(list: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        let end = rest.find([',', '=']).unwrap_or(rest.len());
        let name = rest[..end].trim().to_ascii_lowercase();
        rest = &rest[end..];
        let mut value = None;
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            if let Some(quoted) = after.strip_prefix('"') {
                // A quoted string ends at the first unescaped quote.
                let mut text = String::new();
                let mut chars = quoted.char_indices();
                let mut consumed = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, e)) = chars.next() {
                                text.push(e);
                            }
                        }
                        '"' => {
                            consumed = i + 1;
                            break;
                        }
                        c => text.push(c),
                    }
                }
                value = Some(text);
                rest = &quoted[consumed..];
                // Anything between the closing quote and the next comma is
                // not part of a valid list; skip it.
                rest = &rest[rest.find(',').unwrap_or(rest.len())..];
            } else {
                let end = after.find(',').unwrap_or(after.len());
                value = Some(after[..end].trim().to_string());
                rest = &after[end..];
            }
        }
        if !name.is_empty() {
            out.push((name, value));
        }
    }
}

/// A `delta-seconds` value: digits only; too many saturate at a large
/// value, as RFC 9111 section 1.2.2 asks.
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(2_147_483_648))
}

/// Seconds since the Unix epoch of an HTTP date in any of the three forms
/// a recipient must accept (RFC 9110 section 5.6.7): `Sun, 06 Nov 1994
/// 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`, `Sun Nov  6 08:49:37
/// 1994`. The weekday is not checked.
pub fn parse_http_date(text: &str) -> Option<u64> {
    let text = text.trim();
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    let (day, month, year, time) = match fields.as_slice() {
        // IMF-fixdate.
        [_, day, month, year, time, "GMT"] => (*day, *month, year.parse::<u64>().ok()?, *time),
        // RFC 850: the date is one field, the year two digits.
        [_, date, time, "GMT"] => {
            let mut parts = date.split('-');
            let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || year.len() != 2 {
                return None;
            }
            // Two-digit years: the nearest past century (RFC 9110 asks for
            // a year more than 50 years ahead to be taken as the past).
            let yy: u64 = year.parse().ok()?;
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            (day, month, year, *time)
        }
        // asctime.
        [_, month, day, time, year] => (*day, *month, year.parse::<u64>().ok()?, *time),
        _ => return None,
    };
    if !(1..=2).contains(&day.len()) || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day: u64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut hms = time.split(':');
    let mut part = |max: u64| -> Option<u64> {
        let p = hms.next()?;
        if p.len() != 2 {
            return None;
        }
        p.parse::<u64>().ok().filter(|v| *v <= max)
    };
    let (h, m, s) = (part(23)?, part(59)?, part(60)?);
    if hms.next().is_some() || !(1970..=9999).contains(&year) {
        return None;
    }
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3_600 + m * 60 + s)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar, for
/// years from 1970 (the civil-from-days algorithm run backwards).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

label_enum! {
    /// Why a request does not use the cache (the `reason` of `bypasses`).
    pub enum Bypass {
        /// The request's `Cache-Control` (or `Pragma`) asked for a fresh answer.
        RequestDirective => "request_directive",
        /// `Authorization`, and no stored answer that allows sharing it.
        Authorization => "authorization",
        /// The gateway's kv store failed: served from upstream.
        KvError => "kv_error",
    }
}

/// What the cache does with a request, decided from its method and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Not a method the cache serves or invalidates (`OPTIONS`, say).
    Ignore,
    /// An unsafe method: a success drops what is stored for the URI
    /// (RFC 9111 section 4.4).
    Invalidate,
    /// Skip the lookup; `store` says whether the answer may be stored
    /// (after `no-cache`, a fresh answer replaces the stored one).
    Bypass { reason: Bypass, store: bool },
    /// Look the request up. `authorized`: only answers stored as shareable
    /// serve it. `max_age`: the oldest stored answer it accepts.
    Lookup {
        authorized: bool,
        max_age: Option<u64>,
    },
}

/// The request facts a plan is made from.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Every `Cache-Control` line joined.
    pub cache_control: Option<&'a str>,
    pub pragma: Option<&'a str>,
    pub authorization: bool,
}

pub fn plan(r: &RequestFacts, cache_authorized: bool) -> Plan {
    match r.method {
        "GET" | "HEAD" => {}
        "POST" | "PUT" | "DELETE" | "PATCH" => return Plan::Invalidate,
        _ => return Plan::Ignore,
    }
    let d = r.cache_control.map(parse_cache_control).unwrap_or_default();
    if d.no_store {
        return Plan::Bypass {
            reason: Bypass::RequestDirective,
            store: false,
        };
    }
    // `Pragma: no-cache` counts only without `Cache-Control` (RFC 9111
    // section 5.4); `max-age=0` is how browsers ask for a reload.
    let pragma_no_cache = r.cache_control.is_none()
        && r.pragma
            .is_some_and(|p| directives(p).iter().any(|(n, _)| n == "no-cache"));
    let max_age = d.max_age.map(|m| m.unwrap_or(0));
    if d.no_cache || pragma_no_cache || max_age == Some(0) {
        return Plan::Bypass {
            reason: Bypass::RequestDirective,
            store: true,
        };
    }
    Plan::Lookup {
        authorized: r.authorization && !cache_authorized,
        max_age,
    }
}

label_enum! {
    /// Why a response was not stored (the `reason` of `uncacheable`).
    pub enum NotStored {
        Status => "status",
        NoStore => "no_store",
        Private => "private",
        NoCache => "no_cache",
        VaryStar => "vary_star",
        SetCookie => "set_cookie",
        /// A response to a request with `Authorization` that does not say
        /// it may be shared.
        Authorization => "authorization",
        /// No explicit freshness and no `default_ttl`.
        NoFreshness => "no_freshness",
        /// Already stale when it arrived.
        Stale => "stale",
        /// The body is over `max_object_bytes`, or the entry over a kv value.
        TooLarge => "too_large",
    }
}

/// The response facts a storage decision is made from; headers as text,
/// several lines joined with commas.
#[derive(Default)]
pub struct ResponseFacts<'a> {
    pub status: u16,
    pub cache_control: Option<&'a str>,
    pub expires: Option<&'a str>,
    pub date: Option<&'a str>,
    pub age: Option<&'a str>,
    pub vary: Option<&'a str>,
    pub set_cookie: bool,
}

/// The settings a storage decision depends on.
pub struct StoreRules<'a> {
    pub statuses: &'a [u16],
    pub default_ttl_ms: u64,
    pub max_ttl_ms: u64,
}

/// A response the cache may store: for how long, how old it already is,
/// and whether a request with `Authorization` may be served it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storable {
    pub ttl_ms: u64,
    pub age_s: u64,
    pub shared: bool,
}

/// Whether a response to a request that may be stored is stored, and for
/// how long. `authorized`: the request carried `Authorization` and the
/// cache does not ignore it.
pub fn storable(
    r: &ResponseFacts,
    authorized: bool,
    rules: &StoreRules,
    now_ms: u64,
) -> Result<Storable, NotStored> {
    if !rules.statuses.contains(&r.status) {
        return Err(NotStored::Status);
    }
    let d = r.cache_control.map(parse_cache_control).unwrap_or_default();
    if d.no_store {
        return Err(NotStored::NoStore);
    }
    if d.private {
        return Err(NotStored::Private);
    }
    if d.no_cache {
        return Err(NotStored::NoCache);
    }
    if r.vary.is_some_and(|v| vary_names(v).is_err()) {
        return Err(NotStored::VaryStar);
    }
    // A cookie set for one client must not reach another.
    if r.set_cookie {
        return Err(NotStored::SetCookie);
    }
    // RFC 9111 section 3.5: what may be shared although the request was
    // authorised.
    let shared = d.public || d.s_maxage.is_some() || d.must_revalidate;
    if authorized && !shared {
        return Err(NotStored::Authorization);
    }
    let now_s = now_ms / 1000;
    let date = r.date.and_then(parse_http_date);
    let lifetime_s = match (d.s_maxage, d.max_age, r.expires) {
        (Some(s), _, _) => s.unwrap_or(0),
        (None, Some(m), _) => m.unwrap_or(0),
        // An Expires that is not a date (often "0") means already expired.
        (None, None, Some(expires)) => match parse_http_date(expires) {
            Some(at) => at.saturating_sub(date.unwrap_or(now_s)),
            None => 0,
        },
        (None, None, None) if rules.default_ttl_ms > 0 => {
            let ttl_ms = rules.default_ttl_ms.min(rules.max_ttl_ms);
            let age_s = current_age_s(r.age, date, now_s);
            let left = ttl_ms.saturating_sub(age_s * 1000);
            return if left == 0 {
                Err(NotStored::Stale)
            } else {
                Ok(Storable {
                    ttl_ms: left,
                    age_s,
                    shared,
                })
            };
        }
        (None, None, None) => return Err(NotStored::NoFreshness),
    };
    let age_s = current_age_s(r.age, date, now_s);
    let left_s = lifetime_s.saturating_sub(age_s);
    if left_s == 0 {
        return Err(NotStored::Stale);
    }
    Ok(Storable {
        ttl_ms: left_s.saturating_mul(1000).min(rules.max_ttl_ms),
        age_s,
        shared,
    })
}

/// How old a response is on arrival (RFC 9111 section 4.2.3, without the
/// response delay): the larger of its `Age` and the time since its `Date`.
fn current_age_s(age: Option<&str>, date: Option<u64>, now_s: u64) -> u64 {
    let age = age.and_then(|a| delta_seconds(a.trim())).unwrap_or(0);
    let apparent = date.map_or(0, |d| now_s.saturating_sub(d));
    age.max(apparent)
}

/// The header names a `Vary` list names: lower case, sorted, once each.
/// `Err` for `*`, which nothing stored can match.
pub fn vary_names(list: &str) -> Result<Vec<String>, ()> {
    let mut names: Vec<String> = list
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.iter().any(|n| n == "*") {
        return Err(());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether a stored answer satisfies a conditional request, so it is
/// answered 304: `If-None-Match` against the stored `ETag` (weak
/// comparison, `*` matches any), else `If-Modified-Since` against the
/// stored `Last-Modified`.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    if let Some(inm) = if_none_match {
        let Some(etag) = etag else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let stored = weak(etag);
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || (!t.trim().is_empty() && weak(t) == stored));
    }
    match (
        if_modified_since.and_then(parse_http_date),
        last_modified.and_then(parse_http_date),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUSES: &[u16] = &[200, 404];
    const NOW_MS: u64 = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT

    fn rules(default_ttl_ms: u64) -> StoreRules<'static> {
        StoreRules {
            statuses: STATUSES,
            default_ttl_ms,
            max_ttl_ms: 86_400_000,
        }
    }

    fn store(r: ResponseFacts) -> Result<Storable, NotStored> {
        storable(&r, false, &rules(0), NOW_MS)
    }

    fn ok(status: u16, cache_control: &str) -> ResponseFacts<'_> {
        ResponseFacts {
            status,
            cache_control: Some(cache_control),
            ..Default::default()
        }
    }

    #[test]
    fn cache_control_lists_are_read_with_quotes_and_case() {
        let d = parse_cache_control(
            r#"Public, max-age=60 , s-maxage="120", no-cache="set-cookie, x", must-revalidate"#,
        );
        assert!(d.public && d.no_cache && d.must_revalidate && !d.no_store && !d.private);
        assert_eq!(d.max_age, Some(Some(60)));
        assert_eq!(d.s_maxage, Some(Some(120)));
        // Commas inside quotes do not split; the first max-age counts.
        let d = parse_cache_control(r#"private="a,b", max-age=5, max-age=99"#);
        assert!(d.private);
        assert_eq!(d.max_age, Some(Some(5)));
        assert_eq!(parse_cache_control("max-age=soon").max_age, Some(None));
        assert_eq!(parse_cache_control("max-age").max_age, Some(None));
        assert_eq!(
            parse_cache_control("max-age=99999999999999999999").max_age,
            Some(Some(2_147_483_648))
        );
        assert_eq!(parse_cache_control(",, ,"), Directives::default());
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        let t = 784_111_777;
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "0",
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 2027 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nvm 1994 08:49:37 GMT",
            "Sun, 06 Nov 1969 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn freshness_prefers_s_maxage_then_max_age_then_expires() {
        let s = store(ok(200, "max-age=60, s-maxage=30")).unwrap();
        assert_eq!((s.ttl_ms, s.age_s, s.shared), (30_000, 0, true));
        let s = store(ok(200, "max-age=60")).unwrap();
        assert_eq!((s.ttl_ms, s.shared), (60_000, false));
        // Expires counts from Date when there is one...
        let r = ResponseFacts {
            status: 200,
            expires: Some("Sun, 06 Nov 1994 08:59:37 GMT"),
            date: Some("Sun, 06 Nov 1994 08:49:37 GMT"),
            ..Default::default()
        };
        assert_eq!(store(r).unwrap().ttl_ms, 600_000);
        // ...and from now without; max-age wins over it.
        let r = ResponseFacts {
            status: 200,
            expires: Some("Sun, 06 Nov 1994 08:50:37 GMT"),
            ..Default::default()
        };
        assert_eq!(store(r).unwrap().ttl_ms, 60_000);
        let r = ResponseFacts {
            status: 200,
            cache_control: Some("max-age=5"),
            expires: Some("Sun, 06 Nov 1994 08:50:37 GMT"),
            ..Default::default()
        };
        assert_eq!(store(r).unwrap().ttl_ms, 5_000);
        // An Expires that is not a date is in the past.
        let r = ResponseFacts {
            status: 200,
            expires: Some("0"),
            ..Default::default()
        };
        assert_eq!(store(r), Err(NotStored::Stale));
    }

    #[test]
    fn age_and_date_shorten_what_is_left() {
        let r = ResponseFacts {
            status: 200,
            cache_control: Some("max-age=100"),
            age: Some("30"),
            ..Default::default()
        };
        assert_eq!(
            store(r).unwrap(),
            Storable {
                ttl_ms: 70_000,
                age_s: 30,
                shared: false
            }
        );
        let r = ResponseFacts {
            status: 200,
            cache_control: Some("max-age=100"),
            date: Some("Sun, 06 Nov 1994 08:48:37 GMT"),
            ..Default::default()
        };
        assert_eq!(store(r).unwrap().age_s, 60);
        let r = ResponseFacts {
            status: 200,
            cache_control: Some("max-age=100"),
            age: Some("100"),
            ..Default::default()
        };
        assert_eq!(store(r), Err(NotStored::Stale));
        assert_eq!(store(ok(200, "max-age=0")), Err(NotStored::Stale));
        assert_eq!(store(ok(200, "max-age=x")), Err(NotStored::Stale));
    }

    #[test]
    fn default_ttl_only_without_explicit_freshness_and_max_ttl_caps() {
        let bare = || ResponseFacts {
            status: 200,
            ..Default::default()
        };
        assert_eq!(store(bare()), Err(NotStored::NoFreshness));
        let s = storable(&bare(), false, &rules(30_000), NOW_MS).unwrap();
        assert_eq!(s.ttl_ms, 30_000);
        let s = storable(&ok(200, "max-age=5"), false, &rules(30_000), NOW_MS).unwrap();
        assert_eq!(s.ttl_ms, 5_000);
        let s = store(ok(200, "max-age=31536000")).unwrap();
        assert_eq!(s.ttl_ms, 86_400_000);
    }

    #[test]
    fn what_is_never_stored() {
        assert_eq!(store(ok(500, "max-age=60")), Err(NotStored::Status));
        assert_eq!(store(ok(404, "max-age=60")).map(|s| s.ttl_ms), Ok(60_000));
        assert_eq!(
            store(ok(200, "max-age=60, no-store")),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(ok(200, "private, max-age=60")),
            Err(NotStored::Private)
        );
        assert_eq!(
            store(ok(200, "s-maxage=60, no-cache")),
            Err(NotStored::NoCache)
        );
        let star = ResponseFacts {
            vary: Some("accept, *"),
            ..ok(200, "max-age=60")
        };
        assert_eq!(store(star), Err(NotStored::VaryStar));
        let cookie = ResponseFacts {
            set_cookie: true,
            ..ok(200, "public, max-age=60")
        };
        assert_eq!(store(cookie), Err(NotStored::SetCookie));
    }

    #[test]
    fn authorised_requests_store_only_what_says_it_may_be_shared() {
        let auth = |cc| storable(&ok(200, cc), true, &rules(0), NOW_MS);
        assert_eq!(auth("max-age=60"), Err(NotStored::Authorization));
        assert!(auth("public, max-age=60").unwrap().shared);
        assert!(auth("s-maxage=60").unwrap().shared);
        assert!(auth("max-age=60, must-revalidate").unwrap().shared);
    }

    #[test]
    fn requests_plan_by_method_and_directives() {
        let facts = |method, cc, pragma, authorization| RequestFacts {
            method,
            cache_control: cc,
            pragma,
            authorization,
        };
        let lookup = Plan::Lookup {
            authorized: false,
            max_age: None,
        };
        assert_eq!(plan(&facts("GET", None, None, false), false), lookup);
        assert_eq!(plan(&facts("HEAD", None, None, false), false), lookup);
        assert_eq!(
            plan(&facts("DELETE", None, None, false), false),
            Plan::Invalidate
        );
        assert_eq!(
            plan(&facts("OPTIONS", None, None, false), false),
            Plan::Ignore
        );
        let fresh = Plan::Bypass {
            reason: Bypass::RequestDirective,
            store: true,
        };
        assert_eq!(
            plan(&facts("GET", Some("no-cache"), None, false), false),
            fresh
        );
        assert_eq!(
            plan(&facts("GET", Some("max-age=0"), None, false), false),
            fresh
        );
        assert_eq!(
            plan(&facts("GET", None, Some("no-cache"), false), false),
            fresh
        );
        // Pragma is ignored beside Cache-Control.
        assert_eq!(
            plan(
                &facts("GET", Some("max-age=10"), Some("no-cache"), false),
                false
            ),
            Plan::Lookup {
                authorized: false,
                max_age: Some(10)
            }
        );
        assert_eq!(
            plan(&facts("GET", Some("no-store"), None, false), false),
            Plan::Bypass {
                reason: Bypass::RequestDirective,
                store: false
            }
        );
        assert_eq!(
            plan(&facts("GET", None, None, true), false),
            Plan::Lookup {
                authorized: true,
                max_age: None
            }
        );
        assert_eq!(plan(&facts("GET", None, None, true), true), lookup);
    }

    #[test]
    fn vary_lists_are_normalised_and_star_refused() {
        assert_eq!(
            vary_names("Accept-Encoding, accept ,ACCEPT-encoding").unwrap(),
            ["accept", "accept-encoding"]
        );
        assert_eq!(vary_names("").unwrap(), Vec::<String>::new());
        assert!(vary_names("*").is_err());
    }

    #[test]
    fn conditional_requests_match_etags_weakly_then_dates() {
        assert!(not_modified(
            Some("\"a\", W/\"b\""),
            None,
            Some("\"b\""),
            None
        ));
        assert!(not_modified(Some("*"), None, Some("\"x\""), None));
        assert!(!not_modified(Some("\"a\""), None, Some("\"b\""), None));
        assert!(!not_modified(Some("\"a\""), None, None, None));
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(not_modified(None, Some(lm), None, Some(lm)));
        assert!(!not_modified(
            None,
            Some("Sun, 06 Nov 1994 08:49:36 GMT"),
            None,
            Some(lm)
        ));
        // If-None-Match decides alone when present.
        assert!(!not_modified(
            Some("\"a\""),
            Some(lm),
            Some("\"b\""),
            Some(lm)
        ));
    }
}
