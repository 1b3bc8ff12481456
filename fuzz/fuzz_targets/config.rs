//! `Config::parse` on arbitrary text: it never panics, and a refusal
//! points inside the text (line 1 to the line after the last, column 1 or
//! more), because the operator is sent there to fix it.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

/// Environment values that break naive expansion into TOML: quotes,
/// backslashes, newlines, `${`, and an empty value. Other names are unset,
/// so `${NAME:-default}` and the "not set" refusal are reached too.
fn env(name: &str) -> Option<String> {
    let v = match name {
        "QUOTE" => "a\"b",
        "SQUOTE" => "a'b",
        "BACKSLASH" => "a\\b",
        "NEWLINE" => "a\nb",
        "CRLF" => "a\r\nb\r\n",
        "MIXED" => "\"\n\\'\n]\n[server]\nx = \"",
        "NESTED" => "${QUOTE}",
        "EMPTY" => "",
        "PORT" => "8080",
        "HOST" => "127.0.0.1",
        "LISTEN" => "127.0.0.1:0",
        "UPSTREAM" => "127.0.0.1:9",
        _ => return None,
    };
    Some(v.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `config_files` makes the parser read files; a fuzzer-made path could
    // name /dev/zero or a FIFO. Skip inputs that could spell that key (also
    // through a TOML `\u` escape in a quoted key); everything else parses
    // against a base directory that does not exist.
    if text.contains("config_files")
        || (text.contains("config") && (text.contains("\\u") || text.contains("\\U")))
    {
        return;
    }
    let base = PathBuf::from("/nonexistent/gateway-fuzz");
    match Config::parse("fuzz.toml", text, base, &env) {
        Ok(_) => {}
        Err(e) => {
            let lines = text.lines().count();
            assert!(
                e.line >= 1 && e.line <= lines + 1 && e.column >= 1,
                "error at line {} column {} of a {lines}-line text: {e}",
                e.line,
                e.column
            );
        }
    }
});
