//! `gateway plugin pull`: a plugin fetched from an OCI registry by digest
//! and written whole into the plugin folder.
//!
//! Only digests are accepted: a tag can be moved to other content, a digest
//! names one manifest, whose bytes are checked against it, and the manifest
//! names the layer by its digest and size, which the blob is checked
//! against. So what lands in the folder is what the digest named, or
//! nothing. The file's SHA-256 is the layer digest's hex: what a filter
//! pins with `sha256 = "…"`.
//!
//! One HTTP/1.1 connection per request, over rustls with the system's CAs
//! (or plain TCP with `--plain-http`, for a registry on loopback):
//! registries commonly answer a blob with a redirect to another host, so
//! there is little to reuse.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest plugin taken: far above any filter (the shipped ones are under
/// 1 MiB), far below what would strain the host compiling it.
pub const MAX_PLUGIN_BYTES: u64 = 64 * 1024 * 1024;
/// Largest manifest read; the distribution registry refuses larger ones.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest token answer read.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Redirects followed for one request (a blob is commonly sent to a CDN).
const MAX_REDIRECTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole exchange (headers and body): generous enough for
/// `MAX_PLUGIN_BYTES` on a slow link, short enough that a stalled registry
/// does not hang a deploy script.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(300);

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// `registry/repository@sha256:<hex>`, as parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as given.
    pub registry: String,
    pub repository: String,
    /// The manifest's SHA-256, 64 lower-case hex digits.
    pub digest_hex: String,
}

impl Reference {
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.digest_hex)
    }

    /// Where the registry's API is: Docker Hub's name is not its API host.
    fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest())
    }
}

impl std::str::FromStr for Reference {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, digest)) = s.rsplit_once('@') else {
            return Err(format!(
                "`{s}` names no digest; pull by digest (REGISTRY/REPOSITORY@sha256:<64 hex digits>, \
                 as the registry or `oras push` prints it): a tag can be moved to other content, \
                 so what a tag names today is not what it named when it was tested"
            ));
        };
        let digest_hex = parse_digest(digest).map_err(|why| format!("`{s}`: {why}"))?;
        let Some((registry, repo)) = name.split_once('/') else {
            return Err(format!(
                "`{s}` names no registry; write REGISTRY/REPOSITORY@sha256:…, e.g. ghcr.io/acme/auth@sha256:…"
            ));
        };
        // `repo:tag@digest` is what some tools print: the digest decides,
        // the tag is only a label.
        let repository = match repo.rfind(':') {
            Some(at) if !repo[at..].contains('/') => &repo[..at],
            _ => repo,
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if registry.is_empty()
            || registry.contains(|c: char| c.is_whitespace() || "@/?#".contains(c))
        {
            return Err(format!("`{s}`: `{registry}` is not a registry host"));
        }
        if repository.is_empty()
            || !repository.chars().all(valid)
            || repository.starts_with('/')
            || repository.ends_with('/')
            || repository.contains("//")
        {
            return Err(format!(
                "`{s}`: `{repository}` is not a repository name (lower-case letters, digits, `.`, `_`, `-`, `/`)"
            ));
        }
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            digest_hex,
        })
    }
}

/// `sha256:<64 hex>` → the hex, lower-case; any other algorithm is refused.
fn parse_digest(digest: &str) -> Result<String, String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!(
            "`{digest}` is not a sha256 digest; only sha256:<64 hex digits> is supported"
        ));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{digest}` is not a sha256 digest; it needs 64 hex digits"
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Plain HTTP rather than HTTPS: for a registry on loopback.
    pub plain_http: bool,
    /// `user`, `password` for the registry's token service (or its basic
    /// authentication); without, the pull is anonymous.
    pub credentials: Option<(String, String)>,
}

/// A plugin fetched and checked against its digests, not yet written.
#[derive(Debug)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// The layer's media type, as the manifest gives it.
    pub media_type: String,
    /// The SHA-256 of `bytes`, hex: the layer digest's, and what a filter
    /// pins.
    pub sha256: String,
}

/// Why a pull failed; each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}{detail}")]
    Status {
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{0}")]
    Manifest(String),
    #[error("{0}")]
    Blob(String),
    #[error("{0}")]
    Tls(String),
}

fn http_err(url: &Uri, reason: impl std::fmt::Display) -> PullError {
    PullError::Http {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// Present in an index, never in an image manifest.
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

fn is_wasm_type(media_type: &str) -> bool {
    media_type == "application/wasm" || media_type.starts_with("application/vnd.wasm.")
}

/// The layer holding the plugin: the one wasm layer of a wasm artifact
/// (`application/wasm` or `application/vnd.wasm.*`), or the only layer of
/// an image manifest that has one.
fn pick_layer<'m>(
    manifest: &'m Manifest,
    content_type: Option<&str>,
) -> Result<&'m Descriptor, String> {
    let media_type = manifest
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or(OCI_MANIFEST);
    if manifest.manifests.is_some() || media_type == OCI_INDEX || media_type == DOCKER_LIST {
        return Err(
            "the digest names an index (a list of manifests, one per platform), not a manifest; \
             pull the digest of the manifest holding the plugin"
                .to_string(),
        );
    }
    if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
        return Err(format!(
            "the manifest's media type is {media_type}; expected {OCI_MANIFEST} or {DOCKER_MANIFEST}"
        ));
    }
    if manifest.schema_version != Some(2) {
        return Err(format!(
            "the manifest has schemaVersion {:?}; expected 2",
            manifest.schema_version
        ));
    }
    let wasm: Vec<&Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| is_wasm_type(&l.media_type))
        .collect();
    match (wasm.as_slice(), manifest.layers.as_slice()) {
        ([one], _) => Ok(one),
        ([], [one]) => Ok(one),
        ([], layers) => Err(format!(
            "the manifest has {} layers and none is wasm (application/wasm or application/vnd.wasm.*); \
             expected a wasm artifact (config {}) or an image with exactly one layer",
            layers.len(),
            manifest
                .config
                .as_ref()
                .map_or("application/vnd.wasm.config.v0+json", |c| c
                    .media_type
                    .as_str())
        )),
        (several, _) => Err(format!(
            "the manifest has {} wasm layers; expected one",
            several.len()
        )),
    }
}

/// Fetches the plugin `reference` names and checks it against the
/// manifest's digest and the layer's digest and size.
pub async fn fetch(reference: &Reference, options: &PullOptions) -> Result<Pulled, PullError> {
    let mut client = Registry::new(reference, options)?;
    let manifest_url = client.url(&format!(
        "/v2/{}/manifests/{}",
        reference.repository,
        reference.digest()
    ))?;
    let accept = format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}");
    let (headers, body) = client
        .get(&manifest_url, &accept, MAX_MANIFEST_BYTES)
        .await?;
    let got = crate::plugin::content_hash(&body);
    if got != reference.digest_hex {
        return Err(PullError::Manifest(format!(
            "{manifest_url}: the manifest's bytes hash to sha256:{got}, not {}; refusing it",
            reference.digest()
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| PullError::Manifest(format!("{manifest_url}: not an image manifest: {e}")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim());
    let layer = pick_layer(&manifest, content_type)
        .map_err(|why| PullError::Manifest(format!("{manifest_url}: {why}")))?;
    let layer_hex = parse_digest(&layer.digest)
        .map_err(|why| PullError::Manifest(format!("{manifest_url}: layer {why}")))?;
    if layer.size > MAX_PLUGIN_BYTES {
        return Err(PullError::Blob(format!(
            "{manifest_url}: the layer is {} bytes, more than the {MAX_PLUGIN_BYTES} a plugin may be",
            layer.size
        )));
    }
    let blob_url = client.url(&format!(
        "/v2/{}/blobs/{}",
        reference.repository, layer.digest
    ))?;
    // The size is checked after reading, so a limit of one byte more tells
    // "too long" from "exactly right".
    let limit = usize::try_from(layer.size + 1).unwrap_or(usize::MAX);
    let (_, blob) = client.get(&blob_url, "*/*", limit).await?;
    if blob.len() as u64 != layer.size {
        return Err(PullError::Blob(format!(
            "{blob_url}: the blob is {}{} bytes; the manifest says {}",
            if blob.len() >= limit { "over " } else { "" },
            blob.len(),
            layer.size
        )));
    }
    let sha256 = crate::plugin::content_hash(&blob);
    if sha256 != layer_hex {
        return Err(PullError::Blob(format!(
            "{blob_url}: the blob hashes to sha256:{sha256}, not {}; refusing it",
            layer.digest
        )));
    }
    Ok(Pulled {
        bytes: blob.to_vec(),
        media_type: layer.media_type.clone(),
        sha256,
    })
}

/// Writes `bytes` as `dir/NAME.wasm` whole: into a file beside it (whose
/// name does not end in `.wasm`, so a gateway watching the folder ignores
/// it), flushed to disk, passed to `check`, then renamed over the old one,
/// so a running gateway reloads once, on the whole file. When `check`
/// refuses, nothing is left behind.
pub fn install(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    check: impl FnOnce(&Path) -> Result<(), String>,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let target = dir.join(format!("{name}.wasm"));
    let temp = dir.join(format!(".{name}.wasm.pull-{}", std::process::id()));
    let write = || -> anyhow::Result<()> {
        let mut f = std::fs::File::create(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        check(&temp).map_err(|why| anyhow::anyhow!("{why}"))?;
        std::fs::rename(&temp, &target)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), target.display()))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    // The rename itself is durable once the folder is flushed.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(target)
}

/// A registry's API, with the token it granted, if it asked for one.
struct Registry<'a> {
    reference: &'a Reference,
    options: &'a PullOptions,
    scheme: &'static str,
    tls: Option<tokio_rustls::TlsConnector>,
    authorization: Option<HeaderValue>,
}

impl<'a> Registry<'a> {
    fn new(reference: &'a Reference, options: &'a PullOptions) -> Result<Self, PullError> {
        let tls = if options.plain_http {
            None
        } else {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(PullError::Tls(
                    "this system has no CA certificates to verify the registry with; install them (ca-certificates)"
                        .to_string(),
                ));
            }
            let config =
                rustls::ClientConfig::builder_with_provider(crate::config::crypto_provider())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .map_err(|e| PullError::Tls(e.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        };
        Ok(Registry {
            reference,
            options,
            scheme: if options.plain_http { "http" } else { "https" },
            tls,
            authorization: None,
        })
    }

    fn url(&self, path: &str) -> Result<Uri, PullError> {
        let s = format!("{}://{}{path}", self.scheme, self.reference.api_host());
        s.parse().map_err(|e| PullError::Http {
            url: s.clone(),
            reason: format!("not a URL: {e}"),
        })
    }

    /// GETs `url` from the registry, answering its token challenge once,
    /// and following redirects; reads at most `limit` bytes of the body.
    async fn get(
        &mut self,
        url: &Uri,
        accept: &str,
        limit: usize,
    ) -> Result<(HeaderMap, Bytes), PullError> {
        let mut challenged = false;
        loop {
            let (status, headers, body) = self.follow(url, accept, limit).await?;
            if status == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = headers
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                self.authorization = Some(self.authorize(url, challenge).await?);
                continue;
            }
            if !status.is_success() {
                return Err(PullError::Status {
                    url: url.to_string(),
                    status,
                    detail: error_detail(&body),
                });
            }
            return Ok((headers, body));
        }
    }

    /// One GET and the redirects it leads to. Credentials go only to the
    /// registry's own host: a redirect to storage carries its own
    /// signature, and some storage refuses a request with two.
    async fn follow(
        &self,
        url: &Uri,
        accept: &str,
        limit: usize,
    ) -> Result<(StatusCode, HeaderMap, Bytes), PullError> {
        let mut at = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let own_host = at.authority() == url.authority();
            let auth = if own_host {
                self.authorization.as_ref()
            } else {
                None
            };
            let (status, headers, body) = self.exchange(&at, accept, auth, limit).await?;
            if status.is_redirection() {
                let location = headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| http_err(&at, format!("{status} without a Location")))?;
                at = resolve(&at, location)?;
                if at.scheme_str() == Some("http") && !self.options.plain_http {
                    return Err(http_err(
                        &at,
                        "a redirect from HTTPS to plain HTTP; refusing it",
                    ));
                }
                continue;
            }
            return Ok((status, headers, body));
        }
        Err(http_err(
            url,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// The `Authorization` a challenge asks for: a bearer token from the
    /// realm it names (anonymous, or with the credentials given), or basic
    /// authentication with the credentials given.
    async fn authorize(&self, url: &Uri, challenge: &str) -> Result<HeaderValue, PullError> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.options.credentials.as_ref().map(|(user, password)| {
            use base64::Engine;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a header value")
        });
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| PullError::Status {
                url: url.to_string(),
                status: StatusCode::UNAUTHORIZED,
                detail: "; the registry asks for a user and password: set GATEWAY_REGISTRY_USER and GATEWAY_REGISTRY_PASSWORD".to_string(),
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(PullError::Status {
                url: url.to_string(),
                status: StatusCode::UNAUTHORIZED,
                detail: format!(" with a challenge this client does not know: `{challenge}`"),
            });
        }
        let Some(realm) = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v) else {
            return Err(http_err(
                url,
                format!("a Bearer challenge without a realm: `{challenge}`"),
            ));
        };
        let mut token_url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for key in ["service", "scope"] {
            if let Some((_, v)) = params.iter().find(|(k, _)| k == key) {
                token_url.push(sep);
                token_url.push_str(key);
                token_url.push('=');
                token_url.push_str(&query_escape(v));
                sep = '&';
            }
        }
        let token_uri: Uri = token_url
            .parse()
            .map_err(|e| http_err(url, format!("the token realm `{realm}` is not a URL: {e}")))?;
        match token_uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.options.plain_http => {}
            _ => {
                return Err(http_err(
                    &token_uri,
                    "the token realm is not HTTPS; pass --plain-http only for a registry you trust on loopback",
                ));
            }
        }
        let (status, _, body) = self
            .exchange(
                &token_uri,
                "application/json",
                basic.as_ref(),
                MAX_TOKEN_BYTES,
            )
            .await?;
        if !status.is_success() {
            return Err(PullError::Status {
                url: token_uri.to_string(),
                status,
                detail: error_detail(&body),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let token: Token = serde_json::from_slice(&body)
            .map_err(|e| http_err(&token_uri, format!("not a token answer: {e}")))?;
        let token = token
            .token
            .or(token.access_token)
            .ok_or_else(|| http_err(&token_uri, "the answer holds no token"))?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| http_err(&token_uri, "the token is not a header value"))
    }

    /// One request on a connection of its own.
    async fn exchange(
        &self,
        url: &Uri,
        accept: &str,
        authorization: Option<&HeaderValue>,
        limit: usize,
    ) -> Result<(StatusCode, HeaderMap, Bytes), PullError> {
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(http_err(url, "neither http nor https")),
        };
        let authority = url
            .authority()
            .ok_or_else(|| http_err(url, "no host"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("gateway/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a.clone());
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| http_err(url, e))?;
        let work = async {
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect((host, port)),
            )
            .await
            .map_err(|_| http_err(url, "connecting timed out"))?
            .map_err(|e| http_err(url, format!("cannot connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            if https {
                let tls = self
                    .tls
                    .as_ref()
                    .ok_or_else(|| http_err(url, "an HTTPS URL while --plain-http was given"))?;
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| http_err(url, format!("not a TLS server name: {e}")))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| {
                    http_err(
                        url,
                        format!(
                            "TLS: {e} (for a registry without TLS, on loopback, pass --plain-http)"
                        ),
                    )
                })?;
                send(url, stream, request, limit).await
            } else {
                send(url, tcp, request, limit).await
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, work)
            .await
            .map_err(|_| http_err(url, format!("no whole answer in {EXCHANGE_TIMEOUT:?}")))?
    }
}

async fn send<S>(
    url: &Uri,
    stream: S,
    request: Request<Empty<Bytes>>,
    limit: usize,
) -> Result<(StatusCode, HeaderMap, Bytes), PullError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_err(url, e))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| http_err(url, e))?;
    let (parts, body) = response.into_parts();
    // Errors and redirects have small bodies: read only a little of them.
    let limit = if parts.status.is_success() {
        limit
    } else {
        limit.min(64 * 1024)
    };
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            conn.abort();
            return Err(http_err(url, format!("the answer is over {limit} bytes")));
        }
        Err(e) => return Err(http_err(url, format!("reading the answer: {e}"))),
    };
    conn.abort();
    Ok((parts.status, parts.headers, body))
}

/// `Location` against the URL it came from: absolute, or a path on the
/// same host.
fn resolve(base: &Uri, location: &str) -> Result<Uri, PullError> {
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with("//") {
        format!("{}:{location}", base.scheme_str().unwrap_or("https"))
    } else if location.starts_with('/') {
        format!(
            "{}://{}{location}",
            base.scheme_str().unwrap_or("https"),
            base.authority().map_or("", |a| a.as_str())
        )
    } else {
        return Err(http_err(
            base,
            format!("a redirect to `{location}`, which is not an absolute URL or path"),
        ));
    };
    absolute
        .parse()
        .map_err(|e| http_err(base, format!("a redirect to `{location}`: {e}")))
}

/// `Bearer realm="…",service="…",scope="…"` → the scheme and its
/// parameters (quoted values may hold commas).
fn parse_challenge(challenge: &str) -> (String, Vec<(String, String)>) {
    let challenge = challenge.trim();
    let (scheme, mut rest) = challenge
        .split_once(' ')
        .map_or((challenge, ""), |(s, r)| (s, r));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = next;
    }
    (scheme.to_string(), params)
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The registry's own words on an error (`{"errors":[{"code","message"}]}`),
/// if it gave any.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let words: Vec<String> = e
                .errors
                .iter()
                .map(|e| {
                    [e.code.as_deref(), e.message.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                })
                .collect();
            format!(" ({})", words.join("; "))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3f1c000000000000000000000000000000000000000000000000000000000abc";

    #[test]
    fn references_need_a_digest() {
        let r: Reference = format!("ghcr.io/acme/auth@sha256:{HEX}").parse().unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "acme/auth");
        assert_eq!(r.digest_hex, HEX);
        let r: Reference = format!("127.0.0.1:5000/plugins/auth:v1@sha256:{HEX}")
            .parse()
            .unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "plugins/auth");
        let r: Reference = format!("docker.io/auth@sha256:{HEX}").parse().unwrap();
        assert_eq!(r.repository, "library/auth");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let tag = "ghcr.io/acme/auth:v1".parse::<Reference>().unwrap_err();
        assert!(tag.contains("a tag can be moved"), "{tag}");
        assert!(
            format!("ghcr.io/acme/auth@sha512:{HEX}")
                .parse::<Reference>()
                .is_err()
        );
        assert!(format!("auth@sha256:{HEX}").parse::<Reference>().is_err());
        assert!(
            format!("ghcr.io/Acme/auth@sha256:{HEX}")
                .parse::<Reference>()
                .is_err()
        );
    }

    #[test]
    fn challenges_are_parsed_with_quoted_commas() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            [
                ("realm", "https://auth.example/token"),
                ("service", "registry.example"),
                ("scope", "repository:a/b:pull,push"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository:a/b:pull%2Cpush"
        );
    }

    fn manifest(json: &str) -> Manifest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_wasm_layer_is_picked() {
        let artifact = manifest(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
               "config":{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:00","size":2},
               "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:01","size":1},
                         {"mediaType":"application/wasm","digest":"sha256:02","size":3}]}"#,
        );
        assert_eq!(pick_layer(&artifact, None).unwrap().digest, "sha256:02");
        let one = manifest(
            r#"{"schemaVersion":2,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:01","size":1}]}"#,
        );
        assert_eq!(
            pick_layer(&one, Some(DOCKER_MANIFEST)).unwrap().digest,
            "sha256:01"
        );
        let two = manifest(
            r#"{"schemaVersion":2,"layers":[{"mediaType":"a","digest":"sha256:01","size":1},{"mediaType":"b","digest":"sha256:02","size":1}]}"#,
        );
        assert!(pick_layer(&two, None).unwrap_err().contains("none is wasm"));
        let index = manifest(r#"{"schemaVersion":2,"manifests":[]}"#);
        assert!(pick_layer(&index, None).unwrap_err().contains("index"));
    }
}
