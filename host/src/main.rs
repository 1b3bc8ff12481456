//! The `gateway` command.

use clap::{Parser, Subcommand};
use gateway::config::ConfigSource;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "An API gateway whose request filters are WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The least severe lines logged: trace, debug, info, warn or error.
    /// `GATEWAY_LOG`, when set, takes tracing's fuller syntax instead
    /// (`info,gateway::proxy=debug`). Filters' own lines are chosen by
    /// each filter's `log_level`.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<tracing::Level>,
    /// `text` (the default) or `json`, one object per line.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration (default: config/gateway.toml, or the copy
    /// built into the binary when that file is absent).
    ///
    /// Listens where `[server]`, `[admin]` and `[echo]` say (or on sockets a
    /// supervisor hands over: LISTEN_FDS, with LISTEN_FDNAMES naming them
    /// server, admin, echo). Reloads when the config file or a plugin file
    /// changes, on SIGHUP and on `POST /admin/reload`; a reload that fails
    /// keeps the running configuration. SIGTERM or SIGINT makes `/ready`
    /// fail for `[server] drain_delay` while requests are still served,
    /// then closes the listener and lets open requests finish for
    /// `[server] shutdown_grace`, then exits. `/ready` on the admin
    /// listener answers 200 once requests are served.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Parse and validate a configuration and load every plugin, then exit.
    /// Errors name the file, line and column; the exit status is 1.
    Check {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Work with plugin files.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Replay an incident or a load shape on loopback: its own upstreams,
    /// a gateway started from this binary, load, and a short story with a
    /// before/after table. Results go to --out.
    Scenario {
        /// black-friday, cascade, rate-limit-surge, plugin-crash,
        /// reload-under-load, load-steady, load-ramp, load-spike, load-soak,
        /// load-rate-limit or load-breaker.
        name: String,
        /// A few seconds instead of the full story.
        #[arg(long)]
        short: bool,
        /// Overrides the scenario's length (e.g. 30m, 60s).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Where results go (default: target/scenarios/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The folder holding the shipped plugins.
        #[arg(long, default_value = "plugins/dist")]
        plugins: PathBuf,
        /// Keep the gateway and upstreams running afterwards, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Take this gateway out of its load balancer: `POST /admin/drain`
    /// (with the token in GATEWAY_ADMIN_TOKEN, if set) makes `/ready`
    /// answer 503 while requests are still served; then wait, so the
    /// balancer notices before the process is stopped. What a Kubernetes
    /// preStop hook runs.
    Drain {
        /// The admin listener, as host:port (default: ADMIN_LISTEN, as the
        /// default config reads it, with a wildcard address made loopback;
        /// else 127.0.0.1:9901).
        #[arg(long)]
        admin: Option<String>,
        /// How long to wait after draining before exiting.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Manage the compile cache (compiled plugins kept across restarts).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Remove entries this gateway cannot load (another version or engine
    /// settings) and those not used for DAYS days.
    Prune {
        /// The cache directory (default: $XDG_CACHE_HOME/gateway/plugins).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Remove entries not used for this many days; 0 removes all.
        #[arg(long, default_value_t = 30, value_name = "DAYS")]
        unused_for: u64,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Say whether FILE is a component this gateway can load as a filter,
    /// and if not, what is missing or mismatched. Exits 1 when it is not.
    Check { file: PathBuf },
    /// Print each FILE's SHA-256, as a filter's `sha256 = "…"` pins it and
    /// `/admin/plugins` reports it.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Fetch a plugin from an OCI registry by digest and write it whole as
    /// DIR/NAME.wasm (a running gateway reloads once, on the whole file).
    ///
    /// REF is REGISTRY/REPOSITORY@sha256:<digest of the manifest>; tags are
    /// refused, since a tag can be moved to other content. The manifest is
    /// checked against the digest, the wasm layer against the manifest's
    /// digest and size, and the file must be a component this gateway can
    /// load, or nothing is written. Prints the file's SHA-256, which a
    /// filter pins with `sha256 = "…"`. Anonymous, or with
    /// GATEWAY_REGISTRY_USER and GATEWAY_REGISTRY_PASSWORD.
    Pull {
        /// REGISTRY/REPOSITORY@sha256:<64 hex digits>, e.g.
        /// ghcr.io/acme/auth@sha256:3f1c….
        #[arg(value_name = "REF")]
        reference: gateway::plugin::oci::Reference,
        /// The plugin folder (`[plugins] dir`).
        #[arg(long)]
        dir: PathBuf,
        /// The plugin's name: the file written is NAME.wasm.
        #[arg(long, value_parser = |s: &str| gateway::config::PluginName::try_from(s.to_string()))]
        name: gateway::config::PluginName,
        /// Plain HTTP rather than HTTPS, for a registry on loopback.
        #[arg(long)]
        plain_http: bool,
    },
    /// Make a core module (.wasm or .wat) written against the world
    /// `plugin` in wit/filter.wit into a component.
    Componentize {
        module: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Write a new filter project: an example filter, its build, a test
    /// and a README, ready to build outside this repository.
    New {
        /// The filter's name: lower-case letters, digits, `-` and `_`.
        name: String,
        #[arg(long, value_enum)]
        lang: gateway::authoring::scaffold::Lang,
        /// Where (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run FILE against the requests in a file, without a gateway: prints
    /// each decision, the headers and the filter's log lines, and exits 1
    /// when a request does not get what it expects.
    Test {
        file: PathBuf,
        /// The filter's settings: a TOML file holding what
        /// `[filters.NAME.config]` would.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The requests: `[[request]]` tables (see README.md).
        #[arg(long)]
        request: PathBuf,
    },
}

const DEFAULT_CONFIG: &str = "config/gateway.toml";

/// Where this host's gateway has its admin listener: `ADMIN_LISTEN`, which
/// the default config (and so the image) listens on, reached on loopback
/// when it names every address.
fn default_admin() -> String {
    let Ok(listen) = std::env::var("ADMIN_LISTEN") else {
        return "127.0.0.1:9901".into();
    };
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        _ => listen,
    }
}

fn source(path: Option<PathBuf>) -> ConfigSource {
    match path {
        Some(p) => ConfigSource::File(p),
        None if std::path::Path::new(DEFAULT_CONFIG).is_file() => {
            ConfigSource::File(DEFAULT_CONFIG.into())
        }
        None => ConfigSource::Embedded,
    }
}

/// Logs to standard error at the level the command line or `GATEWAY_LOG`
/// gives for the gateway's own lines. Filters' lines (target
/// `gateway::filter`) are chosen by each filter's `log_level` instead,
/// unless `GATEWAY_LOG` names that target itself.
fn init_logging(level: Option<tracing::Level>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let directives = match (level, std::env::var("GATEWAY_LOG")) {
        (None, Ok(directives)) if EnvFilter::try_new(&directives).is_ok() => directives,
        (None, Ok(directives)) => {
            eprintln!("warning: GATEWAY_LOG={directives:?} is not understood; logging at info");
            "info".to_string()
        }
        (level, _) => level.unwrap_or(tracing::Level::INFO).to_string(),
    };
    let filter = if directives.contains("gateway::filter") {
        EnvFilter::new(directives)
    } else {
        EnvFilter::new(format!("{directives},gateway::filter=trace"))
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour only for a person at a terminal; a file or a collector
        // gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level, cli.log_format);
    // Before the runtime's threads start: taking the sockets edits the
    // environment.
    let inherited = match gateway::listeners::Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Reloads, health checks, the admin listener and signals: client
    // connections are served by worker threads of their own (`[server]
    // workers`), so this runtime needs few threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Check { config } => runtime
            .block_on(gateway::app::check(&source(config)))
            .map(|msg| println!("{msg}")),
        Command::Run { config } => runtime.block_on(gateway::app::run(source(config), inherited)),
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => match gateway::app::check_plugin_file(&file) {
            Ok(Ok(fit)) => {
                println!("{fit}");
                Ok(())
            }
            Ok(Err(why)) => {
                eprintln!("{why}");
                return ExitCode::FAILURE;
            }
            Err(e) => Err(e),
        },
        Command::Plugin {
            command: PluginCommand::Hash { files },
        } => files.iter().try_for_each(|f| {
            let bytes = std::fs::read(f)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
            println!("{}  {}", gateway::plugin::content_hash(&bytes), f.display());
            Ok(())
        }),
        Command::Drain { admin, wait } => runtime
            .block_on(gateway::app::drain(
                &admin.unwrap_or_else(default_admin),
                wait,
            ))
            .map(|msg| println!("{msg}")),
        Command::Plugin {
            command: PluginCommand::New { name, lang, dir },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            gateway::authoring::scaffold::new_filter(&name, lang, &dir).map(|msg| println!("{msg}"))
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    config,
                    request,
                },
        } => match runtime.block_on(gateway::authoring::runner::run(
            &file,
            config.as_deref(),
            &request,
        )) {
            Ok((report, passed)) => {
                print!("{report}");
                if !passed {
                    return ExitCode::FAILURE;
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
        Command::Scenario {
            name,
            short,
            duration,
            out,
            plugins,
            hold,
        } => {
            let options = gateway::scenario::Options {
                short,
                duration,
                out: out.unwrap_or_else(|| PathBuf::from("target/scenarios").join(&name)),
                gateway: std::env::current_exe().unwrap_or_else(|_| "gateway".into()),
                plugins,
                hold,
            };
            runtime.block_on(gateway::scenario::run(&name, &options))
        }
        Command::Cache {
            command: CacheCommand::Prune { dir, unused_for },
        } => gateway::app::prune_cache(
            dir,
            std::time::Duration::from_secs(unused_for.saturating_mul(86_400)),
        )
        .map(|msg| println!("{msg}")),
        Command::Plugin {
            command:
                PluginCommand::Pull {
                    reference,
                    dir,
                    name,
                    plain_http,
                },
        } => pull_plugin(&runtime, &reference, &dir, name.as_str(), plain_http),
        Command::Plugin {
            command: PluginCommand::Componentize { module, out },
        } => gateway::app::componentize_file(&module, &out)
            .map(|()| println!("{} written", out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `gateway plugin pull`: fetched on the runtime, checked and written
/// outside it (loading a component to check it blocks).
fn pull_plugin(
    runtime: &tokio::runtime::Runtime,
    reference: &gateway::plugin::oci::Reference,
    dir: &std::path::Path,
    name: &str,
    plain_http: bool,
) -> anyhow::Result<()> {
    use gateway::plugin::oci;
    // Before any download, so a mistyped folder costs nothing.
    anyhow::ensure!(
        dir.is_dir(),
        "{} is not a folder; pass the plugin folder (`[plugins] dir`)",
        dir.display()
    );
    let credentials = match (
        std::env::var("GATEWAY_REGISTRY_USER"),
        std::env::var("GATEWAY_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => Some((user, password)),
        _ => None,
    };
    let options = oci::PullOptions {
        plain_http,
        credentials,
    };
    let pulled = runtime.block_on(oci::fetch(reference, &options))?;
    let written =
        oci::install(
            dir,
            name,
            &pulled.bytes,
            |temp| match gateway::app::check_plugin_file(temp) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(why)) => Err(format!("{reference}: {why}")),
                Err(e) => Err(format!("{reference}: cannot check the plugin: {e:#}")),
            },
        )?;
    println!(
        "{}  {} ({} bytes, {})",
        pulled.sha256,
        written.display(),
        pulled.bytes.len(),
        pulled.media_type
    );
    println!("sha256 = \"{}\"", pulled.sha256);
    Ok(())
}
