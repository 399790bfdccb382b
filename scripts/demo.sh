#!/usr/bin/env bash
# APOLLO's main job on this machine: builds the binaries, then `apolloctl demo`
# starts nats-server with JetStream and the four services, replays the Alibaba
# GPU trace excerpt shipped in the repository through them and narrates what
# the engines decide, ending with a summary.
#
#   scripts/demo.sh [apolloctl demo flags...]   e.g. --short, --pods 0 --follow
#
# APOLLO_BUILD_PROFILE=dev uses a debug build (CI reuses its test build).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PROFILE="${APOLLO_BUILD_PROFILE:-release}"
NATS_BIN="$(scripts/ensure-nats.sh)"
export PATH="$(dirname "$NATS_BIN"):$PATH"
echo "== building the binaries ($PROFILE; the first build takes several minutes)" >&2
cargo build --profile "$PROFILE" --quiet --bins
DIR="$PROFILE"
[ "$PROFILE" = "dev" ] && DIR=debug
exec "${CARGO_TARGET_DIR:-$ROOT/target}/$DIR/apolloctl" demo "$@"
