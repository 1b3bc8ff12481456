//! TLS termination on the proxy listener: the handshake, why one failed,
//! and what a finished one tells requests (version, ALPN, the client
//! certificate's subject and names).
//!
//! The rustls configuration, the certificates and their choice by SNI are
//! built with the configuration (`config::tls`), so a certificate it
//! cannot use is refused at its line.
//! A reload makes a new [`Terminator`]; connections accepted from then on
//! handshake with it while open ones keep theirs.

use crate::config::{LoadedCertificate, LoadedTls};
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// Why a handshake failed, as `gateway_tls_handshake_failures_total`
/// labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No ClientHello finished within `header_read_timeout`.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// No TLS version, cipher suite or ALPN protocol in common (TLS 1.1
    /// and older land here).
    Incompatible,
    /// Bytes that are not TLS: a plaintext request to the TLS port, say.
    NotTls,
    /// Client certificates are required and none was sent.
    NoClientCertificate,
    /// The client's certificate does not chain to `client_ca_file`, or has
    /// expired.
    BadClientCertificate,
    /// The client gave up on the server's certificate (an alert): it does
    /// not trust the CA, or the name does not match.
    RefusedByClient,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::Incompatible,
        HandshakeFailure::NotTls,
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::BadClientCertificate,
        HandshakeFailure::RefusedByClient,
        HandshakeFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::NotTls => "not-tls",
            HandshakeFailure::NoClientCertificate => "no-client-certificate",
            HandshakeFailure::BadClientCertificate => "bad-client-certificate",
            HandshakeFailure::RefusedByClient => "refused-by-client",
            HandshakeFailure::Other => "other",
        }
    }

    fn of(e: &io::Error) -> HandshakeFailure {
        use rustls::Error as E;
        match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
            Some(E::PeerIncompatible(_)) | Some(E::NoApplicationProtocol) => {
                HandshakeFailure::Incompatible
            }
            Some(E::InvalidMessage(_)) => HandshakeFailure::NotTls,
            Some(E::NoCertificatesPresented) => HandshakeFailure::NoClientCertificate,
            Some(E::InvalidCertificate(_)) => HandshakeFailure::BadClientCertificate,
            Some(E::AlertReceived(_)) => HandshakeFailure::RefusedByClient,
            Some(_) => HandshakeFailure::Other,
            None => match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                _ => HandshakeFailure::Other,
            },
        }
    }
}

/// What a client's handshake settled, fixed for its connection and handed
/// to every request on it.
#[derive(Debug, Default)]
pub struct Session {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// `h2`, `http/1.1`, or `-` when the client offered no ALPN.
    pub alpn: &'static str,
    /// The verified client certificate's subject (RFC 4514 form) and
    /// subject alternative names (`DNS:…`, `URI:…`, `email:…`, `IP:…`).
    pub client: Option<ClientIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub subject: String,
    pub san: Vec<String>,
}

/// Handshakes client connections with one configuration's certificates.
pub struct Terminator {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Label and end (Unix seconds) of each certificate, for the expiry gauge.
    pub certificates: Vec<(String, i64)>,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("certificates", &self.certificates)
            .finish()
    }
}

impl Terminator {
    pub fn new(loaded: &LoadedTls) -> Terminator {
        let certificates = std::iter::once(&loaded.default)
            .chain(&loaded.sni)
            .flat_map(|c| expiry_series(c))
            .collect();
        Terminator {
            acceptor: tokio_rustls::TlsAcceptor::from(loaded.server_config.clone()),
            certificates,
        }
    }

    /// Runs the server side of a handshake on `stream`. The caller keeps it
    /// to a deadline.
    pub async fn handshake<S>(&self, stream: S) -> Result<(TlsStream<S>, Session), HandshakeFailure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self
            .acceptor
            .accept(stream)
            .await
            .map_err(|e| HandshakeFailure::of(&e))?;
        let (_, conn) = tls.get_ref();
        let session = Session {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "other",
            },
            alpn: match conn.alpn_protocol() {
                Some(b"h2") => "h2",
                Some(b"http/1.1") => "http/1.1",
                _ => "-",
            },
            client: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| client_identity(leaf)),
        };
        Ok((tls, session))
    }
}

/// One expiry series per name a certificate is presented for, so an alert
/// names the host whose certificate is ending.
fn expiry_series(c: &LoadedCertificate) -> Vec<(String, i64)> {
    if c.names.is_empty() {
        return vec![(c.label.clone(), c.not_after)];
    }
    c.names
        .iter()
        .map(|n| (n.to_string(), c.not_after))
        .collect()
}

/// The client certificate's subject and alternative names, as filters and
/// the access log see them.
fn client_identity(leaf: &rustls::pki_types::CertificateDer<'_>) -> Option<ClientIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let san = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                    GeneralName::URI(u) => Some(format!("URI:{u}")),
                    GeneralName::RFC822Name(m) => Some(format!("email:{m}")),
                    GeneralName::IPAddress(ip) => ip_text(ip).map(|ip| format!("IP:{ip}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ClientIdentity {
        subject: rfc4514(cert.subject()),
        san,
    })
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,`
/// between RDNs, `+` inside one, and the characters it names escaped, so
/// a filter compares the same text `openssl x509 -nameopt RFC2253` shows.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<_> = name.iter_rdn().collect();
    rdns.iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let key = x509_parser::objects::oid2abbrev(a.attr_type(), registry)
                        .map_or_else(|_| a.attr_type().to_id_string(), str::to_string);
                    let value = match a.as_str() {
                        Ok(s) => escape_rfc4514(s),
                        // Not a string type: the value's BER as hex.
                        Err(_) => {
                            let hex: String = a
                                .attr_value()
                                .as_bytes()
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            format!("#{hex}")
                        }
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn escape_rfc4514(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_written_last_rdn_first_with_specials_escaped() {
        assert_eq!(escape_rfc4514("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape_rfc4514(" #lead"), "\\ #lead");
        assert_eq!(escape_rfc4514("trail "), "trail\\ ");
        assert_eq!(escape_rfc4514("a+b=c"), "a\\+b=c");
        assert_eq!(escape_rfc4514("nl\n"), "nl\\0a");
    }
}
