#!/usr/bin/env bash
# The gateway against nginx terminating TLS with the same certificate on
# this machine, by the method of ../shared/bench/vs-nginx.sh: an nginx
# upstream on CPU 1, nginx and the gateway as TLS proxies on CPU 0 (each
# with one worker), wrk from CPU 1, A B A B rounds, medians.
#
#   benches/vs-nginx-tls.sh [-r ROUNDS] [-d SECONDS] [-c CONNS] [-- GATEWAY]
#
# Two loads, each reported as requests per second and the proxy's own CPU
# time (user+sys, all threads) per request, and the ratios gateway/nginx:
#   keepalive  one TLS handshake per connection, then requests on it;
#   handshake  `Connection: close`: a full handshake for every request, so
#              requests per second are handshakes per second.
# The certificate is ECDSA P-256, TLS 1.3 and 1.2 both offered; wrk
# negotiates TLS 1.3 and no session resumption. GATEWAY defaults to
# `target/release/gateway run --config benches/vs-nginx/tls.toml` with one
# worker. Needs nginx, wrk and openssl (make bench-deps).
set -euo pipefail
rounds=5 secs=5 conns=32
while [[ $# -gt 0 ]]; do
  case $1 in
    -r) rounds=$2; shift 2;; -d) secs=$2; shift 2;; -c) conns=$2; shift 2;;
    --) shift; break;; *) echo "usage: $0 [-r N] [-d S] [-c C] [-- GATEWAY ...]" >&2; exit 2;;
  esac
done
cd "$(dirname "$0")/.."
[[ $# -gt 0 ]] || set -- target/release/gateway run --config benches/vs-nginx/tls.toml
for t in nginx wrk taskset curl openssl python3; do command -v $t >/dev/null || { echo "needs $t (make bench-deps)" >&2; exit 2; }; done

export UPSTREAM=127.0.0.1:18080 LISTEN=127.0.0.1:18082
NGINX_PROXY=127.0.0.1:18081
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
export TLS_CERT=$dir/cert.pem TLS_KEY=$dir/key.pem

cat >"$dir/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $dir/upstream.pid; error_log $dir/upstream.err;
events { worker_connections 8192; }
http { access_log off;
  server { listen $UPSTREAM backlog=4096; location / { return 200 "hello from upstream\n"; } } }
CONF
cat >"$dir/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $dir/proxy.pid; error_log $dir/proxy.err;
events { worker_connections 8192; }
http { access_log off;
  upstream up { server $UPSTREAM; keepalive 128; }
  server { listen $NGINX_PROXY ssl backlog=4096;
    ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
taskset -c 1 nginx -p "$dir" -c "$dir/upstream.conf" & pids+=($!)
taskset -c 0 nginx -p "$dir" -c "$dir/proxy.conf" & pids+=($!)
GATEWAY_LOG=warn taskset -c 0 "$@" >"$dir/candidate.log" 2>&1 & cand=$!; pids+=($cand)

wait_up() { for _ in $(seq 1 600); do curl -kfs -o /dev/null "$1/" && return 0; sleep 0.1; done; return 1; }
wait_up "http://$UPSTREAM" || { echo "upstream did not start" >&2; exit 1; }
wait_up "https://$NGINX_PROXY" || { echo "nginx proxy did not start" >&2; cat "$dir/proxy.err" >&2; exit 1; }
wait_up "https://$LISTEN" || { echo "the gateway did not answer on https://$LISTEN; its log:" >&2; tail -20 "$dir/candidate.log" >&2; exit 1; }
ngx_worker=$(pgrep -P "$(cat "$dir/proxy.pid")" | head -1)

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
run() { # $1 pid to account, $2 address, then wrk's extra arguments -> "rps cpu_us_per_req errors"
  local pid=$1 addr=$2 a b out reqs rps errs
  shift 2
  a=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "$@" "https://$addr/")
  b=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  errs=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(/,/,""); n+=$4+$6+$8+$10} END{print n+0}' <<<"$out")
  python3 -c "print($rps, round(($b-$a)/$hz*1e6/max($reqs,1),2), $errs)"
}
report() { # $1 load name, $2 nginx rows, $3 gateway rows
  python3 - "$@" <<'PY'
import sys, statistics as st
name, npath, cpath = sys.argv[1:4]
def load(p): return [list(map(float, l.split())) for l in open(p) if l.strip()]
n, c = load(npath), load(cpath)
med = lambda rows, i: st.median(r[i] for r in rows)
for who, rows in (("nginx", n), ("gateway", c)):
    print(f"{name:9s} {who:7s} rps median {med(rows,0):9.0f} (min {min(r[0] for r in rows):.0f} max {max(r[0] for r in rows):.0f})  cpu_us_per_req median {med(rows,1):7.2f}  errors {sum(r[2] for r in rows):.0f}")
print(f"{name:9s} ratio rps={med(c,0)/med(n,0):.3f} cpu_per_req={med(c,1)/med(n,1):.3f}")
if sum(r[2] for r in c) > 0:
    print(f"{name}: gateway FAILED: non-2xx answers or socket errors"); sys.exit(1)
PY
}
for load in keepalive handshake; do
  extra=()
  [[ $load == handshake ]] && extra=(-H "Connection: close")
  for _ in 1 2; do
    taskset -c 1 wrk -t1 -c"$conns" -d1s "${extra[@]}" "https://$NGINX_PROXY/" >/dev/null
    taskset -c 1 wrk -t1 -c"$conns" -d1s "${extra[@]}" "https://$LISTEN/" >/dev/null
  done
  : >"$dir/n.$load"; : >"$dir/c.$load"
  for i in $(seq 1 "$rounds"); do
    run "$ngx_worker" $NGINX_PROXY "${extra[@]}" >>"$dir/n.$load"
    run "$cand" $LISTEN "${extra[@]}" >>"$dir/c.$load"
  done
  report "$load" "$dir/n.$load" "$dir/c.$load"
done
