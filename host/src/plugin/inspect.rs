//! What `gateway plugin check` says about a file, and how a core module
//! becomes a component (`gateway plugin componentize`).
//!
//! The authoritative test is the one the gateway applies at load: the
//! linker pre-instantiates the component and the generated bindings check
//! the `filter` export's types. Everything else here turns the first
//! mismatch into words a plugin author can act on.

use super::bindings::{v1, v2};
use super::host::HostState;
use super::{EXPORT_INTERFACE, WIT_PACKAGE};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

/// The world's text, built into the binary so `componentize` needs no
/// checkout of the project.
pub const WIT_SOURCE: &str = include_str!("../../../wit/filter.wit");

/// The functions the `filter` interface exports.
pub const FILTER_FUNCTIONS: [&str; 3] = ["configure", "on-request", "on-response"];

/// One version of the world the gateway loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    pub package: &'static str,
    pub export: &'static str,
    /// The gateway's own interfaces at this version.
    pub interfaces: &'static [&'static str],
}

pub const WORLD_V1: World = World {
    package: WIT_PACKAGE,
    export: EXPORT_INTERFACE,
    interfaces: &["types", "host", "state", "crypto"],
};

pub const WORLD_V2: World = World {
    package: "gateway:filter@0.2.0",
    export: "gateway:filter/filter@0.2.0",
    interfaces: &["types", "host", "state", "kv", "callout", "crypto"],
};

/// A component that fits the world: what it exports and imports.
#[derive(Debug)]
pub struct Fit {
    pub bytes: usize,
    pub imports: Vec<String>,
    pub world: World,
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let size = if self.bytes >= 1 << 20 {
            format!("{:.1} MiB", self.bytes as f64 / f64::from(1 << 20))
        } else {
            format!("{:.1} KiB", self.bytes as f64 / 1024.0)
        };
        writeln!(f, "a {} plugin component ({size})", self.world.package)?;
        writeln!(
            f,
            "  exports {}: {}",
            self.world.export,
            FILTER_FUNCTIONS.join(", ")
        )?;
        if self.imports.is_empty() {
            write!(f, "  imports nothing")
        } else {
            write!(f, "  imports {}", self.imports.join(", "))
        }
    }
}

/// Whether `bytes` are a component of the plugin world, explained.
pub fn check(
    engine: &Engine,
    linker: &Linker<HostState>,
    bytes: &[u8],
    compile: impl FnOnce(&[u8]) -> wasmtime::Result<Component>,
) -> Result<Fit, String> {
    let binary = component_binary(bytes)?;
    let component = compile(&binary).map_err(|e| format!("not a valid component: {e:#}"))?;
    check_component(engine, linker, &component)
        .map(|fit| Fit {
            bytes: binary.len(),
            ..fit
        })
        .map_err(|words| crate::telemetry::escape(&words).into_owned())
}

/// Which of a filter's calls the gateway makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    pub request: bool,
    pub response: bool,
}

impl Phases {
    pub const ALL: Phases = Phases {
        request: true,
        response: true,
    };
}

/// The custom section in which a plugin says which calls it wants: one
/// byte, bit 0 `on-request`, bit 1 `on-response`. The Rust SDK writes it
/// from `Filter::REQUEST_PHASE` and `RESPONSE_PHASE`.
pub const PHASES_SECTION: &str = "gateway:phases";

/// The phases `binary` (a component) declares in its core modules'
/// `gateway:phases` sections; both when none does, as for 0.1.0 plugins
/// and guests in other languages. A section of another shape is ignored
/// rather than trusted to skip a call.
pub fn declared_phases(binary: &[u8]) -> Phases {
    let mut declared: Option<u8> = None;
    for payload in wasmparser::Parser::new(0).parse_all(binary) {
        let Ok(payload) = payload else {
            return Phases::ALL;
        };
        if let wasmparser::Payload::CustomSection(c) = payload
            && c.name() == PHASES_SECTION
        {
            match c.data() {
                [bits] if *bits & !3 == 0 => *declared.get_or_insert(0) |= bits,
                _ => return Phases::ALL,
            }
        }
    }
    match declared {
        // A filter that asks for no call at all is taken at its word.
        Some(bits) => Phases {
            request: bits & 1 != 0,
            response: bits & 2 != 0,
        },
        None => Phases::ALL,
    }
}

/// The component a plugin file holds, in binary form, whether the file is
/// binary or WebAssembly text: what both loading and `gateway plugin check`
/// start from, so they accept and refuse the same files in the same words.
pub fn component_binary(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    let text = !bytes.starts_with(b"\0asm");
    let binary = if text {
        let source = std::str::from_utf8(bytes)
            .ok()
            .filter(|s| looks_like_wat(s))
            .ok_or_else(|| not_wasm(bytes))?;
        std::borrow::Cow::Owned(wat::parse_str(source).map_err(|e| {
            format!(
                "not valid WebAssembly text (WAT): {}",
                crate::telemetry::escape(&e.to_string())
            )
        })?)
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    if wasmparser::Parser::is_core_wasm(&binary) {
        let what = if text {
            "WebAssembly text (WAT) of a core module"
        } else {
            "a core WebAssembly module"
        };
        return Err(format!(
            "this is {what}, not a component. A filter is a \
             component of the {WIT_PACKAGE} world `plugin`: build Rust for the \
             wasm32-wasip2 target, or turn a core module written against the world \
             into a component with `gateway plugin componentize FILE -o OUT.wasm`"
        ));
    }
    Ok(binary)
}

/// Whether text starts like WebAssembly text: a form or a comment.
fn looks_like_wat(s: &str) -> bool {
    let s = s.trim_start();
    s.starts_with('(') || s.starts_with(";;")
}

/// The same check on a compiled component; on success, its world and
/// imports (its size is the caller's to say).
pub fn check_component(
    engine: &Engine,
    linker: &Linker<HostState>,
    component: &Component,
) -> Result<Fit, String> {
    let ty = component.component_type();
    let exports: Vec<(String, ComponentItem)> = ty
        .exports(engine)
        .map(|(name, e)| (name.to_string(), e.ty))
        .collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();

    let found = [WORLD_V2, WORLD_V1]
        .into_iter()
        .find_map(|w| exports.iter().find(|(n, _)| n == w.export).map(|e| (w, e)));
    let Some((world, (_, filter))) = found else {
        return Err(missing_export(&exports));
    };
    let export = world.export;
    let ComponentItem::ComponentInstance(instance) = filter else {
        return Err(format!(
            "it exports `{export}`, but not as an interface (an instance of functions)"
        ));
    };
    let missing: Vec<&str> = FILTER_FUNCTIONS
        .iter()
        .copied()
        .filter(|f| {
            !matches!(
                instance.get_export(engine, f).map(|e| e.ty),
                Some(ComponentItem::ComponentFunc(_))
            )
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "its `{export}` export lacks {} (the world's filter exports {})",
            quoted(&missing),
            FILTER_FUNCTIONS.join(", ")
        ));
    }

    let pre = linker.instantiate_pre(component).map_err(|e| {
        let unprovided: Vec<String> = imports
            .iter()
            .filter(|name| !provided(world, name))
            .map(|name| describe_import(name))
            .collect();
        if unprovided.is_empty() {
            format!("the gateway cannot supply its imports: {e:#}")
        } else {
            format!(
                "it imports what the gateway does not provide: {}. ({e:#})",
                unprovided.join("; ")
            )
        }
    })?;
    let typed = if world == WORLD_V2 {
        v2::PluginPre::new(pre).map(|_| ())
    } else {
        v1::PluginPre::new(pre).map(|_| ())
    };
    typed.map_err(|e| {
        format!(
            "its `{export}` functions do not have the world's types \
             (was it built against another copy of filter.wit?): {e:#}"
        )
    })?;
    Ok(Fit {
        bytes: 0,
        imports,
        world,
    })
}

/// Whether the gateway's linker serves an import of this name: its own
/// interfaces at the WIT version it speaks, and WASI 0.2 but for HTTP.
fn provided(world: World, name: &str) -> bool {
    let (iface, version) = name.split_once('@').unwrap_or((name, ""));
    if let Some(own) = iface.strip_prefix("gateway:filter/") {
        let ours = world.package.split_once('@').map_or("", |(_, v)| v);
        return world.interfaces.contains(&own) && version == ours;
    }
    iface.starts_with("wasi:") && !iface.starts_with("wasi:http/") && version.starts_with("0.2.")
}

fn describe_import(name: &str) -> String {
    if name.starts_with("wasi:http/") {
        return format!(
            "`{name}` (filters reach the network only through the gateway; \
             componentize-js adds it unless built with `-d http fetch-event`)"
        );
    }
    if let Some(rest) = name.strip_prefix("gateway:filter/") {
        return format!(
            "`{name}` (the gateway speaks {WIT_PACKAGE}; `{rest}` is not one of its \
             interfaces at that version)"
        );
    }
    if name.starts_with("wasi:") {
        return format!("`{name}` (the gateway provides WASI 0.2, not this version)");
    }
    format!("`{name}`")
}

fn missing_export(exports: &[(String, ComponentItem)]) -> String {
    let (iface, _) = EXPORT_INTERFACE
        .split_once('@')
        .unwrap_or((EXPORT_INTERFACE, ""));
    if let Some((other, _)) = exports
        .iter()
        .find(|(name, _)| name.split_once('@').map(|(i, _)| i) == Some(iface))
    {
        return format!(
            "it exports `{other}`, but this gateway speaks `{EXPORT_INTERFACE}` and `{}`: \
             rebuild it against this gateway's wit/filter.wit or wit/v0.2/filter.wit",
            WORLD_V2.export
        );
    }
    let names: Vec<&str> = exports.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "it exports no `{EXPORT_INTERFACE}` interface, so it is a component of another \
         world (it exports {}). A filter exports `filter` from the world `plugin` in \
         wit/filter.wit",
        if names.is_empty() {
            "nothing".to_string()
        } else {
            quoted(&names)
        }
    )
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_wasm(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "the file is empty".to_string()
    } else {
        "not a WebAssembly file (it does not start with the bytes \\0asm)".to_string()
    }
}

/// Turns a core module (binary or text) whose imports and exports follow
/// the component model's naming for the world `plugin` into a component:
/// what `wasm-tools component embed` and `component new` do, with the
/// gateway's own copy of the WIT.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    componentize_against(module, WIT_SOURCE)
}

fn componentize_against(module: &[u8], wit: &str) -> Result<Vec<u8>, String> {
    let mut module = wat::parse_bytes(module)
        .map_err(|e| format!("not a WebAssembly module: {e}"))?
        .into_owned();
    if wasmparser::Parser::is_component(&module) {
        return Err("this is already a component".to_string());
    }
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("filter.wit", wit)
        .map_err(|e| format!("the built-in WIT does not parse: {e:#}"))?;
    let world = resolve
        .select_world(&[package], Some("plugin"))
        .map_err(|e| format!("the built-in WIT has no world `plugin`: {e:#}"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| format!("cannot embed the world: {e:#}"))?;
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| format!("the module does not fit the world `plugin`: {e:#}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rust_sdk_carries_the_gateways_wit() {
        // The SDK is used outside this repository, so it holds its own
        // copy; a change to the world must change both.
        assert_eq!(
            include_str!("../../../plugins/sdk/wit/filter.wit"),
            super::WIT_SOURCE,
            "copy wit/filter.wit to plugins/sdk/wit/filter.wit"
        );
    }

    fn module_with_phases(sections: &[&str]) -> Vec<u8> {
        let customs: String = sections
            .iter()
            .map(|data| format!("(@custom \"gateway:phases\" \"{data}\")"))
            .collect();
        // A core module: the scan reads nested modules of a component the
        // same way (the shipped plugins show it end to end).
        wat::parse_str(format!("(module {customs})")).unwrap()
    }

    #[test]
    fn a_plugin_says_which_calls_it_wants_in_a_custom_section() {
        let request_only = module_with_phases(&["\\01"]);
        assert_eq!(
            declared_phases(&request_only),
            Phases {
                request: true,
                response: false
            }
        );
        assert_eq!(declared_phases(&module_with_phases(&["\\03"])), Phases::ALL);
        // No section: a 0.1.0 plugin, or one from another language.
        assert_eq!(declared_phases(&module_with_phases(&[])), Phases::ALL);
        // A section of another shape skips nothing.
        assert_eq!(declared_phases(&module_with_phases(&["\\05"])), Phases::ALL);
        assert_eq!(
            declared_phases(&module_with_phases(&["\\01\\01"])),
            Phases::ALL
        );
    }

    use super::*;
    use crate::plugin::Runtime;
    use crate::telemetry::Metrics;
    use std::sync::Arc;

    const EXAMPLE: &str = include_str!("../../../plugins/examples/require-user-agent/filter.wat");

    fn runtime() -> Runtime {
        let buckets = crate::config::MetricsConfig::default().duration_buckets;
        Runtime::new(Arc::new(Metrics::new(&buckets).unwrap())).unwrap()
    }

    #[test]
    fn the_wat_example_becomes_a_filter() {
        let component = componentize(EXAMPLE.as_bytes()).unwrap();
        let fit = runtime().check_plugin(&component).unwrap();
        assert_eq!(fit.imports, ["gateway:filter/types@0.1.0"]);
        assert_eq!(
            componentize(&component).unwrap_err(),
            "this is already a component"
        );
    }

    #[test]
    fn another_version_of_the_world_is_named() {
        let next = |s: &str| s.replace("@0.1.0", "@0.3.0");
        let component = componentize_against(next(EXAMPLE).as_bytes(), &next(WIT_SOURCE)).unwrap();
        let why = runtime().check_plugin(&component).unwrap_err();
        assert_eq!(
            why,
            "it exports `gateway:filter/filter@0.3.0`, but this gateway speaks \
             `gateway:filter/filter@0.1.0` and `gateway:filter/filter@0.2.0`: rebuild it \
             against this gateway's wit/filter.wit or wit/v0.2/filter.wit"
        );
    }

    #[test]
    fn the_sdk_carries_the_gateways_0_2_wit() {
        let gateway = include_str!("../../../wit/v0.2/filter.wit");
        let sdk = include_str!("../../../plugins/sdk/wit-0.2/filter.wit");
        assert_eq!(
            gateway, sdk,
            "plugins/sdk/wit-0.2 must be a copy of wit/v0.2"
        );
    }

    #[test]
    fn a_module_missing_an_export_is_refused_when_componentized() {
        let without = EXAMPLE.replace("(export \"gateway:filter/filter@0.1.0#on-response\")", "");
        let why = componentize(without.as_bytes()).unwrap_err();
        assert!(
            why.starts_with("the module does not fit the world `plugin`"),
            "{why}"
        );
        assert!(why.contains("on-response"), "{why}");
    }

    #[test]
    fn files_that_are_not_components_are_named_for_what_they_are() {
        let rt = runtime();
        let core = wat::parse_str(EXAMPLE).unwrap();
        assert!(
            rt.check_plugin(&core)
                .unwrap_err()
                .starts_with("this is a core WebAssembly module")
        );
        assert!(
            rt.check_plugin(EXAMPLE.as_bytes())
                .unwrap_err()
                .starts_with("this is WebAssembly text")
        );
        assert_eq!(rt.check_plugin(b"").unwrap_err(), "the file is empty");
        // A component in text form is judged as the same component in
        // binary form, as loading judges it.
        let text = rt.check_plugin(b"(component)").unwrap_err();
        let binary = rt
            .check_plugin(&wat::parse_str("(component)").unwrap())
            .unwrap_err();
        assert_eq!(text, binary);
        assert!(
            rt.check_plugin(b"(component (core module))")
                .is_err_and(|e| !e.contains("WebAssembly text"))
        );
        assert!(
            rt.check_plugin(b"(module")
                .unwrap_err()
                .starts_with("not valid WebAssembly text (WAT)")
        );
        assert!(
            rt.check_plugin(b"{}")
                .unwrap_err()
                .starts_with("not a WebAssembly file")
        );
        let mut broken = componentize(EXAMPLE.as_bytes()).unwrap();
        broken.truncate(broken.len() / 2);
        assert!(
            rt.check_plugin(&broken)
                .unwrap_err()
                .starts_with("not a valid component")
        );
    }
}
