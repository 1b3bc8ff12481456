//! Listening sockets a supervisor opened for the gateway and handed over
//! at start: systemd's socket activation protocol (`LISTEN_FDS`, and
//! `LISTEN_FDNAMES` naming each socket `server`, `admin`, `echo`,
//! `redirect` or `tcp`). A section with an inherited socket serves on it
//! instead of binding its `listen` address, so a restart never races
//! another process for the port. `tcp` sockets, any number of them, serve
//! the TCP routes whose `listen` is their address, at start or when a
//! reload adds such a route.

use std::net::TcpListener;

/// The sockets handed over, by the section they serve.
#[derive(Default)]
pub struct Inherited {
    pub server: Option<TcpListener>,
    pub admin: Option<TcpListener>,
    pub echo: Option<TcpListener>,
    pub redirect: Option<TcpListener>,
    pub tcp: Vec<TcpListener>,
}

impl Inherited {
    /// Takes the sockets the environment announces (`listenfd` clears
    /// `LISTEN_FDS` so no child process inherits the announcement). Call it
    /// before any other thread starts: it changes the environment.
    pub fn from_env() -> Result<Inherited, String> {
        let names = std::env::var("LISTEN_FDNAMES").ok();
        let mut fds = listenfd::ListenFd::from_env();
        let names: Vec<String> = match names {
            Some(n) => n.split(':').map(str::to_string).collect(),
            None if fds.len() == 0 => return Ok(Inherited::default()),
            // Unnamed, the first socket is the proxy's, as a supervisor
            // handing over one socket means it.
            None => vec!["server".to_string()],
        };
        let mut inherited = Inherited::default();
        for (i, name) in names.iter().enumerate().take(fds.len()) {
            let listener = fds
                .take_tcp_listener(i)
                .map_err(|e| format!("inherited socket {i} (`{name}`): {e}"))?
                .ok_or_else(|| format!("inherited socket {i} (`{name}`) is missing"))?;
            if name == "tcp" {
                inherited.tcp.push(listener);
                continue;
            }
            let slot = match name.as_str() {
                "server" => &mut inherited.server,
                "admin" => &mut inherited.admin,
                "echo" => &mut inherited.echo,
                "redirect" => &mut inherited.redirect,
                other => {
                    return Err(format!(
                        "inherited socket {i} is named `{other}`; LISTEN_FDNAMES names are server, admin, echo, redirect and tcp"
                    ));
                }
            };
            if slot.replace(listener).is_some() {
                return Err(format!("LISTEN_FDNAMES names `{name}` twice"));
            }
        }
        Ok(inherited)
    }
}

/// The inherited socket for a section, made async, or a fresh one bound on
/// `addr`; `what` names the section in errors.
pub fn listen(
    inherited: Option<TcpListener>,
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    match inherited {
        Some(l) => adopt(l).with_context(|| format!("cannot use the inherited socket for {what}")),
        None => bind(addr).with_context(|| format!("cannot listen on {addr} for {what}")),
    }
}

/// A socket handed over at start, made async.
pub fn adopt(listener: TcpListener) -> std::io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// A fresh listening socket on `addr`: `SO_REUSEADDR`, so a restart binds
/// while the last run's connections wait out TIME_WAIT, and a backlog of
/// 1024 (the kernel caps it at `net.core.somaxconn`), so a burst of
/// connections queues rather than is dropped. tokio's own `bind` would
/// give 128.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// `TCP_NODELAY` on a listening socket: Linux gives it to every connection
/// accepted there, which saves a system call per connection. Small writes
/// (a database's requests, a TLS handshake's records) go out at once
/// rather than wait for the previous one's acknowledgement.
pub fn no_delay(listener: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_nodelay(true)
}

/// The pause after a failed accept (out of file descriptors, say), so the
/// loop waits for connections to close instead of spinning.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Accepts the next connection. When accepting fails (out of file
/// descriptors and the like) it backs off instead of spinning.
pub async fn accept(
    listener: &tokio::net::TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
