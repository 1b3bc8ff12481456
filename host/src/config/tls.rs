//! `[server.tls]`: the certificates the proxy listener presents, chosen by
//! the name the client asks for (SNI), and the client certificates it asks
//! for. The PEM files are read and checked while the configuration is
//! read, so a missing file, a key that is not the certificate's, or a
//! certificate past its end is refused at the line that names it, by
//! `gateway check` and by a reload alike, and the running configuration
//! keeps serving its own certificates.

use super::{ConfigError, HostPattern, ServerNames, Source};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The one cryptography provider of the whole binary: *ring*, which the
/// gateway links already for the signature checks it lends filters, and
/// which builds with no C toolchain beyond the compiler (aws-lc-rs needs
/// CMake and a longer build on every fresh machine).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM, leaf first) presented when no `sni`
    /// entry names what the client asked for, or it asked for nothing.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Certificates chosen by the name the client asks for.
    #[serde(default)]
    pub sni: Vec<SniCertificate>,
    /// The CAs client certificates must chain to; with it the listener asks
    /// every client for a certificate.
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client without a certificate is let in (`optional`) or
    /// refused in the handshake (`required`, the default with a CA file).
    pub client_auth: Option<ClientAuth>,
    /// A plaintext listener that answers every request with a permanent
    /// redirect to the same URL over https.
    pub redirect_listen: Option<SocketAddr>,
    /// What the files held, read and checked with the configuration.
    #[serde(skip)]
    pub loaded: Option<LoadedTls>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Names this certificate is presented for: `api.example.com`, or
    /// `*.example.com` for any one label before `example.com`.
    pub names: Vec<HostPattern>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Optional,
    Required,
}

/// The certificates and client CAs as read from their files.
#[derive(Clone)]
pub struct LoadedTls {
    pub default: Arc<LoadedCertificate>,
    /// In the order written; the first entry naming a host wins.
    pub sni: Vec<Arc<LoadedCertificate>>,
    /// Client certificates are asked for when present.
    pub client_roots: Option<Arc<RootCertStore>>,
    pub client_auth: ClientAuth,
    /// Every file read, for the watcher: a changed certificate reloads.
    pub files: ReadFiles,
    /// What the listener handshakes with.
    pub server_config: Arc<ServerConfig>,
}

/// A certificate chain with its key, ready to present.
pub struct LoadedCertificate {
    /// `default`, or the first name of its `sni` entry: the label of its
    /// expiry metric.
    pub label: String,
    pub names: Vec<HostPattern>,
    pub key: Arc<CertifiedKey>,
    /// When the leaf certificate ends, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<&str> = std::iter::once(&self.default)
            .chain(&self.sni)
            .map(|c| c.label.as_str())
            .collect();
        f.debug_struct("LoadedTls")
            .field("certificates", &labels)
            .field(
                "client_auth",
                &self.client_roots.as_ref().map(|_| self.client_auth),
            )
            .finish()
    }
}

/// The PEM files a TLS section read, and what they held.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadFiles {
    pub paths: Vec<PathBuf>,
    contents: Vec<Vec<u8>>,
}

impl ReadFiles {
    /// A PEM file's bytes, kept. Over 1 MiB is refused: no certificate
    /// chain or key is that large, and the file is read on every reload.
    fn read(
        &mut self,
        src: &Source<'_>,
        at: &[&str],
        table: &str,
        path: &Path,
    ) -> Result<&[u8], ConfigError> {
        const MAX_PEM_BYTES: u64 = 1024 * 1024;
        let key = at.last().copied().unwrap_or_default();
        let too_big = std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_PEM_BYTES);
        src.require(!too_big, at, || {
            format!(
                "{table} {key} {} is over 1 MiB; it must be a PEM file",
                path.display()
            )
        })?;
        let bytes = std::fs::read(path).map_err(|e| {
            src.error_key(
                at,
                format!(
                    "{table} {key} {} cannot be read ({e}); fix the path (relative to the config file)",
                    path.display()
                ),
            )
        })?;
        self.paths.push(path.to_path_buf());
        self.contents.push(bytes);
        Ok(self.contents.last().map_or(&[], Vec::as_slice))
    }
}

/// Equal when the same files held the same bytes under the same client
/// authentication (the names each certificate is for are the section's
/// own): what a reload compares.
impl PartialEq for LoadedTls {
    fn eq(&self, other: &LoadedTls) -> bool {
        self.files == other.files && self.client_auth == other.client_auth
    }
}

impl TlsConfig {
    /// Reads and checks every file the section names; `base_dir` is the
    /// config file's directory, which relative paths start from.
    pub(super) fn load(&mut self, src: &Source<'_>, base_dir: &Path) -> Result<(), ConfigError> {
        let at = |key: &str| ["server", "tls", key].map(str::to_string).to_vec();
        let mut files = ReadFiles::default();
        let default = load_certificate(
            src,
            base_dir,
            "default".to_string(),
            Vec::new(),
            (&self.cert_file, &at("cert_file")),
            (&self.key_file, &at("key_file")),
            &mut files,
        )?;
        let mut sni = Vec::new();
        let mut seen: Vec<(&HostPattern, usize)> = Vec::new();
        for (i, entry) in self.sni.iter().enumerate() {
            let entry_at = |key: &str| {
                ["server", "tls", "sni", &i.to_string(), key]
                    .map(str::to_string)
                    .to_vec()
            };
            src.require(!entry.names.is_empty(), &as_refs(&entry_at("names")), || {
                format!("[[server.tls.sni]] entry {i} names no host; list the names its certificate is for, like [\"api.example.com\"]")
            })?;
            for (n, name) in entry.names.iter().enumerate() {
                if let Some((_, first)) = seen.iter().find(|(s, _)| *s == name) {
                    let mut name_at = entry_at("names");
                    name_at.push(n.to_string());
                    return Err(src.error_key(
                        &as_refs(&name_at),
                        format!(
                            "[[server.tls.sni]] entry {i} names {}, which entry {first} names already; each name gets one certificate",
                            name
                        ),
                    ));
                }
                seen.push((name, i));
            }
            sni.push(load_certificate(
                src,
                base_dir,
                entry.names[0].to_string(),
                entry.names.clone(),
                (&entry.cert_file, &entry_at("cert_file")),
                (&entry.key_file, &entry_at("key_file")),
                &mut files,
            )?);
        }
        let client_roots = match &self.client_ca_file {
            Some(ca) => Some(load_roots(
                src,
                &["server", "tls", "client_ca_file"],
                &base_dir.join(ca),
                &mut files,
            )?),
            None => {
                src.require(
                    self.client_auth.is_none(),
                    &["server", "tls", "client_auth"],
                    || "[server.tls] client_auth needs client_ca_file, the CAs client certificates must chain to".into(),
                )?;
                None
            }
        };
        let client_auth = self.client_auth.unwrap_or(ClientAuth::Required);
        let server_config = server_config(&default, &sni, client_roots.as_ref(), client_auth)
            .map_err(|e| src.error_key(&["server", "tls"], format!("[server.tls] {e}")))?;
        self.loaded = Some(LoadedTls {
            server_config,
            default,
            sni,
            client_roots,
            client_auth,
            files,
        });
        Ok(())
    }
}

/// ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The rustls configuration of the listener: TLS 1.3 and 1.2 only, ALPN
/// `h2` then `http/1.1`, the certificate chosen by SNI, client
/// certificates verified against `client_roots` when given.
fn server_config(
    default: &LoadedCertificate,
    sni: &[Arc<LoadedCertificate>],
    client_roots: Option<&Arc<RootCertStore>>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, String> {
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("cannot offer TLS 1.2 and 1.3 ({e})"))?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider);
            let verifier = match client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| {
                format!("cannot verify client certificates with client_ca_file ({e})")
            })?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Resolver::new(default, sni)));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // The process's, not a configuration's: a client resumes its session
    // across reloads.
    config.session_storage = session_cache();
    config.ticketer = ticketer()?;
    Ok(Arc::new(config))
}

fn session_cache() -> Arc<dyn rustls::server::StoresServerSessions> {
    static CACHE: OnceLock<Arc<dyn rustls::server::StoresServerSessions>> = OnceLock::new();
    CACHE
        .get_or_init(|| rustls::server::ServerSessionMemoryCache::new(16 * 1024))
        .clone()
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let made =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    Ok(TICKETER.get_or_init(|| made).clone())
}

/// Chooses the certificate for the name in the ClientHello: an exact name
/// first, then a `*.` name for its parent domain (one label, as a wildcard
/// certificate covers), else the default.
#[derive(Debug)]
struct Resolver {
    names: ServerNames<Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl Resolver {
    fn new(default: &LoadedCertificate, sni: &[Arc<LoadedCertificate>]) -> Resolver {
        let mut names = ServerNames::default();
        for c in sni {
            for name in &c.names {
                names.insert(name, c.key.clone());
            }
        }
        Resolver {
            names,
            default: default.key.clone(),
        }
    }

    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        server_name
            .and_then(|n| self.names.get(n))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// `[upstreams.NAME.tls]`, or `tls = true`: TLS to the instances, their
/// certificates verified against the system's CAs or `ca_file`, always
/// (a gateway that skips verification is a gateway anyone on the path can
/// answer for).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTlsConfig {
    /// PEM CAs the instances' certificates must chain to; the system's
    /// roots when absent.
    pub ca_file: Option<PathBuf>,
    /// The name sent by SNI and verified against the certificate; the
    /// instance's host (a name or an IP address) when absent.
    pub server_name: Option<String>,
    /// A client certificate chain and its key, for instances that ask for
    /// one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// What the files held, read and checked with the configuration.
    pub loaded: Option<LoadedUpstreamTls>,
}

/// The table form, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamTlsTable {
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for UpstreamTlsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UpstreamTlsConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`true` or a table with ca_file, server_name, cert_file and key_file")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<Self::Value, E> {
                if on {
                    Ok(UpstreamTlsConfig::default())
                } else {
                    Err(E::custom(
                        "tls = false is the default; leave tls out for plaintext",
                    ))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let t = UpstreamTlsTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(UpstreamTlsConfig {
                    ca_file: t.ca_file,
                    server_name: t.server_name,
                    cert_file: t.cert_file,
                    key_file: t.key_file,
                    loaded: None,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// An upstream's TLS client configuration, built from its files.
#[derive(Clone)]
pub struct LoadedUpstreamTls {
    pub client_config: Arc<rustls::ClientConfig>,
    /// `server_name`, parsed; None to use each instance's host.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Every file read, for the watcher, with its bytes, so a reload
    /// tells a renewed file from the same one.
    pub files: ReadFiles,
}

impl std::fmt::Debug for LoadedUpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedUpstreamTls")
            .field("server_name", &self.server_name)
            .field("files", &self.files.paths)
            .finish()
    }
}

impl PartialEq for LoadedUpstreamTls {
    fn eq(&self, other: &LoadedUpstreamTls) -> bool {
        self.server_name == other.server_name && self.files == other.files
    }
}

/// The CAs the system trusts (the PEM bundle or directory OpenSSL would
/// use), read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            Arc::new(roots)
        })
        .clone()
}

impl UpstreamTlsConfig {
    /// Reads and checks the files `[upstreams.NAME.tls]` names, and builds
    /// the client configuration (ALPN `h2` then `http/1.1`).
    pub(super) fn load(
        &mut self,
        src: &Source<'_>,
        name: &str,
        base_dir: &Path,
        protocol: super::UpstreamProtocol,
    ) -> Result<(), ConfigError> {
        let at = |key: &str| ["upstreams", name, "tls", key].map(str::to_string).to_vec();
        let table = format!("[upstreams.{name}.tls]");
        src.require(
            protocol != super::UpstreamProtocol::H2c,
            &["upstreams", name, "protocol"],
            || format!("upstream `{name}` has protocol = \"h2c\", which is HTTP/2 without TLS, and tls; remove protocol: over TLS, HTTP/2 is used when the instance offers it"),
        )?;
        let mut files = ReadFiles::default();
        let roots = match &self.ca_file {
            Some(ca) => load_roots(
                src,
                &as_refs(&at("ca_file")),
                &base_dir.join(ca),
                &mut files,
            )?,
            None => {
                let roots = system_roots();
                if roots.is_empty() {
                    return Err(src.error_key(
                        &["upstreams", name, "tls"],
                        format!("upstream `{name}` uses TLS, but this system has no CA certificates to verify it with; install them (ca-certificates) or set ca_file"),
                    ));
                }
                roots
            }
        };
        let server_name = match &self.server_name {
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone()).map_err(|_| {
                    src.error_key(
                        &as_refs(&at("server_name")),
                        format!("{table} server_name `{n}` is not a DNS name or an IP address"),
                    )
                })?,
            ),
            None => None,
        };
        let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| src.error_key(&["upstreams", name, "tls"], format!("{table}: {e}")))?
            .with_root_certificates(roots);
        let mut config = match (&self.cert_file, &self.key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) | (None, Some(_)) => {
                let given = if self.cert_file.is_some() {
                    "cert_file"
                } else {
                    "key_file"
                };
                return Err(src.error_key(
                    &as_refs(&at(given)),
                    format!("{table} has {given} without its pair; a client certificate needs both cert_file and key_file"),
                ));
            }
            (Some(cert), Some(key)) => {
                let loaded = load_certificate(
                    src,
                    base_dir,
                    "client".into(),
                    Vec::new(),
                    (cert, &at("cert_file")),
                    (key, &at("key_file")),
                    &mut files,
                )?;
                builder.with_client_cert_resolver(Arc::new(ClientCertificate(loaded.key.clone())))
            }
        };
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        self.loaded = Some(LoadedUpstreamTls {
            client_config: Arc::new(config),
            server_name,
            files,
        });
        Ok(())
    }
}

/// The one client certificate an upstream's connections present.
#[derive(Debug)]
struct ClientCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificates of a PEM bundle as trust anchors, or why not.
fn trust_anchors(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("is not valid PEM ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate that cannot be a CA ({e})"))?;
    }
    if roots.is_empty() {
        return Err(
            "holds no certificate; it must hold PEM CA certificates (-----BEGIN CERTIFICATE-----)"
                .into(),
        );
    }
    Ok(Arc::new(roots))
}

fn as_refs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

fn load_certificate(
    src: &Source<'_>,
    base_dir: &Path,
    label: String,
    names: Vec<HostPattern>,
    (cert_file, cert_at): (&Path, &[String]),
    (key_file, key_at): (&Path, &[String]),
    files: &mut ReadFiles,
) -> Result<Arc<LoadedCertificate>, ConfigError> {
    let cert_at = as_refs(cert_at);
    let key_at = as_refs(key_at);
    let table = table_of(&cert_at);
    let cert_path = base_dir.join(cert_file);
    let key_path = base_dir.join(key_file);
    let cert_pem = files.read(src, &cert_at, &table, &cert_path)?.to_vec();
    let key_pem = files.read(src, &key_at, &table, &key_path)?.to_vec();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            src.error_key(
                &cert_at,
                format!(
                    "{table} cert_file {} is not valid PEM ({e})",
                    cert_path.display()
                ),
            )
        })?;
    if chain.is_empty() {
        return Err(src.error_key(
            &cert_at,
            format!(
                "{table} cert_file {} holds no certificate; it must hold a PEM chain (-----BEGIN CERTIFICATE-----), the server's certificate first",
                cert_path.display()
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let what = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no private key".to_string(),
            e => format!("is not valid PEM ({e})"),
        };
        src.error_key(
            &key_at,
            format!(
                "{table} key_file {} {what}; it must hold one PEM key (PKCS#8, PKCS#1 or SEC1)",
                key_path.display()
            ),
        )
    })?;
    let not_after = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            src.error_key(
                &cert_at,
                format!(
                    "{table} cert_file {}: the first certificate cannot be read ({e})",
                    cert_path.display()
                ),
            )
        })?;
        leaf.validity().not_after.timestamp()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after <= now {
        let ended = std::time::UNIX_EPOCH + std::time::Duration::from_secs(not_after.max(0) as u64);
        return Err(src.error_key(
            &cert_at,
            format!(
                "{table} cert_file {}: the certificate ended at {}; renew it",
                cert_path.display(),
                humantime::format_rfc3339_seconds(ended)
            ),
        ));
    }
    let key = CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "is not the key of the certificate in cert_file {}; give the key the certificate was issued for",
                cert_path.display()
            ),
            e => format!("cannot be used ({e}); use an RSA, ECDSA P-256/P-384 or Ed25519 key"),
        };
        src.error_key(
            &key_at,
            format!("{table} key_file {} {why}", key_path.display()),
        )
    })?;
    Ok(Arc::new(LoadedCertificate {
        label,
        names,
        key: Arc::new(key),
        not_after,
    }))
}

/// The CAs a PEM file at `path` holds (the setting at `at`), as trust
/// anchors.
fn load_roots(
    src: &Source<'_>,
    at: &[&str],
    path: &Path,
    files: &mut ReadFiles,
) -> Result<Arc<RootCertStore>, ConfigError> {
    let table = table_of(at);
    let key = at.last().copied().unwrap_or_default();
    let pem = files.read(src, at, &table, path)?;
    trust_anchors(pem)
        .map_err(|why| src.error_key(at, format!("{table} {key} {} {why}", path.display())))
}

/// `[server.tls]`, `[[server.tls.sni]]` or `[upstreams.NAME.tls]`, for
/// the key path of a setting.
fn table_of(path: &[&str]) -> String {
    if let ["upstreams", name, ..] = path {
        format!("[upstreams.{name}.tls]")
    } else if path.contains(&"sni") {
        "[[server.tls.sni]]".into()
    } else {
        "[server.tls]".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u8) -> Arc<CertifiedKey> {
        // The resolver only hands keys back; which one is told by the
        // certificate bytes, so a signing key is never used here.
        #[derive(Debug)]
        struct NoKey;
        impl rustls::sign::SigningKey for NoKey {
            fn choose_scheme(
                &self,
                _: &[rustls::SignatureScheme],
            ) -> Option<Box<dyn rustls::sign::Signer>> {
                None
            }
            fn algorithm(&self) -> rustls::SignatureAlgorithm {
                rustls::SignatureAlgorithm::ECDSA
            }
        }
        Arc::new(CertifiedKey::new(
            vec![rustls::pki_types::CertificateDer::from(vec![tag])],
            Arc::new(NoKey),
        ))
    }

    fn resolver() -> Resolver {
        let mut names = ServerNames::default();
        let name = |s: &str| HostPattern::try_from(s.to_string()).unwrap();
        names.insert(&name("api.example.com"), key(1));
        names.insert(&name("*.example.com"), key(2));
        Resolver {
            names,
            default: key(0),
        }
    }

    fn chosen(r: &Resolver, name: Option<&str>) -> u8 {
        r.choose(name).cert[0].as_ref()[0]
    }

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_cover_one_label() {
        let r = resolver();
        assert_eq!(chosen(&r, Some("api.example.com")), 1);
        assert_eq!(chosen(&r, Some("API.Example.com.")), 1);
        assert_eq!(chosen(&r, Some("www.example.com")), 2);
        // Two labels deep: a wildcard certificate does not cover it.
        assert_eq!(chosen(&r, Some("a.b.example.com")), 0);
        assert_eq!(chosen(&r, Some("example.com")), 0);
        assert_eq!(chosen(&r, Some("other.org")), 0);
        assert_eq!(chosen(&r, None), 0);
    }
}
