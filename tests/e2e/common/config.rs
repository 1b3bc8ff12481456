//! A typed builder for the upstreams, filters and routes of a test
//! configuration, written out as TOML after the harness's preamble: names
//! and values are checked by the compiler and quoted by the TOML writer
//! instead of by hand in a `format!` string.

use super::Upstream;
use toml::{Table, Value};

/// The body of a test configuration (everything after the preamble).
#[derive(Default)]
pub struct Body {
    upstreams: Table,
    filters: Table,
    routes: Vec<Value>,
}

impl Body {
    pub fn new() -> Body {
        Body::default()
    }

    /// An upstream sending to these instances, round robin.
    pub fn upstream(mut self, name: &str, instances: &[&Upstream]) -> Body {
        let addrs = instances
            .iter()
            .map(|u| Value::String(u.addr.to_string()))
            .collect();
        self.upstreams.insert(
            name.into(),
            Value::Table(Table::from_iter([(
                "instances".into(),
                Value::Array(addrs),
            )])),
        );
        self
    }

    /// A filter running `plugin` with its `config` table, written as TOML
    /// (`"name = \"p1\"\nanswer = 403"`).
    pub fn filter(mut self, name: &str, plugin: &str, config: &str) -> Body {
        let config: Table = config.parse().expect("the filter's config is TOML");
        let mut f = Table::new();
        f.insert("plugin".into(), Value::String(plugin.into()));
        f.insert("config".into(), Value::Table(config));
        self.filters.insert(name.into(), Value::Table(f));
        self
    }

    pub fn route(mut self, route: Route) -> Body {
        self.routes.push(Value::Table(route.0));
        self
    }

    /// The TOML text, as `Gateway::start` takes it.
    pub fn to_toml(&self) -> String {
        let mut root = Table::new();
        for (key, table) in [("upstreams", &self.upstreams), ("filters", &self.filters)] {
            if !table.is_empty() {
                root.insert(key.into(), Value::Table(table.clone()));
            }
        }
        if !self.routes.is_empty() {
            root.insert("route".into(), Value::Array(self.routes.clone()));
        }
        toml::to_string(&root).expect("a table writes as TOML")
    }
}

/// One `[[route]]`.
pub struct Route(Table);

impl Route {
    pub fn new(id: &str, upstream: &str) -> Route {
        Route(Table::from_iter([
            ("id".to_string(), Value::String(id.into())),
            ("upstream".to_string(), Value::String(upstream.into())),
        ]))
    }

    pub fn host(self, host: &str) -> Route {
        self.set("host", Value::String(host.into()))
    }

    pub fn prefix(self, path_prefix: &str) -> Route {
        self.set("path_prefix", Value::String(path_prefix.into()))
    }

    pub fn methods(self, methods: &[&str]) -> Route {
        self.set("methods", strings(methods))
    }

    pub fn filters(self, filters: &[&str]) -> Route {
        self.set("filters", strings(filters))
    }

    fn set(mut self, key: &str, value: Value) -> Route {
        self.0.insert(key.into(), value);
        self
    }
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String((*s).into())).collect())
}
