#!/usr/bin/env bash
# Speed of `keyroll scan` on a large tree: 100,000 small text files (plus a .git/ directory and
# some binary files) with a handful of real keys among them, scanned by the release binary
# against a running server. Timed with hyperfine when installed (apt-get install -y hyperfine),
# else with `time`. `grep -rIn kr_` over the same tree runs in the same hyperfine call as a
# reference for what reading every file costs.
# Usage: bench/scan.sh [files, default 100000] [runs, default 10]
# Loopback only; the server and the temp tree are removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES="${1:-100000}"
RUNS="${2:-10}"
cargo build --release -p keyroll-cli --quiet
BIN="$PWD/target/release/keyroll"
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
KEYS=()
for i in 1 2 3 4 5; do
  KEYS+=("$("$BIN" consumer create "prod/app$i" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')")
done

# 100 directories of 10 subdirectories of FILES/1000 files each: config-like text of 200-1,000
# bytes, look-alikes with bad checksums here and there, 5 real keys (one of them twice).
python3 - "$WORK/tree" "$FILES" "${KEYS[@]}" <<'PY'
import os, random, sys
root, files, keys = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
random.seed(7)
words = "service region timeout retries endpoint database replica cache token user password host port".split()
per_dir = max(1, files // 1000)
holders = set(random.sample(range(files), len(keys) + 1))
keyed = dict(zip(sorted(holders), keys + keys[:1]))
n = 0
for a in range(100):
    for b in range(10):
        d = os.path.join(root, f"pkg{a:03}", f"mod{b}")
        os.makedirs(d, exist_ok=True)
        for c in range(per_dir):
            if n >= files:
                break
            lines = [f"{random.choice(words)}_{i} = {random.choice(words)}-{random.randint(0, 99999)}"
                     for i in range(random.randint(6, 30))]
            if n % 97 == 0:
                lines.append("lookalike = kr_prod_" + "Ab3xYz7Qw9Lm_" + "Q7" * 19)
            if n in keyed:
                lines.insert(random.randint(0, len(lines)), f"KEYROLL_KEY={keyed[n]}")
            with open(os.path.join(d, f"file{c:04}.conf"), "w") as f:
                f.write("\n".join(lines) + "\n")
            n += 1
os.makedirs(os.path.join(root, ".git", "objects"), exist_ok=True)
for i in range(200):
    with open(os.path.join(root, ".git", "objects", f"o{i}"), "wb") as f:
        f.write(os.urandom(2000))
for i in range(50):
    with open(os.path.join(root, f"pkg000/blob{i}.bin"), "wb") as f:
        f.write(b"\0" + os.urandom(4000))
PY
echo "== tree: $(find "$WORK/tree" -type f | wc -l) files, $(du -sh "$WORK/tree" | cut -f1); $(nproc) cores"
"$BIN" scan "$WORK/tree" | tail -n 3
"$BIN" scan "$WORK/tree" >/dev/null || { echo "scan failed" >&2; exit 1; }

CMD="$BIN scan $WORK/tree"
if command -v hyperfine >/dev/null; then
  # Warm page cache (what a CI runner that just checked out the tree sees).
  hyperfine --warmup 2 --runs "$RUNS" -N \
    --command-name "keyroll scan ($FILES files)" "$CMD" \
    --command-name "keyroll scan, 1 core" "taskset -c 0 $CMD" \
    --command-name "grep -rIn kr_ (reference)" "grep -rIn --exclude-dir=.git kr_ $WORK/tree"
else
  echo "hyperfine is not installed (apt-get install -y hyperfine); timing one run with time"
  $CMD >/dev/null
  time $CMD >/dev/null
fi
