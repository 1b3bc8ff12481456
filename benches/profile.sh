#!/usr/bin/env bash
# Where the gateway's CPU goes under each vs-nginx load: records the gateway
# with perf (DWARF call graphs, so the release build needs no rebuild) while
# ../shared/bench/vs-nginx.sh drives it, and renders a flamegraph with
# inferno (installed from crates.io into target/tools on first use).
#
#   benches/profile.sh [plain|headers|probes|plugins ...]    (default: plain, headers, plugins)
#   make profile
#
# For each config it leaves, under target/profile/:
#   CONFIG.svg     the flamegraph (open it in a browser)
#   CONFIG.top     the 40 hottest functions, self time
#   CONFIG.folded  the collapsed stacks, for inferno-diff-folded between runs
# Needs perf, nginx and wrk (scripts/setup.sh --bench installs them) and a
# built gateway (make build).
set -euo pipefail
cd "$(dirname "$0")/.."

configs=("$@")
[[ ${#configs[@]} -gt 0 ]] || configs=(plain headers plugins)
tools=target/tools/bin
out=target/profile
if [[ ! -x $tools/inferno-flamegraph ]]; then
  cargo install inferno --locked --root target/tools
fi
mkdir -p "$out"
for config in "${configs[@]}"; do
  path=/
  [[ $config == plugins ]] && path='/?api_key=bench-key-0123456789'
  echo "profile: $config"
  ../shared/bench/vs-nginx.sh -r 1 -d 8 -p "$path" -- \
    perf record -q -F 499 --call-graph dwarf,8192 -o "$out/$config.perf" -- \
    target/release/gateway run --config "benches/vs-nginx/$config.toml" | tail -n 3
  perf script -i "$out/$config.perf" 2>/dev/null | "$tools/inferno-collapse-perf" > "$out/$config.folded"
  "$tools/inferno-flamegraph" --title "gateway, $config" < "$out/$config.folded" > "$out/$config.svg"
  perf report -i "$out/$config.perf" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -E 's/ +$//' | sed -n '1,40p' > "$out/$config.top"
  rm -f "$out/$config.perf"
  echo "profile: $out/$config.svg"
  sed -n '1,15p' "$out/$config.top"
done
