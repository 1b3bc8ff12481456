#!/usr/bin/env bash
# The gateway's TCP routes against HAProxy (`mode tcp`) and nginx's stream
# module, as plain layer-4 proxies on loopback:
#
#   benches/l4.sh [SECONDS] [ROUNDS] [WORKERS]     (default: 10 s, 3 rounds, "1")
#
# WORKERS is a list such as "1 2": the whole comparison runs once per entry
# with that many threads or processes per proxy (HAProxy `nbthread`, nginx
# `worker_processes`, the gateway's `[server] workers`; the gateway's TCP
# routes run on its main runtime whatever `workers` says). With W workers
# the proxies may run on CPUs 0..W-1 only and the load (iperf3, wrk and the
# servers behind the proxies) on the CPUs after those, or on all of them
# when there are none left: with one worker each proxy gets one core, and a
# proxy with more threads than that cannot buy itself more CPU.
#
# Per proxy and round:
#   throughput  one iperf3 connection through the proxy for SECONDS, client
#               to server (up) and, with -R, server to client (down); iperf3's
#               control connection goes through the proxy too;
#   conns/s     wrk -t2 -c32 with `Connection: close` through the proxy to an
#               nginx that answers 3 bytes, so every request is a connection
#               (the upstream's accepted-connection count is checked to agree);
#   CPU         user+system time of the proxy's processes (every thread, and
#               nginx's master and workers) during each run, from
#               /proc/PID/stat: CPU seconds per GiB moved (both directions
#               together), CPU microseconds per connection, and how busy
#               the proxy was during the connections run (100% is one core:
#               below its share of cores, the load side was the limit).
# A `direct` row (no proxy) shows what the load and the servers manage alone.
# Prints every round, then the medians and the ratios gateway/haproxy and
# gateway/nginx, as Markdown tables.
#
# Loopback numbers move with anything else the machine runs, so each run
# first waits (up to L4_QUIET seconds, default 30) for a quiet second, and
# "others' CPU %" is what processes outside the benchmark used during it
# (the highest of a row's runs, in % of one core; the kernel's own threads
# count there too): well above a few percent, the row is not to be trusted.
# A row where it passed 10% is measured again, up to L4_RETRIES times
# (default 2), and the last try is kept.
#
# HAProxy and nginx copy through 16 KiB buffers by default and the gateway
# through up to 64 KiB ones; L4_PEER_BUFFER=65536 gives HAProxy
# `tune.bufsize` and nginx `proxy_buffer_size` that size instead, to compare
# like with like.
#
# PROXIES (default "haproxy nginx gateway") picks the proxies, GATEWAY the
# gateway binary (default target/release/gateway); L4_KEEP=1 keeps the
# configs and logs in the temporary directory and prints its path.
#
# Needs iperf3, wrk, haproxy, nginx with libnginx-mod-stream, taskset, ss and
# python3 (scripts/setup.sh --bench installs them) and a built gateway
# (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
read -ra worker_counts <<<"${3:-1}"
read -ra proxies <<<"${PROXIES:-haproxy nginx gateway}"
gw=${GATEWAY:-target/release/gateway}
peer_buffer=${L4_PEER_BUFFER:-}
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so

for t in iperf3 wrk haproxy nginx taskset ss curl python3; do
  command -v "$t" >/dev/null || { echo "l4: needs $t (scripts/setup.sh --bench)" >&2; exit 2; }
done
[[ -e $stream_module ]] || { echo "l4: needs $stream_module (libnginx-mod-stream)" >&2; exit 2; }
[[ " ${proxies[*]} " != *" gateway "* || -x $gw ]] || { echo "l4: no $gw (cargo build --release)" >&2; exit 2; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n ${L4_KEEP:-} ]] && echo "l4: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listening() { [[ -n $(ss -Hltn "sport = :$1") ]]; }
wait_listening() { # PORT WHAT [LOG]
  for _ in $(seq 200); do listening "$1" && return; sleep 0.05; done
  echo "l4: $2 is not listening on 127.0.0.1:$1" >&2
  [[ -z ${3:-} ]] || tail -20 "$3" >&2
  exit 1
}
# User+system clock ticks of a process and its children, every thread
# counted (a process's /proc/PID/stat sums its threads). The command name
# may hold spaces, so the fields are counted from the closing parenthesis.
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [[ -r /proc/$p/stat ]] || continue
    total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

ncpu=$(nproc)
iperf_port=$(free_port)
web_port=$(free_port)
web_status_port=$(free_port)

# The servers behind the proxies, started once, on the load's CPUs; they
# are moved when the worker count changes.
cat >"$work/web.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/web.pid;
error_log $work/web.err;
events { worker_connections 8192; }
http {
  access_log off;
  server { listen 127.0.0.1:$web_port backlog=4096; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$web_status_port; location / { stub_status; } }
}
EOF
nginx -e "$work/web.err" -p "$work" -c "$work/web.conf" &
web_pid=$!
pids+=("$web_pid")
# A server that stays up for every test (not -1): a failed or stray
# connection then costs one test, not the server.
iperf3 -s -B 127.0.0.1 -p "$iperf_port" >"$work/iperf3-server.log" 2>&1 &
iperf_pid=$!
pids+=("$iperf_pid")
wait_listening "$web_port" "the web upstream"
wait_listening "$iperf_port" "the iperf3 server"
web_accepts() { curl -sf "http://127.0.0.1:$web_status_port/" | awk 'NR == 3 {print $1}'; }

declare -A proxy_pid tcp_port web_proxy_port

start_haproxy() { # WORKERS CPUS
  tcp_port[haproxy]=$(free_port)
  web_proxy_port[haproxy]=$(free_port)
  cat >"$work/haproxy.cfg" <<EOF
global
  nbthread $1
  maxconn 4096
  ${peer_buffer:+tune.bufsize $peer_buffer}
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend iperf
  bind 127.0.0.1:${tcp_port[haproxy]}
  default_backend iperf
frontend web
  bind 127.0.0.1:${web_proxy_port[haproxy]}
  default_backend web
backend iperf
  server s 127.0.0.1:$iperf_port
backend web
  server s 127.0.0.1:$web_port
EOF
  taskset -c "$2" haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  proxy_pid[haproxy]=$!
}

start_nginx() { # WORKERS CPUS
  tcp_port[nginx]=$(free_port)
  web_proxy_port[nginx]=$(free_port)
  cat >"$work/stream.conf" <<EOF
load_module $stream_module;
worker_processes $1;
daemon off;
pid $work/stream.pid;
error_log $work/nginx.log;
events { worker_connections 8192; }
stream {
  ${peer_buffer:+proxy_buffer_size $peer_buffer;}
  server { listen 127.0.0.1:${tcp_port[nginx]}; proxy_pass 127.0.0.1:$iperf_port; proxy_timeout 1h; }
  server { listen 127.0.0.1:${web_proxy_port[nginx]} backlog=4096; proxy_pass 127.0.0.1:$web_port; }
}
EOF
  taskset -c "$2" nginx -e "$work/nginx.log" -p "$work" -c "$work/stream.conf" >>"$work/nginx.log" 2>&1 &
  proxy_pid[nginx]=$!
}

start_gateway() { # WORKERS CPUS
  tcp_port[gateway]=$(free_port)
  web_proxy_port[gateway]=$(free_port)
  cat >"$work/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$(free_port)"
workers = $1

[upstreams.iperf]
instances = ["127.0.0.1:$iperf_port"]

[upstreams.web]
instances = ["127.0.0.1:$web_port"]

[[tcp_route]]
id = "iperf"
listen = "127.0.0.1:${tcp_port[gateway]}"
upstream = "iperf"
idle_timeout = "1h"
max_connections = 10000

[[tcp_route]]
id = "web"
listen = "127.0.0.1:${web_proxy_port[gateway]}"
upstream = "web"
max_connections = 10000
EOF
  if ! "$gw" check --config "$work/gateway.toml" >"$work/gateway-check.log" 2>&1; then
    echo "l4: gateway check refused the benchmark's config (PROXIES=\"haproxy nginx\" leaves the gateway out):" >&2
    cat "$work/gateway-check.log" >&2
    exit 1
  fi
  GATEWAY_LOG=warn taskset -c "$2" "$gw" run --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
  proxy_pid[gateway]=$!
}

hz=$(getconf CLK_TCK)
# Busy ticks of the whole machine: user, nice, system, irq, softirq, steal
# (a process's system time includes the interrupts served in its context).
system_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# Ticks of every process the benchmark started and of shell ME's finished
# children (the clients, and the helpers measuring).
own_ticks() { # ME
  local t=0 p
  for p in "${pids[@]}"; do t=$((t + $(cpu_ticks "$p"))); done
  echo $((t + $(sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}')))
}
# Waits, up to L4_QUIET seconds (default 30), for a second in which the
# machine is busy less than a tenth of a core: another program's build on
# the same cores would otherwise be measured as the proxy's slowness.
wait_quiet() {
  local a b
  for _ in $(seq "${L4_QUIET:-30}"); do
    a=$(system_ticks)
    sleep 1
    b=$(system_ticks)
    ((b - a < hz / 10)) && return
  done
  echo "l4: the machine stayed busy; measuring anyway (see others' CPU %)" >&2
}
# Runs CMD...; sets proxy_ticks (what PID's processes used; none for 0)
# and other_pct, the CPU that processes outside the benchmark took
# meanwhile, in % of one core: a busy machine shows in the results.
measured() { # PID CMD...
  local pid=$1 me=$BASHPID p0=0 p1=0 s0 s1 o0 o1 t0 t1
  shift
  wait_quiet
  [[ $pid == 0 ]] || p0=$(cpu_ticks "$pid")
  s0=$(system_ticks) o0=$(own_ticks "$me") t0=$(date +%s%N)
  "$@" || true
  t1=$(date +%s%N) s1=$(system_ticks) o1=$(own_ticks "$me")
  [[ $pid == 0 ]] || p1=$(cpu_ticks "$pid")
  proxy_ticks=$((p1 - p0))
  other_pct=$(((s1 - s0 - (o1 - o0)) * 100 * 1000000000 / hz / (t1 - t0)))
}

# iperf3 through PORT, accounting PID's CPU (0: none); prints
# "bits_per_second bytes cpu_ticks other_pct". EXTRA is -R for the download.
iperf_run() { # PORT PID CPUS [EXTRA]
  local port=$1 pid=$2 cpus=$3
  shift 3
  measured "$pid" timeout $((secs + 30)) taskset -c "$cpus" \
    iperf3 -c 127.0.0.1 -p "$port" -t "$secs" --connect-timeout 5000 -J "$@" >"$work/iperf.json"
  python3 - "$work/iperf.json" "$proxy_ticks" "$other_pct" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("l4: iperf3 printed no JSON (did the proxy refuse the connection?)")
if "error" in r:
    sys.exit(f"l4: iperf3: {r['error']}")
s = r["end"]["sum_received"]
print(s["bits_per_second"], s["bytes"], sys.argv[2], sys.argv[3])
EOF
}

# wrk with a new connection per request through PORT; prints
# "conns_per_second connections cpu_ticks errors other_pct".
conns_run() { # PORT PID CPUS
  local port=$1 pid=$2 cpus=$3 before after
  before=$(web_accepts)
  measured "$pid" timeout $((secs + 30)) taskset -c "$cpus" \
    wrk -t2 -c32 -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$port/" >"$work/wrk.out"
  after=$(web_accepts)
  python3 - "$work/wrk.out" "$proxy_ticks" $((after - before)) "$other_pct" <<'EOF'
import re, sys
out, ticks, accepted = open(sys.argv[1]).read(), int(sys.argv[2]), int(sys.argv[3])
m = re.search(r"(\d+) requests in", out)
if not m:
    sys.exit(f"l4: wrk failed: {out}")
requests = int(m.group(1))
rate = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors += int(m.group(1)) if m else 0
# Each completed request must have been its own upstream connection; wrk's
# last connections may be cut at the deadline, hence the slack.
if requests and not requests <= accepted <= requests + 64:
    sys.exit(f"l4: {requests} requests but the upstream accepted {accepted} connections")
print(rate, requests, ticks, errors, sys.argv[4])
EOF
}

results=$work/results
: >"$results"
for workers in "${worker_counts[@]}"; do
  if ((ncpu > workers)); then
    proxy_cpus=0-$((workers - 1))
    load_cpus=$workers-$((ncpu - 1))
  else
    proxy_cpus=0-$((ncpu - 1))
    load_cpus=$proxy_cpus
  fi
  for p in $web_pid $(pgrep -P "$web_pid") $iperf_pid; do taskset -apc "$load_cpus" "$p" >/dev/null; done
  for name in "${proxies[@]}"; do
    "start_$name" "$workers" "$proxy_cpus"
    pids+=("${proxy_pid[$name]}")
  done
  for name in "${proxies[@]}"; do
    wait_listening "${web_proxy_port[$name]}" "$name" "$work/$name.log"
    wait_listening "${tcp_port[$name]}" "$name" "$work/$name.log"
    # Through the proxy end to end before anything is measured; then a
    # short warm-up of both loads.
    [[ $(curl -sf "http://127.0.0.1:${web_proxy_port[$name]}/") == ok ]] ||
      { echo "l4: $name did not pass a request to the web upstream" >&2; exit 1; }
    timeout 30 taskset -c "$load_cpus" wrk -t2 -c32 -d1s -H 'Connection: close' \
      "http://127.0.0.1:${web_proxy_port[$name]}/" >/dev/null
    timeout 30 taskset -c "$load_cpus" iperf3 -c 127.0.0.1 -p "${tcp_port[$name]}" -t 1 --connect-timeout 5000 >/dev/null ||
      { echo "l4: iperf3 through $name failed" >&2; exit 1; }
  done
  echo "l4: $workers worker(s): proxies on CPUs $proxy_cpus, load on CPUs $load_cpus, ${secs}s per run, $rounds rounds" >&2
  rows=(direct "${proxies[@]}")
  for round in $(seq "$rounds"); do
    # Each round starts with the next row, so no proxy always runs first.
    for i in "${!rows[@]}"; do
      name=${rows[$(((i + round - 1) % ${#rows[@]}))]}
      if [[ $name == direct ]]; then
        pid=0 tcp=$iperf_port web=$web_port
      else
        pid=${proxy_pid[$name]} tcp=${tcp_port[$name]} web=${web_proxy_port[$name]}
      fi
      echo "l4:   round $round: $name" >&2
      for try in $(seq 0 "${L4_RETRIES:-2}"); do
        up=$(iperf_run "$tcp" "$pid" "$load_cpus")
        down=$(iperf_run "$tcp" "$pid" "$load_cpus" -R)
        conns=$(conns_run "$web" "$pid" "$load_cpus")
        others=$(printf '%s\n' "${up##* }" "${down##* }" "${conns##* }" | sort -n | tail -1)
        ((others <= 10)) && break
        ((try == ${L4_RETRIES:-2})) || echo "l4:   other processes took ${others}% of a core meanwhile: again" >&2
      done
      echo "$workers $round $name $up $down $conns" >>"$results"
    done
  done
  for name in "${proxies[@]}"; do
    kill "${proxy_pid[$name]}"
    wait "${proxy_pid[$name]}" 2>/dev/null || true
  done
done

python3 - "$results" "$hz" "$secs" <<'EOF'
import statistics, sys
from collections import defaultdict
path, hz, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
GIB = 1 << 30
runs = defaultdict(list)
for line in open(path):
    f = line.split()
    workers, rnd, name = int(f[0]), int(f[1]), f[2]
    up_bps, up_bytes, up_ticks, up_other, down_bps, down_bytes, down_ticks, down_other = map(float, f[3:11])
    cps, conns, conn_ticks, errors, conn_other = map(float, f[11:16])
    direct = name == "direct"
    row = {
        "round": rnd,
        "up": up_bps / 1e9,
        "down": down_bps / 1e9,
        "s_per_gib": None if direct else (up_ticks + down_ticks) / hz / ((up_bytes + down_bytes) / GIB),
        "cps": cps,
        "us_per_conn": None if direct else conn_ticks / hz * 1e6 / max(conns, 1),
        "busy": None if direct else conn_ticks / hz / secs * 100,
        "errors": int(errors),
        "others": max(up_other, down_other, conn_other),
    }
    runs[(workers, name)].append(row)

cols = [("up", "Gbit/s up", "{:.2f}"), ("down", "Gbit/s down", "{:.2f}"),
        ("s_per_gib", "CPU s/GiB", "{:.3f}"), ("cps", "conns/s", "{:.0f}"),
        ("us_per_conn", "CPU µs/conn", "{:.1f}"), ("busy", "CPU % in conns", "{:.0f}")]
def cell(v, fmt):
    return "-" if v is None else fmt.format(v)
def table(title, rows):
    print(title)
    print("| proxy | " + " | ".join(c[1] for c in cols) + " | errors | others' CPU % |")
    print("|---|" + "---:|" * (len(cols) + 2))
    for label, r in rows:
        print(f"| {label} | " + " | ".join(cell(r[k], f) for k, _, f in cols) + f" | {r['errors']} | {r['others']:.0f} |")
    print()

for workers in sorted({w for w, _ in runs}):
    names = [n for w, n in runs if w == workers]
    table(f"## {workers} worker(s): every round",
          [(f"{n} r{r['round']}", r) for n in names for r in sorted(runs[(workers, n)], key=lambda r: r["round"])])
    medians = {}
    for n in names:
        rs = runs[(workers, n)]
        medians[n] = {k: (None if rs[0][k] is None else statistics.median(r[k] for r in rs)) for k, _, _ in cols}
        medians[n]["errors"] = sum(r["errors"] for r in rs)
        medians[n]["others"] = max(r["others"] for r in rs)
    table(f"## {workers} worker(s): median of {len(runs[(workers, names[0])])} rounds", list(medians.items()))
    if "gateway" in medians:
        g = medians["gateway"]
        for peer in ("haproxy", "nginx"):
            if peer in medians:
                ratios = [cell(None if g[k] is None or not medians[peer][k] else g[k] / medians[peer][k], "{:.2f}")
                          for k, _, _ in cols]
                print(f"gateway/{peer}: " + ", ".join(f"{c[1]} {r}" for c, r in zip(cols, ratios)))
        print()
EOF
