//! `gateway plugin new`: a filter project in Rust, JavaScript, Python or
//! WAT, outside this repository, that builds with its own one command and
//! carries everything it needs from the gateway (the WIT, and for Rust the
//! SDK), so it depends on nothing but its language's package registry.
//!
//! The templates live in `plugins/templates` and are built into the binary;
//! `{{name}}` in them becomes the filter's name.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// A language a filter project can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
    Wat,
}

const WIT: &str = include_str!("../../../wit/filter.wit");
/// Filter API 0.2, beside 0.1 in every project, for a filter that reads
/// bodies, calls out or keeps values (build against `wit/v0.2`).
const WIT_V2: &str = include_str!("../../../wit/v0.2/filter.wit");
const README: &str = include_str!("../../../plugins/templates/common-README.md");

/// The Rust SDK, vendored into every Rust project.
const SDK: &[(&str, &str)] = &[
    (
        "filter-sdk/Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "filter-sdk/README.md",
        include_str!("../../../plugins/sdk/README.md"),
    ),
    (
        "filter-sdk/src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "filter-sdk/wit/filter.wit",
        include_str!("../../../plugins/sdk/wit/filter.wit"),
    ),
    // The 0.2 API, behind the crate's `v2` feature.
    (
        "filter-sdk/src/v2.rs",
        include_str!("../../../plugins/sdk/src/v2.rs"),
    ),
    (
        "filter-sdk/wit-0.2/filter.wit",
        include_str!("../../../plugins/sdk/wit-0.2/filter.wit"),
    ),
];

macro_rules! template {
    ($lang:literal, $($file:literal),+) => {
        &[$(($file, include_str!(concat!("../../../plugins/templates/", $lang, "/", $file)))),+]
    };
}

const RUST: &[(&str, &str)] = template!(
    "rust",
    "Cargo.toml",
    "src/lib.rs",
    ".gitignore",
    "filter.toml",
    "requests.toml"
);
const JS: &[(&str, &str)] = template!(
    "js",
    "package.json",
    "filter.js",
    ".gitignore",
    "filter.toml",
    "requests.toml"
);
const PYTHON: &[(&str, &str)] = template!(
    "python",
    "app.py",
    "requirements.txt",
    ".gitignore",
    "filter.toml",
    "requests.toml"
);
const WAT: &[(&str, &str)] = template!(
    "wat",
    "filter.wat",
    ".gitignore",
    "filter.toml",
    "requests.toml"
);

/// What the README says for each language.
struct Words {
    language: &'static str,
    build: String,
    artifact: String,
    extra_test: &'static str,
    wit_where: &'static str,
    config_example: &'static str,
}

fn words(lang: Lang, name: &str) -> Words {
    let crate_file = name.replace('-', "_");
    let with_settings = "require = \"x-client\"";
    match lang {
        Lang::Rust => Words {
            language: "Rust",
            build: format!(
                "```sh\nrustup target add wasm32-wasip2   # once\n\
                 cargo build --release --target wasm32-wasip2\n```\n\n\
                 The plugin is `target/wasm32-wasip2/release/{crate_file}.wasm`."
            ),
            artifact: format!("target/wasm32-wasip2/release/{crate_file}.wasm"),
            extra_test: "\n\n`cargo test` runs the unit tests in `src/lib.rs` natively.",
            wit_where: "the Rust SDK is vendored in `filter-sdk/` with its copy of the WIT \
                        (see `filter-sdk/README.md` to depend on it by git or path instead).",
            config_example: with_settings,
        },
        Lang::Js => Words {
            language: "JavaScript",
            build: format!(
                "With Node.js 18 or later:\n\n```sh\nnpm install\nnpm run build     \
                 # componentize-js filter.js ... --out {name}.wasm\n```"
            ),
            artifact: format!("{name}.wasm"),
            extra_test: "",
            wit_where: "its WIT is in `wit/`.",
            config_example: with_settings,
        },
        Lang::Python => Words {
            language: "Python",
            build: format!(
                "With Python 3.10 or later:\n\n```sh\npython3 -m venv .venv\n\
                 .venv/bin/pip install -r requirements.txt\n\
                 .venv/bin/componentize-py -d wit -w plugin componentize app -o {name}.wasm\n```"
            ),
            artifact: format!("{name}.wasm"),
            extra_test: "",
            wit_where: "its WIT is in `wit/`.",
            config_example: with_settings,
        },
        Lang::Wat => Words {
            language: "the WebAssembly text format",
            build: format!("```sh\ngateway plugin componentize filter.wat -o {name}.wasm\n```"),
            artifact: format!("{name}.wasm"),
            extra_test: "",
            wit_where: "its WIT is in `wit/`, and the comments in `filter.wat` give the \
                        canonical ABI layouts it uses.",
            config_example: "# (it takes no settings)",
        },
    }
}

/// Writes a `lang` filter project named `name` into `dir` (which must not
/// exist, or be empty) and answers what to run next.
pub fn new_filter(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<String> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` cannot name a filter: use lower-case letters, digits, `-` and `_`, \
             starting with a letter (it becomes the plugin file, the package name and \
             the `x-{name}` header)"
        );
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let files: Vec<(&str, &str)> = match lang {
        Lang::Rust => RUST.iter().chain(SDK).copied().collect(),
        Lang::Js => JS
            .iter()
            .copied()
            .chain([("wit/filter.wit", WIT), ("wit/v0.2/filter.wit", WIT_V2)])
            .collect(),
        Lang::Python => PYTHON
            .iter()
            .copied()
            .chain([("wit/filter.wit", WIT), ("wit/v0.2/filter.wit", WIT_V2)])
            .collect(),
        Lang::Wat => WAT
            .iter()
            .copied()
            .chain([("wit/filter.wit", WIT), ("wit/v0.2/filter.wit", WIT_V2)])
            .collect(),
    };
    let w = words(lang, name);
    let readme = README
        .replace("{{language}}", w.language)
        .replace("{{build}}", &w.build)
        .replace("{{artifact}}", &w.artifact)
        .replace("{{extra_test}}", w.extra_test)
        .replace("{{wit_where}}", w.wit_where)
        .replace("{{config_example}}", w.config_example);
    for (path, text) in files.into_iter().chain([("README.md", readme.as_str())]) {
        write(dir, path, &text.replace("{{name}}", name))?;
    }
    Ok(format!(
        "{lang} filter `{name}` written to {dir}; see {readme} to build, test and drop it in",
        lang = w.language,
        dir = dir.display(),
        readme = dir.join("README.md").display()
    ))
}

fn write(dir: &Path, path: &str, text: &str) -> anyhow::Result<()> {
    let full: PathBuf = dir.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&full, text).with_context(|| format!("cannot write {}", full.display()))
}
