#!/usr/bin/env bash
# Cost of usage recording on the forward-auth hot path (SPEC §6: "recording never slows the hot
# path"; budget: <= 5% fewer requests per second with recording on than off).
# Two servers from the same release binary, one with [usage] enabled = false, measured with wrk
# alternately (on, off, on, off) so drift on the shared 2 cores hits both equally.
# Usage: bench/usage-overhead.sh [seconds per run, default 10] [connections, default 64]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-64}"
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -p keyroll-cli --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/keyroll"
WORK=$(mktemp -d)
# Servers are started inside command substitutions (subshells), so their pids go to a file.
cleanup() { [ -f "$WORK/pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done < "$WORK/pids"; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # name enabled -> prints "port key"
  local p; p=$(port)
  KEYROLL_USAGE__ENABLED="$2" "$BIN" serve --listen "127.0.0.1:$p" --data-dir "$WORK/$1" --log-format json > "$WORK/$1.log" 2>&1 &
  echo $! >> "$WORK/pids"
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$p/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  KEYROLL_SERVER="http://127.0.0.1:$p" KEYROLL_DATA_DIR="$WORK/$1" "$BIN" env create prod >/dev/null
  local key
  key=$(KEYROLL_SERVER="http://127.0.0.1:$p" KEYROLL_DATA_DIR="$WORK/$1" "$BIN" consumer create prod/bench --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  echo "$p $key"
}
rate() { wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "Authorization: Bearer $2" -H "User-Agent: bench/1.0" "http://127.0.0.1:$1/v1/forward-auth" | awk '/Requests\/sec/ {print $2}'; }

read -r ON_PORT ON_KEY < <(start on true)
read -r OFF_PORT OFF_KEY < <(start off false)
ON=(); OFF=()
for _ in 1 2; do
  ON+=("$(rate "$ON_PORT" "$ON_KEY")")
  OFF+=("$(rate "$OFF_PORT" "$OFF_KEY")")
done
echo "forward-auth, recording on:  ${ON[*]} req/s"
echo "forward-auth, recording off: ${OFF[*]} req/s"
python3 - "${ON[@]}" "${OFF[@]}" <<'PY'
import sys
v = list(map(float, sys.argv[1:])); n = len(v) // 2
on, off = sum(v[:n]) / n, sum(v[n:]) / n
print(f"mean on {on:.0f}, off {off:.0f}: recording costs {(off - on) / off * 100:.1f}% (budget <= 5%)")
PY
