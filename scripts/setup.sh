#!/usr/bin/env bash
# Fresh-machine setup: system GL libraries for headless MuJoCo rendering, a virtual
# environment in .venv, and the project with the Meta-World and test extras.
# torch is pinned through constraints.txt (CPU wheel 2.13.0 on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libgl1 libglib2.0-0"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${EXTRAS:-metaworld,libero,models,distributed,test}]"
echo "setup done: $(.venv/bin/python -c 'import harness; print("harness", harness.__version__)')"
