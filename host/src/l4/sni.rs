//! Routing TLS by the server name of the client's ClientHello, without
//! terminating: the hello is read and parsed (by rustls's `Acceptor`, which
//! only reads it), kept, and sent on to the chosen service first, so the
//! service completes the handshake with the client itself.

use crate::telemetry::tcp::Refusal;
use tokio::net::TcpStream;

/// The most a ClientHello may take: a hello with post-quantum key shares
/// and many extensions is a few KiB; this leaves room and still bounds
/// what an idle client makes the gateway hold.
const MAX_HELLO_BYTES: usize = 64 * 1024;

/// Reads the client's ClientHello into `hello` and returns the server name
/// it asks for (None when it names none). Every byte read is left in
/// `hello`, to be sent on before anything else.
pub async fn read_client_hello(
    stream: &TcpStream,
    hello: &mut Vec<u8>,
) -> Result<Option<String>, Refusal> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        if stream.readable().await.is_err() {
            return Err(Refusal::BadClientHello);
        }
        let n = match stream.try_read(&mut chunk) {
            Ok(0) => return Err(Refusal::BadClientHello),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Refusal::BadClientHello),
        };
        hello.extend_from_slice(&chunk[..n]);
        if hello.len() > MAX_HELLO_BYTES {
            return Err(Refusal::BadClientHello);
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh).is_err() {
                return Err(Refusal::BadClientHello);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                return Ok(accepted.client_hello().server_name().map(str::to_string));
            }
            Err(_) => return Err(Refusal::BadClientHello),
        }
    }
}

/// A fatal TLS alert record: `unrecognized_name` (112) for a name no route
/// takes, so the client reads why rather than a bare close; a TLS 1.0
/// record version, which every client accepts before the handshake.
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 112];
