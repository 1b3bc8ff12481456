#!/usr/bin/env bash
# What a shared limit costs per request in each state backend: one gateway
# with a rate limit (a limit no request reaches, so every answer is a 200
# that made one state call) in front of its own echo upstream, driven by
# oha at a fixed rate, with state in memory, in one Redis, and in a Redis
# Cluster of three primaries (each with a replica), all on loopback.
#
#   benches/state-backends.sh [RATE] [SECONDS]     (default: 2000 req/s for 20 s)
#
# Prints each backend's latency percentiles as oha measured them and the
# gateway's own state-call time (gateway_state_call_duration_seconds), and
# the difference each Redis adds over memory. Needs redis-server, redis-cli
# and oha (scripts/setup.sh installs them) and a built gateway (make build).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-2000}
seconds=${2:-20}
gw=target/release/gateway
oha=target/tools/bin/oha
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_node() { # PORT [cluster args...]
  local port=$1; shift
  redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$work" "$@" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "redis-server on $port did not start" >&2; exit 1
}

single=$(free_port)
redis_node "$single"
cluster=()
for _ in 1 2 3 4 5 6; do
  p=$(free_port)
  redis_node "$p" --cluster-enabled yes --cluster-port "$(free_port)" --cluster-config-file "$work/nodes-$p.conf" --cluster-node-timeout 1000
  cluster+=("127.0.0.1:$p")
done
redis-cli --cluster create "${cluster[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 200); do
  redis-cli -p "${cluster[0]#*:}" cluster info | grep -q cluster_state:ok && break
  sleep 0.1
done

seeds=$(printf '"redis://%s", ' "${cluster[@]}")
declare -A state=(
  [memory]='backend = "memory"'
  [redis]="backend = \"redis\"
url = \"redis://127.0.0.1:$single\""
  [redis-cluster]="backend = \"redis-cluster\"
nodes = [${seeds%, }]"
)

run() { # BACKEND
  local backend=$1 listen admin echo
  listen=$(free_port); admin=$(free_port); echo=$(free_port)
  cat >"$work/$backend.toml" <<EOF
[server]
listen = "127.0.0.1:$listen"
[admin]
listen = "127.0.0.1:$admin"
[echo]
listen = "127.0.0.1:$echo"
[plugins]
dir = "$PWD/plugins/dist"
[state]
${state[$backend]}
[upstreams.echo]
instances = ["127.0.0.1:$echo"]
[filters.rl]
plugin = "ratelimit"
[filters.rl.config]
[[filters.rl.config.limits]]
name = "global"
requests = 100000000
window = "60s"
algorithm = "fixed"
key = "route"
[[route]]
id = "bench"
path_prefix = "/"
upstream = "echo"
filters = ["rl"]
EOF
  GATEWAY_LOG=warn "$gw" run --config "$work/$backend.toml" &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.05
  done
  # A warm-up, then the measured run.
  "$oha" -z 2s -q "$rate" -c 16 --no-tui "http://127.0.0.1:$listen/" >/dev/null
  "$oha" -z "${seconds}s" -q "$rate" -c 16 --latency-correction --no-tui --output-format json \
    "http://127.0.0.1:$listen/" >"$work/$backend.json"
  curl -sf "http://127.0.0.1:$admin/metrics" >"$work/$backend.metrics"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

for backend in memory redis redis-cluster; do
  echo "state-backends: $backend, $rate req/s for ${seconds}s" >&2
  run "$backend"
done

python3 - "$work" <<'EOF'
import json, re, sys
work = sys.argv[1]
rows = {}
for b in ("memory", "redis", "redis-cluster"):
    r = json.load(open(f"{work}/{b}.json"))
    p = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    metrics = open(f"{work}/{b}.metrics").read()
    def total(name):
        return sum(float(m.group(1)) for m in re.finditer(r"^" + name + r"\{[^}]*\} (\S+)$", metrics, re.M))
    calls = total("gateway_state_call_duration_seconds_count")
    spent = total("gateway_state_call_duration_seconds_sum")
    rows[b] = (p["p50"] * 1e3, p["p90"] * 1e3, p["p99"] * 1e3, r["summary"]["requestsPerSec"],
               spent / calls * 1e6 if calls else 0.0, codes)
print(f"{'backend':<14} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'req/s':>8} {'state call µs':>14}  statuses")
for b, (p50, p90, p99, rps, call, codes) in rows.items():
    print(f"{b:<14} {p50:8.3f} {p90:8.3f} {p99:8.3f} {rps:8.0f} {call:14.1f}  {codes}")
m = rows["memory"]
for b in ("redis", "redis-cluster"):
    print(f"{b} over memory: p50 +{rows[b][0] - m[0]:.3f} ms, state call +{rows[b][4] - m[4]:.1f} µs")
c, s = rows["redis-cluster"], rows["redis"]
print(f"redis-cluster over redis: p50 {c[0] - s[0]:+.3f} ms, p99 {c[2] - s[2]:+.3f} ms, state call {c[4] - s[4]:+.1f} µs")
EOF
