#!/usr/bin/env bash
# The verifier crate stays embeddable: no async runtime, database or HTTP anywhere in its normal
# dependency tree (ARCHITECTURE.md, keyroll-verify). Fails naming the crate that got in, and the
# path it came by.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|mio|axum|hyper|hyper-util|tower|sqlx|sqlx-core|rusqlite|libsqlite3-sys|reqwest|keyroll-store|keyroll-server)$'
tree=$(cargo tree -p keyroll-verify -e normal --prefix none --locked --offline 2>/dev/null \
  || cargo tree -p keyroll-verify -e normal --prefix none --locked)
bad=$(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | grep -E "$forbidden" || true)
if [ -n "$bad" ]; then
  echo "keyroll-verify must not depend on: $(echo $bad)" >&2
  for crate in $bad; do
    cargo tree -p keyroll-verify -e normal --invert "$crate" --locked >&2 || true
  done
  exit 1
fi
echo "keyroll-verify: $(printf '%s\n' "$tree" | awk '{print $1}' | sort -u | wc -l) crates in its tree, none of: tokio, axum, hyper, sqlx, rusqlite, reqwest"
