#!/usr/bin/env bash
# Install stowfs on Debian/Ubuntu: system packages (FUSE 3), a venv in .venv, the package.
# --test also installs the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS="fuse3 libfuse3-dev pkg-config python3-venv python3-dev gcc attr curl"
[ "${1:-}" = "--test" ] && PKGS="$PKGS rsync"  # the mount tests drive it
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq $missing >/dev/null
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
  .venv/bin/pip install -q -e '.[test]'
else
  .venv/bin/pip install -q -e .
fi
echo "stowfs installed: $(pwd)/.venv/bin/stowfs"
