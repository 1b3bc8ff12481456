//! The gateway's commands, composed from the modules: `run` starts the
//! listeners, the reloader, the watcher and the signal handlers and drains
//! on shutdown; `check` and the plugin commands load and stop. `main.rs`
//! parses the command line and calls these.

use crate::assemble::{self, PluginCache};
use crate::config::{ConfigSource, MetricsConfig};
use crate::listeners::{Inherited, listen};
use crate::plugin::Runtime;
use crate::reload::Reloader;
use crate::state::State;
use crate::telemetry::Metrics;
use anyhow::Context;
use std::sync::Arc;

/// `gateway check`: parse, validate and load every plugin, then stop.
pub async fn check(source: &ConfigSource) -> anyhow::Result<String> {
    let config = source.load()?;
    let metrics = Arc::new(Metrics::new(&config.metrics.duration_buckets)?);
    let state = Arc::new(State::from_config(&config.state, metrics.clone()));
    let mut runtime = Runtime::with_state(metrics.clone(), state)?;
    if let Some(dir) = config.compile_cache_dir() {
        runtime.use_compile_cache(&dir);
    }
    let routes = config.routes.len();
    let warning = config.admin.as_ref().and_then(|a| {
        let token = a.token(|k| std::env::var(k).ok());
        a.exposure_warning(token.as_deref())
    });
    let mut cache = PluginCache::default();
    let (gw, _) = assemble::build(config, &runtime, metrics, &mut cache, None).await?;
    let mut report = format!(
        "configuration OK: {} routes, {} filters loaded",
        routes,
        gw.filters.len()
    );
    if let Some(w) = warning {
        report = format!("warning: {w}\n{report}");
    }
    Ok(report)
}

/// `gateway plugin check FILE`: whether the file is a filter this gateway
/// can load. `Ok` describes it; `Err` says what is missing or mismatched.
pub fn check_plugin_file(path: &std::path::Path) -> anyhow::Result<Result<String, String>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Ok(Err(format!("cannot read {}: {e}", path.display()))),
    };
    let metrics = Arc::new(Metrics::new(&MetricsConfig::default().duration_buckets)?);
    let mut runtime = Runtime::new(metrics)?;
    if let Some(dir) = crate::plugin::compile_cache::default_dir() {
        runtime.use_compile_cache(&dir);
    }
    Ok(match runtime.check_plugin(&bytes) {
        Ok(fit) => Ok(format!("{}: {fit}", path.display())),
        Err(why) => Err(format!("{} is not a filter plugin: {why}", path.display())),
    })
}

/// `gateway plugin componentize MODULE -o OUT`: a core module (binary or
/// WAT) written against the world `plugin`, made a component.
pub fn componentize_file(module: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    let component = crate::plugin::inspect::componentize(&bytes)
        .map_err(|why| anyhow::anyhow!("{}: {why}", module.display()))?;
    std::fs::write(out, component).with_context(|| format!("cannot write {}", out.display()))
}

/// `gateway cache prune`: removes compiled plugins this gateway cannot load
/// and those not used for `unused_for`, from `dir` (by default the one
/// `[plugins]` uses when it names none).
pub fn prune_cache(
    dir: Option<std::path::PathBuf>,
    unused_for: std::time::Duration,
) -> anyhow::Result<String> {
    let dir = dir
        .or_else(crate::plugin::compile_cache::default_dir)
        .context("no cache directory: set XDG_CACHE_HOME or HOME, or pass --dir")?;
    if !dir.exists() {
        return Ok(format!("{}: no compile cache here", dir.display()));
    }
    let metrics = Arc::new(Metrics::new(&MetricsConfig::default().duration_buckets)?);
    let runtime = Runtime::new(metrics)?;
    let cache = crate::plugin::compile_cache::CompileCache::open(&dir, runtime.engine())
        .map_err(anyhow::Error::msg)?;
    let (files, bytes) = cache
        .prune(unused_for)
        .with_context(|| format!("cannot prune {}", dir.display()))?;
    Ok(format!(
        "{}: removed {files} entries, {:.1} MB",
        dir.display(),
        bytes as f64 / 1e6
    ))
}

/// `gateway drain`: asks the gateway at `admin` to drain, then waits
/// `wait` so load balancers see `/ready` fail before it is stopped.
pub async fn drain(admin: &str, wait: std::time::Duration) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = std::env::var("GATEWAY_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect(admin).await?;
        conn.write_all(
            format!(
                "POST /admin/drain HTTP/1.1\r\nHost: {admin}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut answer = Vec::new();
        conn.take(64 * 1024).read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{admin} did not answer within 10 s"))?
        .with_context(|| format!("cannot reach the admin listener at {admin}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        anyhow::bail!(
            "{admin} refused to drain ({}): {body}",
            answer.lines().next().unwrap_or("no answer")
        );
    }
    tokio::time::sleep(wait).await;
    Ok(format!(
        "{admin} is draining (/ready answers 503); waited {wait:?}"
    ))
}

/// `gateway run`: serve until SIGTERM or SIGINT, then drain; reload on
/// file changes, SIGHUP and `POST /admin/reload`.
pub async fn run(source: ConfigSource, inherited: Inherited) -> anyhow::Result<()> {
    let config = source.load()?;
    let metrics = Arc::new(Metrics::new(&config.metrics.duration_buckets)?);
    let state = Arc::new(State::from_config(&config.state, metrics.clone()));
    tracing::info!("plugin state in {}", state.backend());
    tokio::spawn({
        let state = state.clone();
        async move { state.warm().await }
    });
    let mut runtime = Runtime::with_state(metrics.clone(), state)?;
    if let Some(dir) = config.compile_cache_dir() {
        runtime.use_compile_cache(&dir);
    }
    let runtime = Arc::new(runtime);
    metrics.start_outputs(&config)?;
    let server_listen = config.server.listen;
    let workers = config.server.worker_count();
    let grace = config.server.shutdown_grace.0;
    let drain_delay = config.server.drain_delay.0;
    let admin_listen = config.admin.as_ref().map(|a| a.listen);
    let admin_token = config
        .admin
        .as_ref()
        .and_then(|a| a.token(|k| std::env::var(k).ok()));
    if let Some(warning) = config
        .admin
        .as_ref()
        .and_then(|a| a.exposure_warning(admin_token.as_deref()))
    {
        tracing::warn!("{warning}");
    }
    let echo_listen = config.echo.as_ref().map(|e| e.listen);
    let redirect_listen = config.server.tls.as_ref().and_then(|t| t.redirect_listen);

    // The echo upstream starts first so the gateway never forwards to a
    // port nobody has opened yet.
    if let Some(addr) = echo_listen {
        let l = listen(inherited.echo, addr, "[echo]")?;
        tracing::info!("echo upstream on {}", l.local_addr()?);
        tokio::spawn(crate::echo::serve(l));
    }
    // The admin listener answers from the start: `starting` while the
    // plugins compile, so `/ready` can be polled meanwhile.
    let (loaded, loading) = tokio::sync::oneshot::channel();
    let early_admin = match admin_listen {
        Some(addr) => {
            let l = listen(inherited.admin, addr, "[admin]")?;
            tracing::info!("admin listening on {}", l.local_addr()?);
            let server = config.server.clone();
            Some(tokio::spawn(async move {
                crate::admin::while_starting(l, &server, loading).await
            }))
        }
        None => None,
    };
    let reloader = Reloader::start(
        source,
        config,
        runtime.clone(),
        metrics.clone(),
        inherited.tcp,
    )
    .await?;
    let shared = reloader.shared.clone();
    let _ = loaded.send(());
    if let Some(early) = early_admin {
        let l = early.await.context("the admin listener's start-up task")?;
        let access = crate::admin::Access {
            token: admin_token,
            loopback: l.local_addr()?.ip().is_loopback(),
        };
        tokio::spawn(crate::admin::serve(
            l,
            crate::admin::Admin::new(reloader.clone(), access),
        ));
    }

    let listener = listen(inherited.server, server_listen, "[server]")?;
    let https_port = listener.local_addr()?.port();
    tracing::info!("gateway listening on {}", listener.local_addr()?);
    let redirects = match redirect_listen {
        Some(addr) => {
            let l = listen(inherited.redirect, addr, "[server.tls] redirect_listen")?;
            tracing::info!("redirecting to https on {}", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let (watching, watched) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(reloader.clone().watch(watching));
    // Serving (and so `/ready`) waits for the files to be watched, so an
    // edit made as soon as the gateway answers is taken up.
    let _ = watched.await;
    let hangups = {
        let reloader = reloader.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading");
                let _ = reloader.reload("sighup").await;
            }
        })
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signals = {
        let shared = shared.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let name = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
            shared.stopping.store(true, Ordering::Relaxed);
            let drained_already = shared.draining.swap(true, Ordering::Relaxed);
            if !drained_already && !drain_delay.is_zero() {
                // Still serving while the balancer sees `/ready` fail; a
                // second signal cuts the wait short.
                tracing::info!(
                    "{name} received; /ready fails for {drain_delay:?} before the listener closes"
                );
                tokio::select! {
                    _ = tokio::time::sleep(drain_delay) => {}
                    _ = term.recv() => tracing::info!("SIGTERM again; closing now"),
                    _ = int.recv() => tracing::info!("SIGINT again; closing now"),
                }
            } else {
                tracing::info!("{name} received; draining");
            }
            let _ = stop_tx.send(true);
        })
    };
    if let Some(l) = redirects {
        tokio::spawn(crate::redirect::serve(
            l,
            https_port,
            shared.clone(),
            stop_rx.clone(),
        ));
    }
    tracing::info!("{workers} worker thread(s) serving connections");
    // TCP routes drain beside the HTTP connections, under the same grace.
    let tcp = {
        let tcp = reloader.tcp.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            tcp.shutdown(grace).await
        })
    };
    crate::server::serve(listener, workers, shared, stop_rx, grace)
        .await
        .context("cannot start the worker threads")?;
    let _ = tcp.await;
    signals.abort();
    hangups.abort();
    watcher.abort();
    drop(reloader);
    drop(runtime);
    if let Some(log) = metrics.access_log.get() {
        log.flush(std::time::Duration::from_secs(2));
    }
    // Queued spans go out before the process ends.
    if metrics.tracing.get().is_some() {
        let m = metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = m.tracing.get() {
                t.shutdown()
            }
        })
        .await;
    }
    Ok(())
}
