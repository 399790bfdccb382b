#!/usr/bin/env bash
# Runs the whole APOLLO stack locally (nats-server with JetStream, ingest,
# forecaster, scheduling and orchestration engines) and replays the Alibaba GPU
# cluster trace through it, printing every scheduling decision.
#
#   scripts/demo.sh [apolloctl replay flags...]      e.g. --pods 1000 --show-every 10
#
# Trace location: APOLLO_TRACE_DIR (default: the excerpt in data/ of the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
export APOLLO_TRACE_DIR="${APOLLO_TRACE_DIR:-$ROOT/data/alibaba-gpu-2023}"
if [ ! -f "$APOLLO_TRACE_DIR/openb_node_list_gpu_node.csv" ]; then
  echo "trace not found in $APOLLO_TRACE_DIR (set APOLLO_TRACE_DIR)" >&2
  exit 1
fi

NATS_BIN="$(scripts/ensure-nats.sh)"
echo "== building release binaries (first build takes a few minutes)"
cargo build --release --quiet --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

WORK="$(mktemp -d -t apollo-demo.XXXXXX)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs: $WORK"
}
trap cleanup EXIT INT TERM

NATS_PORT="$(free_port)"
"$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/jetstream" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
export APOLLO_NATS_URL="nats://127.0.0.1:$NATS_PORT"
export APOLLO_LOG="${APOLLO_LOG:-warn}"

start() { # name grpc-port metrics-port
  APOLLO_GRPC_ADDR="127.0.0.1:$2" APOLLO_METRICS_ADDR="127.0.0.1:$3" "$BIN/$1" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
}

ready() { # metrics-port -> 0 when /readyz answers 200
  exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  head -n1 <&3 | grep -q ' 200 '
  local ok=$?
  exec 3<&- 3>&-
  return $ok
}

declare -A GRPC METRICS
for svc in apollo-ingest apollo-forecaster apollo-scheduling apollo-orchestration; do
  GRPC[$svc]="$(free_port)"; METRICS[$svc]="$(free_port)"
  start "$svc" "${GRPC[$svc]}" "${METRICS[$svc]}"
done

echo "== waiting for the services to be ready (NATS on $APOLLO_NATS_URL)"
for svc in "${!METRICS[@]}"; do
  for _ in $(seq 1 300); do
    if ready "${METRICS[$svc]}"; then break; fi
    sleep 0.1
  done
  ready "${METRICS[$svc]}" || { echo "$svc did not become ready; see $WORK/$svc.log" >&2; tail -n 20 "$WORK/$svc.log" >&2; exit 1; }
  echo "   $svc ready (grpc 127.0.0.1:${GRPC[$svc]}, metrics http://127.0.0.1:${METRICS[$svc]}/metrics)"
done

echo "== replaying the trace (tap the streams with: nats --server $APOLLO_NATS_URL sub 'apollo.>')"
"$BIN/apolloctl" replay \
  --trace-dir "$APOLLO_TRACE_DIR" \
  --ingest "http://127.0.0.1:${GRPC[apollo-ingest]}" \
  --scheduling "http://127.0.0.1:${GRPC[apollo-scheduling]}" \
  --forecaster "http://127.0.0.1:${GRPC[apollo-forecaster]}" \
  "$@"
