#!/usr/bin/env bash
# Runs the four services against a local nats-server that carries the
# production overlay's users and subject permissions
# (deploy/overlays/production/users.conf), each service connecting as its own
# user, replays the built-in trace excerpt, and fails when a service does not
# become ready, the replay fails, or the server reports a permissions
# violation. Loopback only; ports are picked free.
#
# usage: scripts/check-nats-users.sh [BIN_DIR]   (default $CARGO_TARGET_DIR/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/apollo-ci-target}"
BIN_DIR="${1:-$CARGO_TARGET_DIR/debug}"
NATS_BIN="$(scripts/ensure-nats.sh)"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

read -r -a PORTS <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
NATS_PORT="${PORTS[0]}"
MONITOR_PORT="${PORTS[9]}"

for u in INGEST FORECASTER SCHEDULING ORCHESTRATION OPERATOR; do
  export "NATS_${u}_PASSWORD=pw-$RANDOM$RANDOM"
done
cp deploy/overlays/production/users.conf "$WORK/users.conf"
cat >"$WORK/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$MONITOR_PORT
jetstream { store_dir: "$WORK/js" }
include ./users.conf
CONF
"$NATS_BIN" -c "$WORK/nats.conf" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)

i=1
for svc in ingest forecaster scheduling orchestration; do
  user_var="NATS_${svc^^}_PASSWORD"
  grpc="${PORTS[$i]}"; metrics="${PORTS[$((i + 1))]}"; i=$((i + 2))
  declare "GRPC_${svc^^}=$grpc" "METRICS_${svc^^}=$metrics"
  env APOLLO_NATS_URL="nats://127.0.0.1:$NATS_PORT" APOLLO_NATS_USER="$svc" \
    APOLLO_NATS_PASSWORD="${!user_var}" APOLLO_GRPC_ADDR="127.0.0.1:$grpc" \
    APOLLO_METRICS_ADDR="127.0.0.1:$metrics" APOLLO_COLLECT_KUBERNETES=false \
    APOLLO_FORECAST_STEP=1s APOLLO_FORECAST_REFRESH_INTERVAL=1s APOLLO_FORECAST_MIN_HISTORY=3 \
    "$BIN_DIR/apollo-$svc" >"$WORK/$svc.log" 2>&1 &
  PIDS+=($!)
done

for svc in ingest forecaster scheduling orchestration; do
  port_var="METRICS_${svc^^}"
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:${!port_var}/readyz" >/dev/null 2>&1 && break
    if ! kill -0 "${PIDS[@]}" 2>/dev/null; then break; fi
    sleep 0.2
  done
  if ! curl -fsS "http://127.0.0.1:${!port_var}/readyz" >/dev/null 2>&1; then
    echo "check-nats-users: apollo-$svc did not become ready as NATS user '$svc'" >&2
    tail -n 20 "$WORK/$svc.log" "$WORK/nats.log" >&2
    exit 1
  fi
  echo "== apollo-$svc ready as NATS user '$svc'"
done

echo "== replay of the built-in excerpt"
if ! "$BIN_DIR/apolloctl" replay --pods 100 -o json --forecast-wait 90s \
  --ingest "http://127.0.0.1:$GRPC_INGEST" --scheduling "http://127.0.0.1:$GRPC_SCHEDULING" \
  --forecaster "http://127.0.0.1:$GRPC_FORECASTER" >"$WORK/replay.json" 2>"$WORK/replay.err"; then
  echo "check-nats-users: replay failed" >&2
  tail -n 20 "$WORK/replay.err" >&2
  exit 1
fi
echo "   placed $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["placed"])' "$WORK/replay.json") pods"

# Every stream a service publishes to must fill: insights (ingest),
# policies (scheduling), forecasts (forecaster, once it has a few steps of
# history). Polled from the server's monitoring endpoint, bounded.
streams() {
  curl -fsS "http://127.0.0.1:$MONITOR_PORT/jsz?accounts=true&streams=true" | python3 -c '
import json, sys
counts = {}
for acc in json.load(sys.stdin).get("account_details", []):
    for st in acc.get("stream_detail", []):
        counts[st["name"]] = st["state"]["messages"]
want = ["APOLLO_INSIGHT", "APOLLO_POLICY", "APOLLO_FORECAST"]
print(" ".join("%s=%d" % (n, counts.get(n, 0)) for n in want))
sys.exit(0 if all(counts.get(n, 0) > 0 for n in want) else 1)'
}
for _ in $(seq 150); do
  if streams >/dev/null; then break; fi
  sleep 0.4
done
if ! COUNTS="$(streams)"; then
  echo "check-nats-users: a stream stayed empty: $COUNTS" >&2
  grep -i 'violation' "$WORK"/*.log >&2 || true
  exit 1
fi
echo "   stream messages: $COUNTS"
if grep -E 'Publish Violation|Subscription Violation|[Pp]ermissions [Vv]iolation' "$WORK"/*.log >&2; then
  echo "check-nats-users: a service used a subject its NATS user may not" >&2
  exit 1
fi
echo "ok -- every service ran as its own NATS user without a permissions violation"
