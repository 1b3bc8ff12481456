//! deploy/kubernetes: every manifest validated offline against the
//! Kubernetes API's own schemas (kubernetes-validate, strict: an unknown
//! field is an error), and the wiring no schema sees checked against the
//! gateway's configuration in the ConfigMap: probes, Services and scrape
//! annotations on the ports gateway.toml listens on, the preStop drain
//! inside the grace period, selectors that select the gateway's pods, the
//! config, cache and plugin paths, the Secret's keys, the restricted Pod
//! Security Standard. The ConfigMap's gateway.toml passes `gateway check`
//! laid out as the pod sees it, and runs on loopback against a Redis that
//! wants the Secret's password, drained by the preStop command as written.
//! Broken copies are refused by the same checks.

mod wiring;

use crate::common::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wiring::secret_ref;

/// The oldest Kubernetes the manifests are written for, and the newest
/// whose schemas the kubernetes-validate that scripts/setup.sh pins carries.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Validated, but in no kustomization: its placeholder values must never
/// be applied by `kubectl apply -k`.
const SECRET_EXAMPLE: &str = "secret.example.yaml";

/// Where deploy/container/build.sh puts the shipped plugins in the image.
const IMAGE_PLUGINS: &str = "/etc/gateway/plugins/dist";

fn manifest_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn validator() -> PathBuf {
    let v = repo().join("target/tools/k8s-venv/bin/kubernetes-validate");
    assert!(
        v.exists(),
        "{} is missing; scripts/setup.sh (run by `make test`) installs it",
        v.display()
    );
    v
}

/// The objects of deploy/kubernetes (or of a copy), one per YAML document.
#[derive(Clone)]
struct Manifests {
    objects: Vec<Value>,
    /// The `.yaml` files besides kustomization.yaml.
    files: Vec<String>,
    kustomization: Value,
}

impl Manifests {
    fn read(dir: &Path) -> Manifests {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
            .collect();
        files.sort();
        let objects = files
            .iter()
            .flat_map(|f| yaml_documents(&dir.join(f)))
            .collect();
        let kustomization = yaml_documents(&dir.join("kustomization.yaml"))
            .pop()
            .expect("kustomization.yaml holds a document");
        Manifests {
            objects,
            files,
            kustomization,
        }
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("deploy/kubernetes holds no {kind} `{name}`"))
    }

    fn get_mut(&mut self, kind: &str, name: &str) -> &mut Value {
        self.objects
            .iter_mut()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("deploy/kubernetes holds no {kind} `{name}`"))
    }

    fn config_text(&self) -> &str {
        self.get("ConfigMap", "gateway-config")["data"]["gateway.toml"]
            .as_str()
            .expect("the ConfigMap gateway-config holds gateway.toml")
    }

    fn edit_config(&mut self, from: &str, to: &str) {
        let data = &mut self.get_mut("ConfigMap", "gateway-config")["data"]["gateway.toml"];
        let text = data.as_str().unwrap();
        assert!(text.contains(from), "gateway.toml has no `{from}`");
        *data = Value::String(text.replacen(from, to, 1));
    }
}

/// Every document of a YAML file, as JSON values (empty documents skipped).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// Runs kubernetes-validate in strict mode on `files` against Kubernetes
/// `version`: the number of objects that passed, or its output when any
/// did not. The tool only warns about a kind or apiVersion it has no
/// schema for (a typo in either); that is a refusal here.
fn schema_check(files: &[PathBuf], version: &str) -> Result<usize, String> {
    let out = Command::new(validator())
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = |l: &&str| l.starts_with("INFO ") && l.contains(" passed for resource ");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if out.status.success() && lines.iter().all(passed) {
        Ok(lines.len())
    } else {
        Err(text)
    }
}

/// Every file but kustomization.yaml, as kubernetes-validate reads them.
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    Manifests::read(dir)
        .files
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas_in_strict_mode() {
    let objects = Manifests::read(&manifest_dir()).objects.len();
    for version in KUBERNETES_VERSIONS {
        match schema_check(&manifest_files(&manifest_dir()), version) {
            Ok(passed) => assert_eq!(
                passed, objects,
                "Kubernetes {version}: {passed} objects passed of {objects}"
            ),
            Err(output) => panic!("Kubernetes {version} refuses deploy/kubernetes:\n{output}"),
        }
    }
}

/// What `kubectl apply -k deploy/kubernetes` would send: kubectl's own
/// kustomize renders it (kubectl comes with this kind of machine; the
/// registries the setup reaches carry no current one).
#[test]
fn kustomize_renders_every_manifest_but_the_example_secret_and_it_validates() {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(manifest_dir())
        .output()
        .expect("run kubectl, which the machine image provides");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempdir::Dir::new();
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let names = |objects: &[Value]| -> Vec<String> {
        let mut n: Vec<String> = objects
            .iter()
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        n.sort();
        n
    };
    let files: Vec<Value> = Manifests::read(&manifest_dir())
        .objects
        .into_iter()
        .filter(|o| o["kind"] != "Secret")
        .collect();
    let applied = yaml_documents(&rendered);
    assert_eq!(names(&applied), names(&files));
    for version in KUBERNETES_VERSIONS {
        let passed = schema_check(std::slice::from_ref(&rendered), version)
            .unwrap_or_else(|e| panic!("Kubernetes {version} refuses the rendered set:\n{e}"));
        assert_eq!(passed, applied.len());
    }
}

#[test]
fn a_manifest_with_an_unknown_field_a_wrong_type_or_an_unknown_kind_is_refused() {
    let deployment = std::fs::read_to_string(manifest_dir().join("deployment.yaml")).unwrap();
    let anchor = "      automountServiceAccountToken: false\n";
    assert!(deployment.contains(anchor));
    for (what, broken, named) in [
        (
            "an unknown field",
            deployment.replacen(anchor, &format!("{anchor}      hostNetwrk: true\n"), 1),
            "'hostNetwrk' was unexpected",
        ),
        (
            "a wrong type",
            deployment.replacen("replicas: 3", "replicas: three", 1),
            "spec.replicas: 'three' is not of type 'integer'",
        ),
        (
            "an apiVersion that does not exist",
            deployment.replacen("apiVersion: apps/v1", "apiVersion: apps/v2", 1),
            "Couldn't find schema for kind Deployment with api version apps/v2",
        ),
    ] {
        assert_ne!(broken, deployment, "{what}: the edit changed nothing");
        let dir = tempdir::Dir::new();
        let file = dir.path().join("deployment.yaml");
        std::fs::write(&file, broken).unwrap();
        let output = schema_check(std::slice::from_ref(&file), KUBERNETES_VERSIONS[0])
            .expect_err(&format!("a Deployment with {what} passed"));
        assert!(output.contains(named), "{what}: {output}");
    }
}

#[test]
fn the_manifests_are_wired_to_the_gateway_config_and_the_image() {
    let problems = wiring::problems(&Manifests::read(&manifest_dir()));
    assert!(
        problems.is_empty(),
        "deploy/kubernetes:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn broken_wiring_is_refused() {
    let good = Manifests::read(&manifest_dir());
    type Break = fn(&mut Manifests);
    let cases: [(&str, Break, &str); 9] = [
        (
            "a readiness probe on the echo port",
            |m| {
                let c = &mut m.get_mut("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
                    [0];
                c["readinessProbe"]["httpGet"]["port"] = json!(9902);
            },
            "readinessProbe is GET \"/ready\" on Some(9902)",
        ),
        (
            "the admin listener moved in the config only",
            |m| m.edit_config("listen = \"0.0.0.0:9901\"", "listen = \"0.0.0.0:9911\""),
            "prometheus.io/port is \"9901\"; the admin listener is on 9911",
        ),
        (
            "the traffic listener moved in the config only",
            |m| m.edit_config("listen = \"0.0.0.0:8080\"", "listen = \"0.0.0.0:8081\""),
            "Service gateway sends to Some(8080); the gateway listens on 8081",
        ),
        (
            "a longer shutdown grace",
            |m| m.edit_config("shutdown_grace = \"20s\"", "shutdown_grace = \"60s\""),
            "terminationGracePeriodSeconds is 40s, not over",
        ),
        (
            "a readiness probe slower than the drain",
            |m| {
                let c = &mut m.get_mut("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
                    [0];
                c["readinessProbe"]["periodSeconds"] = json!(10);
            },
            "the readiness probe notices a drain after 20s, later than the preStop --wait 5s",
        ),
        (
            "a preStop hook that does not drain",
            |m| {
                let c = &mut m.get_mut("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
                    [0];
                c["lifecycle"]["preStop"]["exec"]["command"] = json!(["sleep", "5"]);
            },
            "preStop runs [\"sleep\", \"5\"]",
        ),
        (
            "a PDB selecting another label",
            |m| {
                m.get_mut("PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] =
                    json!("gatewy");
            },
            "the PodDisruptionBudget does not select the gateway's pods alone",
        ),
        (
            "a config edited without its checksum",
            |m| m.edit_config("timeout = \"25ms\"", "timeout = \"50ms\""),
            "checksum/config in deployment.yaml is stale",
        ),
        (
            "a token in the config the container does not get",
            |m| {
                let c = &mut m.get_mut("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
                    [0];
                c["env"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|e| e["name"] != "GATEWAY_ADMIN_TOKEN");
            },
            "gateway.toml needs ${GATEWAY_ADMIN_TOKEN}",
        ),
    ];
    for (what, break_it, named) in cases {
        let mut m = good.clone();
        break_it(&mut m);
        let problems = wiring::problems(&m);
        assert!(
            problems.iter().any(|p| p.contains(named)),
            "{what}: expected a problem containing {named:?}, got {problems:#?}"
        );
    }
    let mut root = good.clone();
    let c = &mut root.get_mut("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0];
    c["securityContext"]["runAsUser"] = json!(0);
    c["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let problems = wiring::problems(&root);
    for named in ["runs as root", "allowPrivilegeEscalation is not false"] {
        assert!(
            problems.iter().any(|p| p.contains(named)),
            "a Redis running as root: expected {named:?}, got {problems:#?}"
        );
    }
}

/// The ConfigMap's gateway.toml and the image's plugins laid out under
/// `root` as the pod sees them, and the container's environment with the
/// example Secret's values and its paths moved under `root`.
fn pod_files(m: &Manifests, root: &Path) -> (PathBuf, Vec<(String, String)>) {
    let c = &m.get("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let at = args.windows(2).find(|w| w[0] == "--config").unwrap()[1];
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    let config = under(at);
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, m.config_text()).unwrap();
    let plugins = under(IMAGE_PLUGINS);
    std::fs::create_dir_all(&plugins).unwrap();
    for f in std::fs::read_dir(shipped_plugins()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, plugins.join(f.file_name().unwrap())).unwrap();
    }
    let secret = &m.get("Secret", "gateway-secrets")["stringData"];
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_string();
            let value = match secret_ref(c, &name) {
                Some((_, key)) => secret[key].as_str().unwrap().to_string(),
                None => {
                    let v = e["value"].as_str().unwrap();
                    if v.starts_with('/') {
                        under(v).display().to_string()
                    } else {
                        v.to_string()
                    }
                }
            };
            (name, value)
        })
        .collect();
    (config, env)
}

#[test]
fn the_configmap_config_passes_gateway_check_where_the_pod_reads_it() {
    let m = Manifests::read(&manifest_dir());
    let root = tempdir::Dir::new();
    let (config, env) = pod_files(&m, root.path());
    let check = |env: &[(String, String)]| {
        let out = Command::new(gateway_bin())
            .args(["check", "--config"])
            .arg(&config)
            .env_remove("GATEWAY_ADMIN_TOKEN")
            .env_remove("REDIS_PASSWORD")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("GATEWAY_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = check(&env);
    assert!(
        ok,
        "gateway check refuses the ConfigMap's gateway.toml:\n{err}"
    );
    assert_eq!(
        out.trim(),
        "configuration OK: 3 routes, 5 filters loaded",
        "{err}"
    );
    assert!(
        err.trim().is_empty(),
        "gateway check warns about the ConfigMap's gateway.toml:\n{err}"
    );
    let cache = env
        .iter()
        .find(|(k, _)| k == "XDG_CACHE_HOME")
        .map(|(_, v)| Path::new(v).join("gateway/plugins"))
        .expect("the container sets XDG_CACHE_HOME");
    assert!(
        std::fs::read_dir(&cache).is_ok_and(|mut d| d.next().is_some()),
        "the compiled plugins were not kept in {}",
        cache.display()
    );

    // Without the Secret's token the gateway refuses to start at all.
    let without: Vec<_> = env
        .iter()
        .filter(|(k, _)| k != "GATEWAY_ADMIN_TOKEN")
        .cloned()
        .collect();
    let (ok, _, err) = check(&without);
    assert!(!ok, "gateway check passed without GATEWAY_ADMIN_TOKEN");
    assert!(err.contains("GATEWAY_ADMIN_TOKEN"), "{err}");
}

/// The pod's life on loopback: the ConfigMap's gateway.toml run as the
/// container runs it (its listeners handed over on loopback, the plugin
/// folder, the echo port and Redis' address moved to where this test has
/// them, nothing else changed) against a real Redis that requires the
/// example Secret's password; then the preStop command as the manifest
/// gives it, and SIGTERM.
#[test]
fn a_pod_serves_through_redis_and_its_prestop_hook_drains_it() {
    let m = Manifests::read(&manifest_dir());
    let dep = m.get("Deployment", "gateway");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let secret = &m.get("Secret", "gateway-secrets")["stringData"];
    let from_secret = |var: &str| {
        let (_, key) = secret_ref(c, var).unwrap_or_else(|| panic!("{var} is not from a Secret"));
        secret[key].as_str().unwrap().to_string()
    };
    let (token, password) = (
        from_secret("GATEWAY_ADMIN_TOKEN"),
        from_secret("REDIS_PASSWORD"),
    );

    let redis = Redis::start();
    redis.cli(&["CONFIG", "SET", "requirepass", &password]);
    let echo = format!("127.0.0.1:{}", free_port());
    let config = [
        (
            "dir = \"../plugins/dist\"",
            format!("dir = \"{}\"", shipped_plugins().display()),
        ),
        (
            "redis://redis:6379",
            format!("redis://127.0.0.1:{}", redis.port),
        ),
        ("127.0.0.1:9902", echo.clone()),
        ("127.0.0.1:9902", echo),
    ]
    .into_iter()
    .fold(m.config_text().to_string(), |text, (from, to)| {
        assert!(text.contains(from), "gateway.toml has no `{from}`");
        text.replacen(from, &to, 1)
    });
    let env = [
        ("GATEWAY_ADMIN_TOKEN", token.as_str()),
        ("REDIS_PASSWORD", password.as_str()),
    ];
    let mut gw = Gateway::start_with_env(tempdir::Dir::new(), &env, |_, _| config);

    assert_eq!(gw.get("/echo", &[]).status, 200, "{}", gw.log());
    let first = gw.get("/cached/k8s", &[]);
    let second = gw.get("/cached/k8s", &[]);
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(second.header("x-cache"), Some("hit"), "{}", gw.log());
    let keys = redis.cli(&["-a", &password, "--no-auth-warning", "DBSIZE"]);
    assert!(
        keys.trim().parse::<u64>().is_ok_and(|n| n > 0),
        "nothing was stored in Redis: {keys}"
    );

    // preStop, as written, told where this gateway's admin listener is.
    let pre_stop: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let drain = |token: Option<&str>| {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(&pre_stop[1..])
            .args(["--admin", &gw.admin.to_string()])
            .env_remove("GATEWAY_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = token {
            cmd.env("GATEWAY_ADMIN_TOKEN", t);
        }
        cmd
    };
    // Without the token the admin listener refuses to drain.
    let refused = drain(None).output().unwrap();
    assert!(!refused.status.success(), "drained without the admin token");
    assert_eq!(gw.admin("GET", "/ready").status, 200);

    let started = Instant::now();
    let mut hook = drain(Some(&token)).spawn().unwrap();
    let deadline = started + Duration::from_secs(2);
    while gw.admin("GET", "/ready").status != 503 {
        assert!(
            Instant::now() < deadline,
            "/ready did not turn 503:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gw.get("/echo", &[]).status,
        200,
        "requests must still be served while draining"
    );
    let status = hook.wait().unwrap();
    let waited = started.elapsed();
    assert!(status.success(), "the preStop hook failed: {status}");
    let wait = pre_stop
        .windows(2)
        .find(|w| w[0] == "--wait")
        .map(|w| humantime::parse_duration(w[1]).unwrap())
        .expect("preStop waits");
    assert!(
        waited >= wait,
        "the hook returned after {waited:?}, before its --wait {wait:?}"
    );

    // Then SIGTERM: the gateway exits well inside the pod's grace period.
    let grace = Duration::from_secs(
        dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap(),
    );
    let stopping = Instant::now();
    gw.signal(15);
    let exit = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopping.elapsed() < grace,
            "still running after the grace period:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exited with {exit}:\n{}", gw.log());
}
