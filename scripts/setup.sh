#!/usr/bin/env bash
# Installs what building and testing need and a fresh machine lacks:
# the wasm32-wasip2 Rust target, redis-server (the shared-state tests start
# their own), prometheus and promtool (the observability tests run a real
# Prometheus and check the alert rules), and (with --bench) nginx and wrk for the comparison benchmark. Safe to run again: it only installs what is missing.
set -euo pipefail

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 Rust target"
  rustup target add wasm32-wasip2
fi

need_apt=()
want() { command -v "$1" >/dev/null 2>&1 || need_apt+=("$2"); }
want redis-server redis-server
want prometheus prometheus
want promtool prometheus
if [[ "${1:-}" == "--bench" ]]; then
  want nginx nginx-light
  want wrk wrk
  want curl curl
  want taskset util-linux
fi

if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "setup: installing ${need_apt[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
