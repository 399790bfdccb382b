#!/usr/bin/env bash
# Runs every fuzz target (fuzz/) with the stable driver, bounded in time:
#   scripts/fuzz.sh                      # 30 s per target
#   scripts/fuzz.sh --seconds 600 nats_cluster_insight
# A panic or a slow input is saved under fuzz/artifacts/<target>/ and the
# script exits 1. Other flags: see fuzz/src/bin/apollo-fuzz.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --locked --manifest-path fuzz/Cargo.toml --bin apollo-fuzz -- \
  --corpus fuzz/corpus --artifacts fuzz/artifacts "$@"
