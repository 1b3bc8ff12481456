//! The `gateway` command.

use clap::{Parser, Subcommand};
use gateway::config::ConfigSource;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "An API gateway whose request filters are WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration (default: config/gateway.toml, or the copy
    /// built into the binary when that file is absent).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Parse and validate a configuration and load every plugin, then exit.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Work with plugin files.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Say whether FILE is a component this gateway can load as a filter,
    /// and if not, what is missing or mismatched. Exits 1 when it is not.
    Check { file: PathBuf },
    /// Make a core module (.wasm or .wat) written against the world
    /// `plugin` in wit/filter.wit into a component.
    Componentize {
        module: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
    },
}

const DEFAULT_CONFIG: &str = "config/gateway.toml";

fn source(path: Option<PathBuf>) -> ConfigSource {
    match path {
        Some(p) => ConfigSource::File(p),
        None if std::path::Path::new(DEFAULT_CONFIG).is_file() => {
            ConfigSource::File(DEFAULT_CONFIG.into())
        }
        None => ConfigSource::Embedded,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; a file or a collector
        // gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
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
