#!/usr/bin/env bash
# Makes sure a nats-server binary is available (Debian/Ubuntu: apt package
# nats-server). Prints its path.
set -euo pipefail
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
echo "nats-server not found: install it (https://docs.nats.io/running-a-nats-service/introduction/installation) or set NATS_URL" >&2
exit 1
