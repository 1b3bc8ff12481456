//! What no schema sees: the manifests checked against one another, against
//! the gateway.toml in their ConfigMap and against the image's layout.
//! Each check says in words what is wrong, so a broken copy can be shown
//! to be refused for the reason it was broken.

use super::{IMAGE_PLUGINS, Manifests, SECRET_EXAMPLE};
use crate::common::repo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Everything wrong with the wiring of `m`, in words; empty when nothing is.
pub fn problems(m: &Manifests) -> Vec<String> {
    let pod = Pod::read(m);
    let mut p = Problems::default();
    layout(m, &mut p);
    config_mount(&pod, &mut p);
    image(&pod, &mut p);
    ports(&pod, &mut p);
    draining(&pod, &mut p);
    selectors(&pod, &mut p);
    secrets(&pod, &mut p);
    redis(&pod, &mut p);
    for d in m.objects.iter().filter(|o| o["kind"] == "Deployment") {
        let what = format!("Deployment {}", d["metadata"]["name"]);
        restricted(&what, &d["spec"]["template"]["spec"], &mut p);
    }
    p.need(pod.spec["securityContext"]["runAsUser"] == 10001, || {
        "the gateway does not run as the image's user 10001".into()
    });
    p.0
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn need(&mut self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.0.push(why());
        }
    }
}

/// The gateway's pod template and the configuration it runs.
struct Pod<'a> {
    m: &'a Manifests,
    text: &'a str,
    config: toml::Table,
    /// `[server] listen` and `[admin] listen` ports.
    listen: u16,
    admin: u16,
    dep: &'a Value,
    labels: &'a Value,
    spec: &'a Value,
    /// The gateway container.
    c: &'a Value,
    redis_labels: &'a Value,
    /// The `--config` file in the container.
    config_path: PathBuf,
}

impl<'a> Pod<'a> {
    fn read(m: &'a Manifests) -> Pod<'a> {
        let text = m.config_text();
        let config: toml::Table =
            toml::from_str(text).unwrap_or_else(|e| panic!("the ConfigMap's gateway.toml: {e}"));
        let port = |table: &str| {
            let listen = config[table]["listen"].as_str().expect("listen");
            listen
                .parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("[{table}] listen `{listen}`: {e}"))
                .port()
        };
        let (listen, admin) = (port("server"), port("admin"));
        let dep = m.get("Deployment", "gateway");
        let spec = &dep["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let config_path = PathBuf::from(
            flag(&strings(&c["args"]), "--config")
                .expect("the gateway container runs with --config"),
        );
        Pod {
            m,
            text,
            config,
            listen,
            admin,
            dep,
            labels: &dep["spec"]["template"]["metadata"]["labels"],
            spec,
            c,
            redis_labels: &m.get("Deployment", "redis")["spec"]["template"]["metadata"]["labels"],
            config_path,
        }
    }

    fn config_dir(&self) -> &Path {
        self.config_path.parent().unwrap()
    }

    fn setting(&self, table: &str, key: &str) -> Option<&str> {
        self.config.get(table)?.get(key)?.as_str()
    }

    /// The gateway container's volume mounts with their volumes.
    fn mounts(&self) -> Vec<(&'a Value, Option<&'a Value>)> {
        let volumes = self.spec["volumes"].as_array();
        self.c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|vm| {
                let v = volumes.and_then(|vs| vs.iter().find(|v| v["name"] == vm["name"]));
                (vm, v)
            })
            .collect()
    }
}

/// Every namespaced object in the Namespace, and kustomize applying every
/// file but the example Secret.
fn layout(m: &Manifests, p: &mut Problems) {
    let ns = &m.get("Namespace", "gateway")["metadata"]["name"];
    for o in m.objects.iter().filter(|o| o["kind"] != "Namespace") {
        p.need(o["metadata"]["namespace"] == *ns, || {
            format!(
                "{} {} is not in namespace {ns}",
                o["kind"], o["metadata"]["name"]
            )
        });
    }
    let listed: BTreeSet<&str> = strings(&m.kustomization["resources"]).into_iter().collect();
    let expected: BTreeSet<&str> = m
        .files
        .iter()
        .map(String::as_str)
        .filter(|f| *f != SECRET_EXAMPLE)
        .collect();
    p.need(listed == expected, || {
        format!("kustomization.yaml lists {listed:?}; the manifests are {expected:?}")
    });
}

/// The gateway runs the ConfigMap's gateway.toml, mounted whole (a subPath
/// mount never sees the ConfigMap change); its plugin folder is where the
/// image holds the plugins and no volume hides it; with a read-only root
/// the compile cache is on a writable volume.
fn config_mount(pod: &Pod<'_>, p: &mut Problems) {
    let dir = pod.config_dir();
    let mounts = pod.mounts();
    let config = mounts
        .iter()
        .find(|(vm, _)| vm["mountPath"].as_str().map(Path::new) == Some(dir));
    p.need(
        config.is_some_and(|(_, v)| v.is_some_and(|v| v["configMap"]["name"] == "gateway-config")),
        || {
            format!(
                "{} is not the mount of the ConfigMap gateway-config",
                dir.display()
            )
        },
    );
    p.need(
        config.is_some_and(|(vm, _)| vm.get("subPath").is_none()),
        || "the config volume is mounted with subPath, which never sees a ConfigMap change".into(),
    );
    p.need(
        pod.config_path.file_name() == Some("gateway.toml".as_ref()),
        || {
            format!(
                "--config {} is not the ConfigMap's gateway.toml",
                pod.config_path.display()
            )
        },
    );

    let plugins = normalise(&dir.join(pod.setting("plugins", "dir").unwrap_or("../plugins/dist")));
    p.need(plugins == Path::new(IMAGE_PLUGINS), || {
        format!(
            "[plugins] dir resolves to {} in the pod; the image holds them in {IMAGE_PLUGINS}",
            plugins.display()
        )
    });
    for (vm, _) in &mounts {
        let at = vm["mountPath"].as_str().unwrap_or("/");
        p.need(!plugins.starts_with(at), || {
            format!("the volume mounted at {at} hides the image's plugins")
        });
    }

    if pod.c["securityContext"]["readOnlyRootFilesystem"] == true {
        let cache = match pod.setting("plugins", "compile_cache_dir") {
            Some(d) => normalise(&dir.join(d)),
            None => Path::new(env_value(pod.c, "XDG_CACHE_HOME").unwrap_or("/nowhere"))
                .join("gateway/plugins"),
        };
        let writable = mounts.iter().any(|(vm, v)| {
            vm["readOnly"] != true
                && v.is_some_and(|v| v.get("emptyDir").is_some())
                && vm["mountPath"]
                    .as_str()
                    .is_some_and(|at| cache.starts_with(at))
        });
        p.need(writable, || {
            format!(
                "the compile cache {} is on the read-only root filesystem",
                cache.display()
            )
        });
    }
}

/// The image's ENTRYPOINT is what runs (and what preStop calls), its CMD
/// runs the file the ConfigMap is mounted over, and it holds the plugins
/// where the config looks.
fn image(pod: &Pod<'_>, p: &mut Problems) {
    p.need(pod.c["command"].is_null(), || {
        "the gateway container overrides the image's ENTRYPOINT".into()
    });
    let cmd = containerfile("CMD");
    p.need(cmd.iter().any(|a| Path::new(a) == pod.config_path), || {
        format!(
            "the image runs {cmd:?}, not the mounted {}",
            pod.config_path.display()
        )
    });
    let build = std::fs::read_to_string(repo().join("deploy/container/build.sh")).unwrap();
    p.need(
        build.contains(IMAGE_PLUGINS.trim_start_matches('/')),
        || format!("deploy/container/build.sh no longer puts the plugins in {IMAGE_PLUGINS}"),
    );
}

/// Probes, Services and the scrape annotations on the ports gateway.toml
/// listens on; the checksum annotation of the config.
fn ports(pod: &Pod<'_>, p: &mut Problems) {
    let (c, admin) = (pod.c, pod.admin);
    for (name, path) in [
        ("readinessProbe", Some("/ready")),
        ("livenessProbe", Some("/health")),
        ("startupProbe", None),
    ] {
        let get = &c[name]["httpGet"];
        let port = container_port(c, &get["port"]);
        p.need(
            port == Some(u64::from(admin)) && path.is_none_or(|want| get["path"] == want),
            || {
                format!(
                    "{name} is GET {} on {port:?}; the admin listener is on {admin} ({name} wants {path:?})",
                    get["path"]
                )
            },
        );
    }
    for (name, want) in [("gateway", pod.listen), ("gateway-admin", admin)] {
        let s = &pod.m.get("Service", name)["spec"];
        let target = container_port(c, &s["ports"][0]["targetPort"]);
        p.need(target == Some(u64::from(want)), || {
            format!("Service {name} sends to {target:?}; the gateway listens on {want}")
        });
        let sel = json!({ "matchLabels": s["selector"] });
        p.need(
            selects(&sel, pod.labels) && !selects(&sel, pod.redis_labels),
            || format!("Service {name} does not select the gateway's pods alone"),
        );
    }

    let notes = &pod.dep["spec"]["template"]["metadata"]["annotations"];
    p.need(notes["prometheus.io/scrape"] == "true", || {
        "prometheus.io/scrape is not \"true\"".into()
    });
    p.need(
        notes["prometheus.io/port"]
            .as_str()
            .and_then(|p| p.parse().ok())
            == Some(admin),
        || {
            format!(
                "prometheus.io/port is {}; the admin listener is on {admin}",
                notes["prometheus.io/port"]
            )
        },
    );
    p.need(notes["prometheus.io/path"] == "/metrics", || {
        "prometheus.io/path is not /metrics".into()
    });
    let sum: String = Sha256::digest(pod.text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    p.need(notes["checksum/config"] == sum, || {
        format!(
            "checksum/config in deployment.yaml is stale: gateway.toml changed; write \"{sum}\""
        )
    });
}

/// preStop runs the image's binary as `gateway drain --wait`, the readiness
/// probe sees the drain within that wait, and the grace period covers the
/// wait, the drain delay and the shutdown grace.
fn draining(pod: &Pod<'_>, p: &mut Problems) {
    let pre_stop = strings(&pod.c["lifecycle"]["preStop"]["exec"]["command"]);
    let entrypoint = containerfile("ENTRYPOINT");
    p.need(
        pre_stop.first().copied() == entrypoint.first().map(String::as_str)
            && pre_stop.get(1) == Some(&"drain"),
        || format!("preStop runs {pre_stop:?}, not `{} drain`", entrypoint[0]),
    );
    let wait = flag(&pre_stop, "--wait").map_or(Duration::ZERO, duration);
    let ready = &pod.c["readinessProbe"];
    let noticed = Duration::from_secs(
        ready["periodSeconds"].as_u64().unwrap_or(10)
            * ready["failureThreshold"].as_u64().unwrap_or(3),
    );
    p.need(noticed <= wait, || {
        format!(
            "the readiness probe notices a drain after {noticed:?}, later than the preStop --wait {wait:?}"
        )
    });
    let drain_delay = pod
        .setting("server", "drain_delay")
        .map_or(Duration::ZERO, duration);
    let grace = pod
        .setting("server", "shutdown_grace")
        .map_or(Duration::from_secs(30), duration);
    let period = Duration::from_secs(
        pod.spec["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    );
    p.need(period > wait + drain_delay + grace, || {
        format!(
            "terminationGracePeriodSeconds is {period:?}, not over preStop --wait {wait:?} + drain_delay {drain_delay:?} + shutdown_grace {grace:?}"
        )
    });
}

/// The Deployment's, the PDB's and the spread constraints' selectors select
/// the gateway's pods (and not Redis'); the HPA scales this Deployment, and
/// the PDB lets a node drain go on at the HPA's minimum.
fn selectors(pod: &Pod<'_>, p: &mut Problems) {
    let (dep, labels) = (pod.dep, pod.labels);
    p.need(selects(&dep["spec"]["selector"], labels), || {
        "the Deployment's selector does not select its own pods".into()
    });
    let pdb = &pod.m.get("PodDisruptionBudget", "gateway")["spec"];
    p.need(
        selects(&pdb["selector"], labels) && !selects(&pdb["selector"], pod.redis_labels),
        || "the PodDisruptionBudget does not select the gateway's pods alone".into(),
    );
    for t in pod.spec["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        p.need(selects(&t["labelSelector"], labels), || {
            format!(
                "the {} spread constraint does not count the gateway's pods",
                t["topologyKey"]
            )
        });
    }
    let hpa = &pod.m.get("HorizontalPodAutoscaler", "gateway")["spec"];
    let target = &hpa["scaleTargetRef"];
    p.need(
        target["kind"] == "Deployment"
            && target["name"] == dep["metadata"]["name"]
            && target["apiVersion"] == dep["apiVersion"],
        || format!("the HPA scales {target}, not the Deployment gateway"),
    );
    let min = hpa["minReplicas"].as_i64().unwrap_or(1);
    let evictable = match (pdb["maxUnavailable"].as_i64(), pdb["minAvailable"].as_i64()) {
        (Some(n), _) => n >= 1,
        (_, Some(n)) => n < min,
        _ => false,
    };
    p.need(evictable, || {
        format!(
            "the PodDisruptionBudget allows no eviction at {min} replicas: node drains would hang"
        )
    });
}

/// Every `${NAME}` gateway.toml needs is set in the container, and every
/// Secret reference names a key the Secret holds.
fn secrets(pod: &Pod<'_>, p: &mut Problems) {
    for name in required_env(pod.text) {
        p.need(
            pod.c["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["name"] == *name)),
            || format!("gateway.toml needs ${{{name}}}, which the gateway container does not set"),
        );
    }
    let secret = pod.m.get("Secret", "gateway-secrets");
    let containers = pod
        .m
        .objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
        });
    for c in containers {
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            if let Some((s, key)) = secret_ref(c, name) {
                p.need(
                    s == "gateway-secrets" && secret["stringData"].get(key).is_some(),
                    || format!("{name} comes from {s}/{key}, which {SECRET_EXAMPLE} does not hold"),
                );
            }
        }
    }
}

/// `[state] url` names a Service that reaches the Redis pod, and Redis
/// requires the password the gateway is given.
fn redis(pod: &Pod<'_>, p: &mut Problems) {
    let url = pod.setting("state", "url").unwrap_or("");
    let (host, port) = url
        .trim_start_matches("redis://")
        .split_once(':')
        .unwrap_or((url, "6379"));
    let redis = &pod.m.get("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0];
    let service = pod.m.find("Service", host).map(|s| &s["spec"]);
    p.need(
        service.is_some_and(|s| {
            s["ports"][0]["port"].as_u64() == port.parse().ok()
                && container_port(redis, &s["ports"][0]["targetPort"]).is_some()
                && selects(&json!({ "matchLabels": s["selector"] }), pod.redis_labels)
        }),
        || format!("[state] url {url} does not reach the Redis pod through a Service"),
    );
    // `$(VAR)` in args is expanded by the kubelet from the container's env.
    let requirepass = flag(&strings(&redis["args"]), "--requirepass")
        .and_then(|v| v.strip_prefix("$(")?.strip_suffix(')'))
        .and_then(|var| secret_ref(redis, var));
    p.need(
        requirepass.is_some() && requirepass == secret_ref(pod.c, "REDIS_PASSWORD"),
        || "Redis' requirepass and the gateway's REDIS_PASSWORD come from different places".into(),
    );
}

/// The restricted Pod Security Standard, which namespace.yaml enforces:
/// what a pod template must meet to be admitted there at all.
fn restricted(what: &str, spec: &Value, p: &mut Problems) {
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        p.need(spec[host] != true, || {
            format!("{what}: {host} is not allowed")
        });
    }
    const VOLUMES: [&str; 9] = [
        "name",
        "configMap",
        "secret",
        "emptyDir",
        "projected",
        "downwardAPI",
        "persistentVolumeClaim",
        "ephemeral",
        "csi",
    ];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        for key in v.as_object().unwrap().keys() {
            p.need(VOLUMES.contains(&key.as_str()), || {
                format!("{what}: a {key} volume is not allowed")
            });
        }
    }
    let pod = &spec["securityContext"];
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten();
    for c in containers {
        let name = format!("{what}, container {}", c["name"]);
        let sc = &c["securityContext"];
        // A container's setting, else the pod's.
        let either = |key: &str| {
            if sc[key].is_null() {
                &pod[key]
            } else {
                &sc[key]
            }
        };
        p.need(either("runAsNonRoot") == true, || {
            format!("{name}: runAsNonRoot is not true")
        });
        p.need(either("runAsUser") != 0, || format!("{name}: runs as root"));
        p.need(sc["privileged"] != true, || format!("{name}: privileged"));
        p.need(sc["allowPrivilegeEscalation"] == false, || {
            format!("{name}: allowPrivilegeEscalation is not false")
        });
        let seccomp = &either("seccompProfile")["type"];
        p.need(
            seccomp == "RuntimeDefault" || seccomp == "Localhost",
            || format!("{name}: seccompProfile is not RuntimeDefault"),
        );
        p.need(
            strings(&sc["capabilities"]["drop"]).contains(&"ALL"),
            || format!("{name}: capabilities do not drop ALL"),
        );
        p.need(
            strings(&sc["capabilities"]["add"])
                .iter()
                .all(|c| *c == "NET_BIND_SERVICE"),
            || format!("{name}: adds capabilities"),
        );
    }
}

/// The strings of a YAML list (none when it is absent).
fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The value after `name` in an argument list.
fn flag<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == name).map(|w| w[1])
}

/// An exec-form instruction of the Containerfile, as its list.
fn containerfile(instruction: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("Containerfile has no {instruction}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("Containerfile {instruction}: {e}"))
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("`{text}`: {e}"))
}

/// A port given by number or by the name of one of `container`'s ports.
fn container_port(container: &Value, port: &Value) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == *name)?["containerPort"]
            .as_u64(),
        _ => None,
    }
}

/// Whether a label selector selects pods labelled `labels`. Only
/// `matchLabels` is understood; a selector with anything else selects
/// nothing here, so it is reported rather than passed unread.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(wanted) = selector["matchLabels"].as_object() else {
        return false;
    };
    selector.get("matchExpressions").is_none()
        && !wanted.is_empty()
        && wanted.iter().all(|(k, v)| labels[k] == *v)
}

/// `path` with `.` and `..` resolved without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The names a config takes from the environment with no default.
fn required_env(config: &str) -> BTreeSet<&str> {
    config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split("${").skip(1))
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
        .filter(|name| !name.contains(":-"))
        .collect()
}

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)?["value"]
        .as_str()
}

/// The Secret and key an env entry of `container` is read from.
pub fn secret_ref<'a>(container: &'a Value, var: &str) -> Option<(&'a str, &'a str)> {
    let e = container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == var)?;
    let r = &e["valueFrom"]["secretKeyRef"];
    Some((r["name"].as_str()?, r["key"].as_str()?))
}
