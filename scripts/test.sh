#!/usr/bin/env bash
# Runs APOLLO's test suite against a real nats-server (installed if missing).
# Set NATS_URL to use an existing server instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NATS_URL:-}" ]; then
  NATS_BIN="$(scripts/ensure-nats.sh)"
  export PATH="$(dirname "$NATS_BIN"):$PATH"
fi
exec cargo test --workspace --all-targets "$@"
