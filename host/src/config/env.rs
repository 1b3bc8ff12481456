//! `${NAME}` and `${NAME:-default}` in string values, expanded after
//! parsing so a variable can never change the file's structure, with the
//! position each expansion error has in the file as written.

use super::{ConfigError, error_at};
use serde_spanned::Spanned;
use std::borrow::Cow;
use toml::de::{DeTable, DeValue};

/// The environment `${NAME}` is read from: the process's, or a test's.
pub type Env<'e> = dyn Fn(&str) -> Option<String> + 'e;

/// An expansion error: the byte offset of its `${` in the file, and why.
type ExpandError = (usize, String);

/// Replaces `${NAME}` and `${NAME:-default}` in every string value with
/// the environment's value. It runs on the parsed document, so a value
/// holding a quote, a backslash or a newline stays inside its string and
/// cannot change the file's structure, and a `${` in a comment is never
/// read. Keys are left as written: they name settings, filters and
/// upstreams the rest of the file refers to by name, and a name that moved
/// with the environment would break those references. Numbers and
/// booleans cannot hold a variable; a port goes in a string, as in
/// `listen = "127.0.0.1:${PORT}"`.
pub(super) fn expand_table(
    table: &mut DeTable<'_>,
    text: &str,
    env: &Env<'_>,
) -> Result<(), ExpandError> {
    for (_, value) in table.iter_mut() {
        expand_value(value, text, env)?;
    }
    Ok(())
}

fn expand_value(
    value: &mut Spanned<DeValue<'_>>,
    text: &str,
    env: &Env<'_>,
) -> Result<(), ExpandError> {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            let expanded = expand_string(s, env).map_err(|(at, message)| {
                let literal = text.get(span.clone()).unwrap_or_default();
                let offset = source_offset(literal, s, at).unwrap_or(0);
                (span.start + offset, message)
            })?;
            *s = Cow::Owned(expanded);
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                expand_value(item, text, env)?;
            }
        }
        DeValue::Table(t) => expand_table(t, text, env)?,
        _ => {}
    }
    Ok(())
}

/// Expands one string; an error's offset is into `s`.
fn expand_string(s: &str, env: &Env<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let at = s.len() - rest.len() + start;
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            (
                at,
                "`${` is not closed; write `${NAME}` or `${NAME:-default}`".to_string(),
            )
        })?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err((at, format!("`${{{expr}}}` is not a valid variable name")));
        }
        match env(name).or_else(|| default.map(str::to_string)) {
            Some(v) => out.push_str(&v),
            None => {
                return Err((
                    at,
                    format!(
                        "environment variable `{name}` is not set; set it or give a default as `${{{name}:-value}}`"
                    ),
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where byte `at` of a string's value was written, as an offset into its
/// `literal` (the quoted text in the file). Escapes, a multi-line string's
/// first newline and its line-ending backslashes make the two differ. None
/// when decoding `literal` here does not give `value` back, so a case this
/// decoder misses points at the opening quote rather than somewhere wrong.
fn source_offset(literal: &str, value: &str, at: usize) -> Option<usize> {
    let (decoded, offsets) = decode_with_offsets(literal)?;
    if decoded != value {
        return None;
    }
    offsets.get(at).copied()
}

/// Decodes a TOML string literal, with the literal offset each decoded byte
/// came from (and one more entry for the end).
pub(super) fn decode_with_offsets(literal: &str) -> Option<(String, Vec<usize>)> {
    let delimiter = ["\"\"\"", "'''", "\"", "'"]
        .into_iter()
        .find(|d| literal.starts_with(d) && literal.len() >= 2 * d.len())?;
    let basic = delimiter.starts_with('"');
    let multi_line = delimiter.len() == 3;
    let end = literal.len() - delimiter.len();
    let mut i = delimiter.len();
    if multi_line {
        // A newline right after the opening delimiter is not part of the value.
        if literal[i..].starts_with("\r\n") {
            i += 2;
        } else if literal[i..].starts_with('\n') {
            i += 1;
        }
    }
    let mut out = String::new();
    let mut offsets = Vec::new();
    let mut push = |c: char, from: usize, out: &mut String| {
        out.push(c);
        offsets.extend(std::iter::repeat_n(from, c.len_utf8()));
    };
    while i < end {
        let c = literal[i..end].chars().next()?;
        if !(basic && c == '\\') {
            push(c, i, &mut out);
            i += c.len_utf8();
            continue;
        }
        let rest = &literal[i + 1..end];
        let escaped = rest.chars().next()?;
        let hex = |n: usize| {
            let digits = rest.get(1..1 + n)?;
            char::from_u32(u32::from_str_radix(digits, 16).ok()?)
        };
        let (c, len) = match escaped {
            'b' => ('\u{8}', 1),
            't' => ('\t', 1),
            'n' => ('\n', 1),
            'f' => ('\u{c}', 1),
            'r' => ('\r', 1),
            'e' => ('\u{1b}', 1),
            '"' => ('"', 1),
            '\\' => ('\\', 1),
            'x' => (hex(2)?, 3),
            'u' => (hex(4)?, 5),
            'U' => (hex(8)?, 9),
            // A line-ending backslash drops the newline and the
            // whitespace after it.
            ' ' | '\t' | '\r' | '\n' if multi_line => {
                let skipped = rest.len() - rest.trim_start_matches([' ', '\t', '\r', '\n']).len();
                i += 1 + skipped;
                continue;
            }
            _ => return None,
        };
        push(c, i, &mut out);
        i += 1 + len;
    }
    offsets.push(end);
    Some((out, offsets))
}

/// toml's message and position for a syntax error. A `${VAR}` outside a
/// string is one: toml stops at its `$` or its `{`, and the error points at
/// the `$` with a hint.
pub(super) fn syntax_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start);
    let dollar = [at, at.saturating_sub(1)]
        .into_iter()
        .find(|&i| text.get(i..).is_some_and(|t| t.starts_with("${")));
    match dollar {
        Some(dollar) => error_at(
            file,
            text,
            dollar,
            format!(
                "{}; a `${{VAR}}` is expanded only inside a string, like \"127.0.0.1:${{PORT}}\"",
                super::toml_message(e)
            ),
        ),
        None => error_at(file, text, at, super::toml_message(e)),
    }
}
