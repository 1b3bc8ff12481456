//! TLS termination on the proxy listener, with certificates and CAs the
//! tests make (rcgen) and real clients (`curl`, `openssl s_client`): the
//! certificate chosen by SNI, ALPN, versions below 1.2 refused, client
//! certificates required and optional, certificates rotated on disk while
//! requests keep flowing, a bad certificate refused while the old one
//! serves, the redirect listener, and the metrics of all of it.

use crate::common::{Gateway, Upstream, metric, preamble, repo, tempdir};
use crate::observability::{TLS_METRICS, assert_catalogued, catalogue, declared, names_used};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A certificate authority of the test's own.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate with its key, as PEM.
pub struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), with
    /// `cn` as its subject's common name.
    pub fn server(&self, cn: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A certificate for a server that is also a client of its peers (a
    /// Redis Cluster node on its TLS cluster bus), for `names`.
    pub fn peer(&self, cn: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A client certificate with common name `cn` and a URI name.
    fn client(&self, cn: &str, uri: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tests");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.pem")), &self.cert).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &self.key).unwrap();
    }
}

/// Runs a client program to the end, with a bound on how long it may take.
fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program} (scripts/setup.sh installs it): {e}"));
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

/// `curl` to `https://NAME:PORT/PATH` with NAME resolved to the gateway and
/// `ca` trusted; returns the status (0 when no response came) and the body.
fn curl(gw: &Gateway, name: &str, path: &str, ca: &Path, extra: &[&str]) -> (u16, String) {
    let (status, body, _) = curl_exchange(gw, name, path, ca, extra);
    (status, body)
}

/// The HTTP version curl negotiated for one request (`1.1` or `2`).
fn curl_version(gw: &Gateway, name: &str, ca: &Path, extra: &[&str]) -> String {
    curl_exchange(gw, name, "/echo/v", ca, extra).2
}

/// One exchange by `curl`: status, body and HTTP version.
fn curl_exchange(
    gw: &Gateway,
    name: &str,
    path: &str,
    ca: &Path,
    extra: &[&str],
) -> (u16, String, String) {
    let port = gw.addr.port();
    let resolve = format!("{name}:{port}:127.0.0.1");
    let url = format!("https://{name}:{port}{path}");
    let ca = ca.display().to_string();
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        "--cacert",
        &ca,
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run("curl", &args, None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut tail = tail.split(' ');
    let status = tail.next().unwrap_or("0").parse().unwrap_or(0);
    let version = tail.next().unwrap_or("").to_string();
    (status, body.to_string(), version)
}

/// What `openssl s_client` reports of a handshake with `addr`: its whole
/// output, and whether it completed.
fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let connect = addr.to_string();
    let mut all = vec!["s_client", "-connect", &connect];
    all.extend_from_slice(args);
    let out = run("openssl", &all, Some(b"Q\n"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let completed = text.contains("-----BEGIN CERTIFICATE-----") && out.status.success();
    (completed, text)
}

/// The common name of the certificate the gateway presents for `sni`.
fn presented_cn(addr: SocketAddr, sni: &str) -> String {
    let (ok, text) = s_client(addr, &["-servername", sni]);
    assert!(ok, "handshake for {sni} failed:\n{text}");
    let subject = text
        .lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or_else(|| panic!("no subject line:\n{text}"));
    subject
        .rsplit("CN")
        .next()
        .unwrap()
        .trim_start_matches([' ', '='])
        .split(',')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// `tls_gateway` presenting one certificate for `localhost`, with common
/// name `cn`, from `ca` (written beside it as `ca.pem`).
fn one_certificate_gateway(ca: &Ca, cn: &str) -> (Gateway, Upstream) {
    tls_gateway(
        |d| {
            std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
            ca.server(cn, &["localhost"]).write(d, "server");
        },
        "cert_file = \"server.pem\"\nkey_file = \"server.key\"",
        "tls.client-subject",
    )
}

/// `gateway_tls_handshake_failures_total{reason}` in a scrape.
fn handshake_failures(scrape: &str, reason: &str) -> f64 {
    metric(
        scrape,
        "gateway_tls_handshake_failures_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gateway whose `[server.tls]` is `tls` (paths relative to its folder,
/// where `files` writes the certificates first), routing `/echo` to an
/// upstream through a probe filter that reports the scheme it is shown
/// and copies `context` into `x-context`.
fn tls_gateway(files: impl FnOnce(&Path), tls: &str, context: &str) -> (Gateway, Upstream) {
    let up = Upstream::start("tls-up");
    let dir = tempdir::Dir::new();
    files(dir.path());
    let body = format!(
        "[server.tls]\n{tls}\n\n[filters.probe]\nplugin = \"probe\"\nconfig = {{ name = \"probe\", report_view = true, read_context = \"{context}\" }}\n\n[upstreams.up]\ninstances = [\"{}\"]\n\n[[route]]\nid = \"echo\"\npath_prefix = \"/echo\"\nupstream = \"up\"\nfilters = [\"probe\"]\n\n[access_log]\npath = \"access.log\"\n",
        up.addr
    );
    let gw = Gateway::start_with(dir, |addr, admin| {
        // The preamble's [server] table comes first; [server.tls] extends it.
        format!("{}{body}", preamble(addr, admin))
    });
    (gw, up)
}

#[test]
fn sni_chooses_the_certificate_alpn_offers_h2_and_requests_are_told_https() {
    let ca = Ca::new("Test CA");
    let (gw, up) = tls_gateway(
        |d| {
            std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
            ca.server("default.test", &["default.test", "localhost"])
                .write(d, "default");
            ca.server("api.example.test", &["api.example.test"])
                .write(d, "api");
            ca.server("wild.example.test", &["*.example.test"])
                .write(d, "wild");
        },
        "cert_file = \"default.pem\"\nkey_file = \"default.key\"\n\n[[server.tls.sni]]\nnames = [\"api.example.test\"]\ncert_file = \"api.pem\"\nkey_file = \"api.key\"\n\n[[server.tls.sni]]\nnames = [\"*.example.test\"]\ncert_file = \"wild.pem\"\nkey_file = \"wild.key\"",
        "tls.client-subject",
    );
    let ca_file = gw.dir.path().join("ca.pem");
    // An exact name wins over the wildcard; the wildcard covers one label;
    // anything else gets the default.
    assert_eq!(
        presented_cn(gw.addr, "api.example.test"),
        "api.example.test"
    );
    assert_eq!(
        presented_cn(gw.addr, "www.example.test"),
        "wild.example.test"
    );
    assert_eq!(presented_cn(gw.addr, "a.b.example.test"), "default.test");
    assert_eq!(presented_cn(gw.addr, "other.test"), "default.test");

    let (status, body) = curl(&gw, "api.example.test", "/echo/a?x=1", &ca_file, &[]);
    assert_eq!((status, body.trim_end()), (200, "hello from tls-up"));
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-seen-scheme"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("api.example.test:{}", gw.addr.port()).as_str())
    );
    // No client certificate, so no identity for filters.
    assert_eq!(seen.header("x-context"), Some("<none>"));

    // ALPN: h2 when the client offers it, HTTP/1.1 when it asks for that.
    assert_eq!(curl_version(&gw, "localhost", &ca_file, &["--http2"]), "2");
    assert_eq!(
        curl_version(&gw, "localhost", &ca_file, &["--http1.1"]),
        "1.1"
    );
    assert_eq!(
        up.last().version,
        "HTTP/1.1",
        "h2 from the client, HTTP/1.1 upstream"
    );
    let (ok, text) = s_client(
        gw.addr,
        &["-alpn", "h2,http/1.1", "-servername", "localhost"],
    );
    assert!(ok && text.contains("ALPN protocol: h2"), "{text}");

    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "gateway_tls_handshakes_total",
            &[("version", "TLSv1.3"), ("alpn", "h2")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "gateway_tls_handshakes_total",
            &[("version", "TLSv1.3"), ("alpn", "http/1.1")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    // One expiry series per name, at the certificate's end (rcgen's
    // default validity ends in 4096).
    for name in ["default", "api.example.test", "*.example.test"] {
        let end = metric(
            &m,
            "gateway_tls_certificate_expiry_seconds",
            &[("name", name)],
        )
        .unwrap_or_else(|| panic!("no expiry series for {name}:\n{m}"));
        assert!(end > 4.0e9, "{name}: {end}");
    }
    // Every TLS name the catalogue lists and the alert rules use is in
    // this scrape (observability.rs checks the rest on a plaintext one,
    // and the upstream TLS test its own).
    let scraped = declared(&m);
    let alerts = std::fs::read_to_string(repo().join("config/prometheus/alerts.yml")).unwrap();
    let listed: Vec<String> = catalogue()
        .into_iter()
        .chain(names_used(&alerts, &scraped))
        .filter(|n| n.starts_with(TLS_METRICS) && !n.starts_with(UPSTREAM_TLS_METRICS))
        .collect();
    assert!(listed.len() >= 3, "{listed:?}");
    for name in &listed {
        assert!(scraped.contains(name), "{name} is not exported:\n{m}");
    }
    // The access log says the connection was TLS.
    wait_until("the access log line", || {
        std::fs::read_to_string(gw.dir.path().join("access.log"))
            .is_ok_and(|l| l.contains("\"tls\":\"TLSv1.3\""))
    });
}

#[test]
fn old_protocol_versions_and_plaintext_are_refused_and_counted() {
    let ca = Ca::new("Test CA");
    let (gw, _up) = tls_gateway(
        |d| ca.server("localhost", &["localhost"]).write(d, "server"),
        "cert_file = \"server.pem\"\nkey_file = \"server.key\"",
        "tls.client-subject",
    );
    // TLS 1.1 (allowed on the client's side for the attempt) and 1.0.
    for version in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(gw.addr, &[version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{version} was accepted:\n{text}");
    }
    // TLS 1.2 is still accepted.
    let (ok, text) = s_client(gw.addr, &["-tls1_2"]);
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    // A plaintext request to the TLS port gets no HTTP answer.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    }
    let m = gw.metrics();
    let failures = |reason| handshake_failures(&m, reason);
    assert!(failures("incompatible") >= 2.0, "{m}");
    assert!(failures("not-tls") >= 1.0, "{m}");
    assert!(
        metric(
            &m,
            "gateway_tls_handshakes_total",
            &[("version", "TLSv1.2"), ("alpn", "-")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
}

/// A gateway asking for client certificates from `Client CA`, and the
/// files a client needs: the server CA, a client certificate from the
/// trusted CA and one from another.
/// `client_auth` is written when given (else the default, `required`);
/// the probe copies context key `context` into `x-context`.
fn mtls_gateway(client_auth: Option<&str>, context: &str) -> (Gateway, Upstream) {
    let server_ca = Ca::new("Server CA");
    let client_ca = Ca::new("Client CA");
    let stranger_ca = Ca::new("Stranger CA");
    tls_gateway(
        |d| {
            std::fs::write(d.join("ca.pem"), &server_ca.pem).unwrap();
            std::fs::write(d.join("client-ca.pem"), &client_ca.pem).unwrap();
            server_ca
                .server("localhost", &["localhost"])
                .write(d, "server");
            client_ca
                .client("billing", "spiffe://example.test/billing")
                .write(d, "client");
            stranger_ca
                .client("intruder", "spiffe://example.test/intruder")
                .write(d, "stranger");
        },
        &format!(
            "cert_file = \"server.pem\"\nkey_file = \"server.key\"\nclient_ca_file = \"client-ca.pem\"\n{}",
            client_auth.map_or(String::new(), |a| format!("client_auth = \"{a}\""))
        ),
        context,
    )
}

fn with_cert(gw: &Gateway, name: &str) -> [String; 4] {
    let d = gw.dir.path();
    [
        "--cert".into(),
        d.join(format!("{name}.pem")).display().to_string(),
        "--key".into(),
        d.join(format!("{name}.key")).display().to_string(),
    ]
}

#[test]
fn required_client_certificates_are_verified_and_shown_to_filters() {
    let (gw, up) = mtls_gateway(Some("required"), "tls.client-subject");
    let ca = gw.dir.path().join("ca.pem");
    let cert = with_cert(&gw, "client");
    let cert: Vec<&str> = cert.iter().map(String::as_str).collect();
    let (status, _) = curl(&gw, "localhost", "/echo/in", &ca, &cert);
    assert_eq!(status, 200);
    assert_eq!(up.last().header("x-context"), Some("O=Tests,CN=billing"));

    let before = up.count();
    let (status, _) = curl(&gw, "localhost", "/echo/none", &ca, &[]);
    assert_eq!(status, 0, "no certificate, no exchange");
    let stranger = with_cert(&gw, "stranger");
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    let (status, _) = curl(&gw, "localhost", "/echo/stranger", &ca, &stranger);
    assert_eq!(status, 0, "a certificate from an untrusted CA is refused");
    assert_eq!(up.count(), before, "neither reached the upstream");

    let m = gw.metrics();
    let failures = |reason| handshake_failures(&m, reason);
    assert!(failures("no-client-certificate") >= 1.0, "{m}");
    assert!(failures("bad-client-certificate") >= 1.0, "{m}");
    wait_until("the access log line", || {
        std::fs::read_to_string(gw.dir.path().join("access.log"))
            .is_ok_and(|l| l.contains("\"client_cert\":\"O=Tests,CN=billing\""))
    });
}

#[test]
fn optional_client_certificates_let_anonymous_clients_in_and_names_reach_filters() {
    let (gw, up) = mtls_gateway(Some("optional"), "tls.client-subject");
    let ca = gw.dir.path().join("ca.pem");
    let (status, _) = curl(&gw, "localhost", "/echo/anon", &ca, &[]);
    assert_eq!(status, 200);
    assert_eq!(up.last().header("x-context"), Some("<none>"));
    let cert = with_cert(&gw, "client");
    let cert: Vec<&str> = cert.iter().map(String::as_str).collect();
    let (status, _) = curl(&gw, "localhost", "/echo/known", &ca, &cert);
    assert_eq!(status, 200);
    assert_eq!(up.last().header("x-context"), Some("O=Tests,CN=billing"));
    // An untrusted certificate is still refused: optional means "may be
    // absent", not "may be anything".
    let stranger = with_cert(&gw, "stranger");
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    assert_eq!(
        curl(&gw, "localhost", "/echo/stranger", &ca, &stranger).0,
        0
    );
}

#[test]
fn client_subject_alternative_names_reach_filters() {
    // No client_auth: a CA file alone asks for, and requires, a certificate.
    let (gw, up) = mtls_gateway(None, "tls.client-san");
    let cert = with_cert(&gw, "client");
    let cert: Vec<&str> = cert.iter().map(String::as_str).collect();
    let ca = gw.dir.path().join("ca.pem");
    assert_eq!(curl(&gw, "localhost", "/echo/san", &ca, &cert).0, 200);
    assert_eq!(
        up.last().header("x-context"),
        Some("URI:spiffe://example.test/billing")
    );
}

#[test]
fn a_certificate_rotated_on_disk_mid_traffic_fails_no_request() {
    let ca = Ca::new("Test CA");
    let (gw, _up) = one_certificate_gateway(&ca, "first");
    assert_eq!(presented_cn(gw.addr, "localhost"), "first");
    let ca_file = gw.dir.path().join("ca.pem");
    let stop = Arc::new(AtomicBool::new(false));
    let gw = Arc::new(gw);
    // New connections, one request each, for the whole rotation: every one
    // must succeed, with the old certificate or the new.
    let traffic = {
        let (gw, stop, ca_file) = (gw.clone(), stop.clone(), ca_file.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) && statuses.len() < 2000 {
                statuses.push(curl(&gw, "localhost", "/echo/r", &ca_file, &[]).0);
            }
            statuses
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // The certificate first, the key after: in between, the pair on disk
    // does not match, which a reload must refuse and survive.
    let next = ca.server("second", &["localhost"]);
    let d = gw.dir.path();
    std::fs::write(d.join("server.pem.tmp"), &next.cert).unwrap();
    std::fs::rename(d.join("server.pem.tmp"), d.join("server.pem")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(d.join("server.key.tmp"), &next.key).unwrap();
    std::fs::rename(d.join("server.key.tmp"), d.join("server.key")).unwrap();
    wait_until("the rotated certificate", || {
        presented_cn(gw.addr, "localhost") == "second"
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.join().unwrap();
    assert!(statuses.len() >= 5, "too little traffic: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests during rotation: {statuses:?}"
    );
}

#[test]
fn a_bad_new_certificate_is_refused_and_the_old_one_keeps_serving() {
    let ca = Ca::new("Test CA");
    let (gw, _up) = one_certificate_gateway(&ca, "good");
    std::fs::write(gw.dir.path().join("server.pem"), "not a certificate\n").unwrap();
    let r = gw.admin("POST", "/admin/reload");
    assert_ne!(r.status, 200, "{}", r.body_text());
    assert!(
        r.body_text().contains("server.pem holds no certificate"),
        "{}",
        r.body_text()
    );
    assert_eq!(presented_cn(gw.addr, "localhost"), "good");
    let ca_file = gw.dir.path().join("ca.pem");
    assert_eq!(curl(&gw, "localhost", "/echo/still", &ca_file, &[]).0, 200);
}

#[test]
fn the_redirect_listener_sends_clients_to_https() {
    let ca = Ca::new("Test CA");
    let dir = tempdir::Dir::new();
    ca.server("localhost", &["localhost"])
        .write(dir.path(), "server");
    let gw = Gateway::start_with_listeners(dir, &["redirect"], |a| {
        let preamble = preamble(a[0], a[1]).replacen(
            "[server]\n",
            "[server]\nmax_connections_per_client = 2\n",
            1,
        );
        format!(
            "{preamble}[server.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nredirect_listen = \"{}\"\n",
            a[2]
        )
    });
    let redirect = gw.extra[0];
    let r = crate::common::raw(
        redirect,
        b"POST /pay/now?x=1 HTTP/1.1\r\nhost: shop.example.test:8080\r\ncontent-length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://shop.example.test:{}/pay/now?x=1", gw.addr.port()).as_str())
    );
    let r = crate::common::raw(redirect, b"GET / HTTP/1.1\r\nhost: bad host\r\n\r\n");
    assert_eq!(r.status, 400);
    // The proxy's connection limits hold here too: two quiet connections
    // from this address, and a third is closed unanswered. Quiet ones are
    // closed at header_read_timeout (1s), so each attempt opens its own.
    wait_until("the refusal", || {
        use std::io::Read;
        let _held: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(redirect).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut third = std::net::TcpStream::connect(redirect).unwrap();
        // Shorter than header_read_timeout, which would close an accepted
        // connection too.
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 16];
        matches!(third.read(&mut buf), Ok(0))
    });
    assert!(
        metric(
            &gw.metrics(),
            "gateway_connections_refused_total",
            &[("reason", "too-many-client-connections")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

/// A TLS server configuration for a test upstream: `leaf` as its
/// certificate, ALPN `h2` then `http/1.1`, and client certificates from
/// `client_ca` required when given.
fn upstream_tls(leaf: &Leaf, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A plaintext gateway routing `/api` to `up` with `[upstreams.up.tls]`
/// set to `tls` (and `extra` lines in the upstream's table); `files`
/// writes what it names into the gateway's folder first.
fn gateway_to_tls_upstream(
    up: &Upstream,
    files: impl FnOnce(&Path),
    tls: &str,
    extra: &str,
) -> Gateway {
    let dir = tempdir::Dir::new();
    files(dir.path());
    let body = format!(
        "[upstreams.up]\ninstances = [\"{}\"]\n{extra}\n[upstreams.up.tls]\n{tls}\n\n[[route]]\nid = \"api\"\npath_prefix = \"/api\"\nupstream = \"up\"\n",
        up.addr
    );
    Gateway::start_with(dir, |addr, admin| {
        format!("{}{body}", preamble(addr, admin))
    })
}

/// The TLS series a gateway exports for its upstreams' `tls`.
const UPSTREAM_TLS_METRICS: &str = "gateway_tls_upstream_";

/// An upstream named `secure` with a certificate for `api.internal` from
/// a CA of its own.
fn secure_upstream() -> (Ca, Upstream) {
    let ca = Ca::new("Upstream CA");
    let leaf = ca.server("api.internal", &["api.internal"]);
    let up = Upstream::start_tls("secure", upstream_tls(&leaf, None));
    (ca, up)
}

/// `ca`'s certificate as `upstream-ca.pem` in `dir`.
fn write_ca(dir: &Path, ca: &Ca) {
    std::fs::write(dir.join("upstream-ca.pem"), &ca.pem).unwrap();
}

fn upstream_failures(gw: &Gateway, reason: &str) -> f64 {
    metric(
        &gw.metrics(),
        "gateway_tls_upstream_handshake_failures_total",
        &[("upstream", "up"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[test]
fn upstream_tls_verifies_a_private_ca_speaks_h2_when_offered_and_health_checks_over_it() {
    let (ca, up) = secure_upstream();
    let gw = gateway_to_tls_upstream(
        &up,
        |d| write_ca(d, &ca),
        "ca_file = \"upstream-ca.pem\"\nserver_name = \"api.internal\"",
        "[upstreams.up.health]\npath = \"/status/200\"\ninterval = \"100ms\"\n",
    );
    let r = gw.get("/api/one", &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.log());
    assert_eq!(r.body_text(), "hello from secure\n");
    // The instance offered h2 by ALPN, so the request went over HTTP/2.
    let seen = up.seen();
    let request = seen.iter().rfind(|s| s.uri.contains("/api/one")).unwrap();
    assert_eq!(request.version, "HTTP/2.0");
    wait_until("a health check over TLS", || {
        metric(
            &gw.metrics(),
            "gateway_upstream_health_checks_total",
            &[("upstream", "up"), ("result", "passed")],
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    // Declared at zero for an alert, and listed in the catalogue.
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "gateway_tls_upstream_handshake_failures_total",
            &[("upstream", "up"), ("reason", "name-mismatch")]
        ),
        Some(0.0)
    );
    assert_catalogued(&m, UPSTREAM_TLS_METRICS, 1);
}

#[test]
fn an_upstream_certificate_for_another_name_or_from_an_unknown_ca_is_refused() {
    let (ca, up) = secure_upstream();
    // The right CA, the wrong name.
    let gw = gateway_to_tls_upstream(
        &up,
        |d| write_ca(d, &ca),
        "ca_file = \"upstream-ca.pem\"\nserver_name = \"billing.internal\"",
        "",
    );
    let r = gw.get("/api/wrong-name", &[]);
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(
        upstream_failures(&gw, "name-mismatch") >= 1.0,
        "{}",
        gw.metrics()
    );
    assert!(
        metric(
            &gw.metrics(),
            "gateway_upstream_errors_total",
            &[("upstream", "up"), ("kind", "connect_error")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "a certificate error is a connect failure"
    );
    drop(gw);
    // The system's CAs, which do not include the private one.
    let gw = gateway_to_tls_upstream(&up, |_| {}, "server_name = \"api.internal\"", "");
    assert_eq!(gw.get("/api/unknown-ca", &[]).status, 502);
    assert!(
        upstream_failures(&gw, "unknown-issuer") >= 1.0,
        "{}",
        gw.metrics()
    );
    assert!(
        !up.seen().iter().any(|s| s.uri.contains("/api/")),
        "no request reached the instance"
    );
}

#[test]
fn mutual_tls_to_the_upstream_presents_the_configured_client_certificate() {
    let ca = Ca::new("Upstream CA");
    let clients = Ca::new("Gateway clients CA");
    let up = Upstream::start_tls(
        "strict",
        upstream_tls(
            &ca.server("api.internal", &["api.internal"]),
            Some(&clients.pem),
        ),
    );
    let files = |d: &Path| {
        write_ca(d, &ca);
        clients
            .client("gateway", "spiffe://example.test/gateway")
            .write(d, "gateway-client");
    };
    // Without a client certificate the instance refuses the connection.
    let gw = gateway_to_tls_upstream(
        &up,
        files,
        "ca_file = \"upstream-ca.pem\"\nserver_name = \"api.internal\"",
        "",
    );
    assert_eq!(gw.get("/api/anonymous", &[]).status, 502);
    drop(gw);
    let gw = gateway_to_tls_upstream(
        &up,
        files,
        "ca_file = \"upstream-ca.pem\"\nserver_name = \"api.internal\"\ncert_file = \"gateway-client.pem\"\nkey_file = \"gateway-client.key\"",
        "",
    );
    let r = gw.get("/api/mutual", &[]);
    assert_eq!(r.status, 200, "{}\n{}", r.body_text(), gw.log());
    assert_eq!(
        up.seen().iter().filter(|s| s.uri.contains("/api/")).count(),
        1
    );
}
