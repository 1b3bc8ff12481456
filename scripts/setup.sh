#!/usr/bin/env bash
# Installs what building and testing need and a fresh machine lacks.
# With --run, only what serving needs: the wasm32-wasip2 Rust target
# (`make run`). Otherwise also what the tests and the examples use:
# redis-server (the shared-state tests start
# their own), prometheus and promtool (the observability tests run a real
# Prometheus and check the alert rules), the JavaScript and Python filter
# toolchains at the versions the examples pin (componentize-js from npm into
# plugins/examples/shard-header/node_modules, componentize-py from PyPI into
# target/toolchains/python), Chromium and chromedriver (the admin page's
# browser tests), the musl Rust target and musl-tools (the static binary;
# --static stops after these), podman, runc and the CA bundle (the container
# image; --image stops after these), and (with --bench) nginx, wrk, perf and the
# peers (HAProxy, Caddy, nginx's njs module) for the comparison benchmarks. Safe to run again: it only installs what is missing.
set -euo pipefail

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi
[[ "${1:-}" == "--run" ]] && exit 0

apt_install() {
  [[ $# -gt 0 ]] || return 0
  echo "setup: installing $*"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@"
}
need_apt=()
want() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }
want_file() { [[ -e "$1" ]] || need_apt+=("$2"); }

# The static binary the container image holds (`make static`; --static
# stops after it): the musl Rust target, and musl-gcc for *ring*'s C.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding the x86_64-unknown-linux-musl Rust target"
  rustup target add x86_64-unknown-linux-musl
fi
want musl-gcc musl-tools
# The container image (`make image` and its test; --image stops after it):
# podman, runc (deploy/container/containers.conf says why not crun), the
# CA bundle the image ships and objcopy, which strips the binary's line tables.
if [[ "${1:-}" != "--static" ]]; then
  want podman podman
  want runc runc
  want objcopy binutils
  want_file /etc/ssl/certs/ca-certificates.crt ca-certificates
fi
if [[ "${1:-}" == "--static" || "${1:-}" == "--image" ]]; then
  apt_install "${need_apt[@]}"
  exit 0
fi

want redis-server redis-server
# HAProxy, the load balancer in front of the replicas tests/e2e/scale_out.rs
# starts (and the peer ../shared/bench/peers.sh measures).
want haproxy haproxy
want prometheus prometheus
want promtool prometheus
want node nodejs
want npm npm
want python3 python3
want git git
# The TLS tests' real clients.
want curl curl
want openssl openssl
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The load scenarios' charts draw their text in DejaVu Sans.
want_file /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf fonts-dejavu-core
# The admin page's browser tests drive a headless Chromium through
# chromedriver (W3C WebDriver on loopback).
want_file /usr/bin/chromium chromium
want_file /usr/bin/chromedriver chromium-driver
# The OCI registry `gateway plugin pull` is tested against
# (tests/e2e/oci.rs starts its own on loopback).
want docker-registry docker-registry
if [[ "${1:-}" == "--bench" ]]; then
  want nginx nginx-light
  want wrk wrk
  want curl curl
  want taskset util-linux
  want perf linux-perf
  # The peers ../shared/bench/peers.sh measures beside the gateway
  # (HAProxy is installed for the tests already).
  want caddy caddy
  want_file /usr/lib/nginx/modules/ngx_http_js_module.so libnginx-mod-http-js
  # The layer-4 comparison (benches/l4.sh): iperf3, and nginx's stream module.
  want iperf3 iperf3
  want_file /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream
fi

apt_install "${need_apt[@]}"

root="$(cd "$(dirname "$0")/.." && pwd)"

# componentize-js at the versions package-lock.json pins; reinstalled only
# when the lock file changes. `npm install --no-save` rather than `npm ci`:
# the lock leaves out other platforms' optional binaries the registry
# mirror does not hold, which `npm ci` refuses and `install` skips.
js="$root/plugins/examples/shard-header"
if ! cmp -s "$js/package-lock.json" "$js/node_modules/.installed-lock.json"; then
  echo "setup: installing componentize-js (npm in plugins/examples/shard-header)"
  (cd "$js" && npm install --no-save --no-audit --no-fund --loglevel=error)
  cp "$js/package-lock.json" "$js/node_modules/.installed-lock.json"
fi

# componentize-py, at the version requirements.txt pins, in a virtualenv of
# the project's own.
py="$root/target/toolchains/python"
req="$root/plugins/examples/deny-paths/requirements.txt"
if ! cmp -s "$req" "$py/.installed-requirements.txt"; then
  echo "setup: installing componentize-py into target/toolchains/python"
  rm -rf "$py"
  python3 -m venv "$py"
  "$py/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$py/.installed-requirements.txt"
fi

# oha, the load generator `gateway scenario load-*` drives (and the load
# scenario tests), built by `cargo install` into target/tools at the version
# pinned here; rebuilt only when missing or another version. The charts'
# text font is installed with the Debian packages above.
OHA_VERSION=1.16.0
if [[ "$("$root/target/tools/bin/oha" --version 2>/dev/null)" != "oha $OHA_VERSION" ]]; then
  echo "setup: installing oha $OHA_VERSION into target/tools"
  # With its default TLS stack: oha 1.16 does not build without one.
  cargo install --locked --quiet "oha@$OHA_VERSION" --root "$root/target/tools"
fi

# kubernetes-validate, which checks deploy/kubernetes against the Kubernetes
# API's JSON schemas (bundled with it: no cluster and no network at test
# time), in a virtualenv of its own under target/tools at the version pinned
# here, for tests/e2e/kubernetes/.
K8S_VALIDATE_VERSION=1.37.0
k8s="$root/target/tools/k8s-venv"
if [[ "$("$k8s/bin/kubernetes-validate" --version 2>/dev/null)" != "$K8S_VALIDATE_VERSION" ]]; then
  echo "setup: installing kubernetes-validate $K8S_VALIDATE_VERSION into target/tools/k8s-venv"
  rm -rf "$k8s"
  python3 -m venv "$k8s"
  "$k8s/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
fi
