#!/usr/bin/env bash
# Throughput of the HTTP verification paths, measured with wrk in one run (SPEC §12):
#   1. keyroll /v1/forward-auth with a valid key  vs  keyroll /healthz   (budget: >= 90%)
#   2. nginx auth_request through keyroll          vs  nginx proxying the same upstream without it
# Usage: bench/http.sh [seconds per run, default 10] [connections, default 64]
# Needs: wrk, nginx (apt-get install -y wrk nginx). Loopback only; every process is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-64}"
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -p keyroll-cli --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/keyroll"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KPORT=$(port)
"$BIN" serve --listen "127.0.0.1:$KPORT" --data-dir "$WORK/data" --log-format json > "$WORK/keyroll.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$KPORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
export KEYROLL_SERVER="http://127.0.0.1:$KPORT" KEYROLL_DATA_DIR="$WORK/data"
"$BIN" env create prod >/dev/null
KEY=$("$BIN" consumer create prod/bench --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

rate() { # url [header] -> requests/s
  local out
  if [ -n "${2:-}" ]; then out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "$2" "$1"); else out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "$1"); fi
  echo "$out" | awk '/Requests\/sec/ {print $2}'
  echo "$out" | grep -E "Non-2xx|Socket errors" >&2 || true
}

ROUNDS="${ROUNDS:-3}"
echo "== keyroll alone (wrk -t2 -c$CONNS -d${DURATION}s, same machine, $ROUNDS alternating rounds)"
# Alternate the two endpoints so that drift on the shared cores (other tenants, turbo, cache)
# hits both alike; report every round and the median ratio.
HS=(); FS=()
for _ in $(seq "$ROUNDS"); do
  HS+=("$(rate "http://127.0.0.1:$KPORT/healthz")")
  FS+=("$(rate "http://127.0.0.1:$KPORT/v1/forward-auth" "Authorization: Bearer $KEY")")
done
echo "healthz:       ${HS[*]} req/s"
echo "forward-auth:  ${FS[*]} req/s (valid key)"
python3 - "${HS[@]}" "${FS[@]}" <<'PY'
import statistics, sys
v = list(map(float, sys.argv[1:])); n = len(v) // 2
ratios = [f / h for h, f in zip(v[:n], v[n:])]
print("ratio per round: " + ", ".join(f"{r * 100:.1f}%" for r in ratios))
print(f"median ratio forward-auth / healthz: {statistics.median(ratios) * 100:.1f}% (budget >= 90%)")
PY

if command -v nginx >/dev/null; then
  echo "== through nginx auth_request (examples/nginx/keyroll.conf)"
  UP=$(port); AUTHED=$(port); PLAIN=$(port)
  sed -e "s/@KEYROLL_ADDR@/127.0.0.1:$KPORT/" -e "s/@UPSTREAM_ADDR@/127.0.0.1:$UP/" \
      -e "s/@LISTEN@/127.0.0.1:$AUTHED/" -e "s/@ENVIRONMENT@/prod/" examples/nginx/keyroll.conf > "$WORK/keyroll.conf"
  cat > "$WORK/extra.conf" <<CONF
server { listen 127.0.0.1:$UP; access_log off; location / { return 200 "ok"; } }
upstream bench_plain { server 127.0.0.1:$UP; keepalive 32; }
server { listen 127.0.0.1:$PLAIN; access_log off;
  location / { proxy_pass http://bench_plain; proxy_http_version 1.1; proxy_set_header Connection ""; } }
CONF
  sed -e "s#include @INCLUDE@;#include $WORK/keyroll.conf; include $WORK/extra.conf;#" -e "s#@PREFIX@#$WORK#g" \
      -e "s#access_log .*;#access_log off;#" -e "s#error_log .*;#error_log $WORK/error.log warn;#" \
      examples/nginx/test-wrapper.conf > "$WORK/nginx.conf"
  # Same worker count as cores, as a production nginx would run.
  sed -i "s/worker_processes 1;/worker_processes auto;/" "$WORK/nginx.conf"
  nginx -c "$WORK/nginx.conf" -p "$WORK" &
  PIDS+=($!)
  sleep 1
  PLAIN_RATE=$(rate "http://127.0.0.1:$PLAIN/")
  AUTH_RATE=$(rate "http://127.0.0.1:$AUTHED/" "Authorization: Bearer $KEY")
  echo "nginx -> upstream, no auth:           $PLAIN_RATE req/s"
  echo "nginx -> auth_request keyroll -> upstream: $AUTH_RATE req/s"
  python3 -c "print(f'ratio with / without auth_request: {float($AUTH_RATE)/float($PLAIN_RATE)*100:.1f}%')"
fi
