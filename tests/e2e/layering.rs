//! The host's modules import one another only downwards, in the layers
//! `host/src/lib.rs` lists, so no two modules depend on each other. Read
//! from the sources: every `crate::name` path (and `use crate::{a, b}`
//! group) in a module's files names a module it imports.

use crate::common::repo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers of host/src/lib.rs, lowest first.
const LAYERS: &[&[&str]] = &[
    &[
        "build_info",
        "clock",
        "config",
        "edge",
        "listeners",
        "per_worker",
        "echo",
        "grpc",
    ],
    &["telemetry", "tls"],
    &["state", "routing", "slots"],
    &["upstream", "tunnel"],
    &["plugin", "l4"],
    &["serving"],
    &["assemble", "proxy", "tcp_server"],
    &["server", "reload"],
    &["admin", "redirect", "authoring"],
    &["app", "scenario"],
];

/// Module name → the modules its files name through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let src = repo().join("host/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = deps.entry(module.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or("").trim())
                    .collect()
            } else {
                vec![
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap(),
                ]
            };
            for n in names {
                if !n.is_empty() && n != module && n != "self" {
                    entry.insert(n.to_string());
                }
            }
        }
    }
    deps
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn modules_import_only_the_layers_below_their_own() {
    let deps = imports();
    let mut wrong = Vec::new();
    for (module, used) in &deps {
        let Some(own) = layer(module) else {
            wrong.push(format!(
                "`{module}` is in no layer; add it to host/src/lib.rs and LAYERS"
            ));
            continue;
        };
        for u in used {
            match layer(u) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "`{module}` (layer {}) imports `{u}` (layer {})",
                    own + 1,
                    l + 1
                )),
                None => wrong.push(format!("`{module}` imports `{u}`, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The check reads what it should: the proxy imports the plugin runtime,
    // and the config imports nothing of the gateway.
    assert!(deps["proxy"].contains("plugin"), "{deps:?}");
    assert!(deps["app"].contains("reload"), "{deps:?}");
    assert!(deps.get("config").is_none_or(|d| d.is_empty()), "{deps:?}");
}
