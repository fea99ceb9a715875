#!/usr/bin/env bash
# The OpenAPI document is the contract: runs schemathesis (pinned, from PyPI, in a virtualenv
# under the target dir) with its default checks against a live `keyroll serve` on a temporary
# data dir and a free loopback port, with an environment and a consumer so that there is data.
# Exits non-zero on any failure. The tests contact 127.0.0.1 only (PyPI is asked for the install).
# Usage: .ci/schemathesis.sh [max examples per operation, default 40]
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${1:-${SCHEMATHESIS_MAX_EXAMPLES:-40}}"
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
VENV="$TARGET/schemathesis/venv-$SCHEMATHESIS_VERSION"

if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/st" --version

cargo build -p keyroll-cli --locked --quiet
BIN="$TARGET/debug/keyroll"
WORK=$(mktemp -d)
PID=
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-format json > "$WORK/keyroll.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { echo "keyroll did not start:" >&2; cat "$WORK/keyroll.log" >&2; exit 1; }

export KEYROLL_SERVER="http://127.0.0.1:$PORT" KEYROLL_DATA_DIR="$WORK/data"
"$BIN" env create prod >/dev/null
KEY=$("$BIN" consumer create prod/billing --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
TOKEN=$(cat "$WORK/data/admin-token")

# The admin token authenticates the admin operations (scheme `admin_token`, a bearer token);
# the consumer key the forward-auth operation (scheme `api_key`, the X-API-Key header).
cat > "$WORK/schemathesis.toml" <<TOML
base-url = "http://127.0.0.1:$PORT"
[auth.openapi.admin_token]
bearer = "$TOKEN"
[auth.openapi.api_key]
api_key = "$KEY"
[generation]
max-examples = $MAX_EXAMPLES
# Schema-valid requests the server rightly refuses for a reason no JSON Schema can state: 428
# \`confirmation_required\` (the environment is protected: state), 422 \`expiry_within_grace\`
# (expires_in compared with grace: two fields) and 422 \`idempotency_key_reused\` (the header was
# used before for another body: history). The list is schemathesis's default plus 422 and 428.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "428", "429", "5xx"]
# A CSR is a signed PKCS#10 request in PEM, which no JSON Schema can state: a generated string is
# rightly a 400 naming \`csr\` (the CA's contract: a bad CSR is a 400, an RSA key too).
[[operations]]
include-path-regex = "^/v1/(certs|self/certificate)$"
include-method = "POST"
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "428", "429", "5xx"]
TOML

# The token operations run apart, each with a token of its own: schemathesis finds the id of the
# token it authenticates with (GET /v1/tokens, the links of POST /v1/tokens) and may revoke it
# or rotate it with no overlap, after which every request of that run is a (documented) 401.
# The first run keeps the data dir's token working throughout.
token() { "$BIN" token create --scope admin --name "schemathesis $1" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'; }
run() { # token, timeout, filter...
  local t=$1 limit=$2; shift 2
  sed "s|^bearer = .*|bearer = \"$t\"|" "$WORK/schemathesis.toml" > "$WORK/run.toml"
  # One worker: with two, hypothesis's shared lambda-source cache raises a KeyError inside
  # schemathesis (an error of the tool, not of the server); one keeps the whole under 3 minutes.
  # From the temporary dir: schemathesis and hypothesis keep their caches in the current one.
  (cd "$WORK" && timeout "$limit" "$VENV/bin/st" --config-file "$WORK/run.toml" \
    run "http://127.0.0.1:$PORT/openapi.json" --workers 1 "$@")
}
status=0
run "$TOKEN" 150 --exclude-path-regex '^/v1/tokens/' || status=$?
for op in rotate revoke; do
  [ "$status" -eq 0 ] || break
  run "$(token "$op")" 60 --include-path-regex "^/v1/tokens(/\\{id\\}/$op)?\$" || status=$?
done
if [ "$status" -ne 0 ]; then
  echo "schemathesis failed (exit $status); the end of the server's log:" >&2
  tail -n 30 "$WORK/keyroll.log" >&2
fi
exit "$status"
