#!/usr/bin/env bash
# Starts a fresh local stack (nats-server with JetStream, apollo-ingest,
# apollo-scheduling, apollo-forecaster; release binaries, default settings, as
# scripts/demo.sh starts them), runs `apolloctl replay` against it with the
# given flags, prints its stdout and stops the stack.
#
#   scripts/bench-live.sh [apolloctl replay flags...]
#   e.g. scripts/bench-live.sh --pods 0 --genai off --compare-simulation -o json
#
# Binaries: $BIN (default: ${CARGO_TARGET_DIR:-target}/release, built beforehand
# with `cargo build --release --bins`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
NATS_BIN="$(scripts/ensure-nats.sh)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

WORK="$(mktemp -d -t apollo-bench.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

NATS_PORT="$(free_port)"
"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
export APOLLO_NATS_URL="nats://127.0.0.1:$NATS_PORT"
export APOLLO_LOG="${APOLLO_LOG:-warn}"

declare -A GRPC METRICS
for svc in apollo-ingest apollo-scheduling apollo-forecaster; do
  GRPC[$svc]="$(free_port)"; METRICS[$svc]="$(free_port)"
  APOLLO_GRPC_ADDR="127.0.0.1:${GRPC[$svc]}" APOLLO_METRICS_ADDR="127.0.0.1:${METRICS[$svc]}" \
    "$BIN/$svc" >"$WORK/$svc.log" 2>&1 &
  PIDS+=($!)
done
for svc in "${!METRICS[@]}"; do
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:${METRICS[$svc]}/readyz" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:${METRICS[$svc]}/readyz" >/dev/null \
    || { echo "$svc did not become ready" >&2; tail -n 20 "$WORK/$svc.log" >&2; exit 1; }
done

"$BIN/apolloctl" replay \
  --ingest "http://127.0.0.1:${GRPC[apollo-ingest]}" \
  --scheduling "http://127.0.0.1:${GRPC[apollo-scheduling]}" \
  --forecaster "http://127.0.0.1:${GRPC[apollo-forecaster]}" \
  "$@"
echo "scheduling metrics at the end:" >&2
curl -sf "http://127.0.0.1:${METRICS[apollo-scheduling]}/metrics" \
  | grep -E '^apollo_scheduling_(assumed_pods|assumptions_ended)' >&2 || true
