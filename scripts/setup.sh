#!/usr/bin/env bash
# Fresh-machine setup: system GL libraries for headless MuJoCo rendering, a virtual
# environment in .venv, and the project with its default extras (EXTRAS=... picks others).
# torch is pinned through constraints.txt (CPU wheel 2.13.0 on these machines).
#
# CALVIN: calvin_env is on no package registry. When a git bundle of it is at $CALVIN_BUNDLE
# (default ../shared/vendor/calvin_env.bundle, beside this checkout; CALVIN_BUNDLE= skips it),
# it is cloned into .venv/src/calvin_env (where pip keeps editable checkouts; a calvin_env
# folder in the working directory would shadow the package) and installed in editable mode
# with the `calvin` extra. Without a bundle CALVIN is skipped with one line saying so.
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

extras=${EXTRAS:-metaworld,libero,models,distributed,test}
install=(-e ".[$extras]")
bundle=${CALVIN_BUNDLE-../shared/vendor/calvin_env.bundle}
calvin_src=.venv/src/calvin_env
calvin=""
if [ -z "$bundle" ] || [ ! -f "$bundle" ]; then
  echo "CALVIN skipped: no calvin_env bundle at ${bundle:-(CALVIN_BUNDLE is empty)}; docs/calvin.md says how to install it"
elif ! command -v git >/dev/null 2>&1; then
  echo "CALVIN skipped: git is not installed (calvin_env runs from a git checkout)"
else
  if [ ! -d "$calvin_src/.git" ]; then
    rm -rf "$calvin_src"
    git clone -q "$bundle" "$calvin_src"  # its tacto/ submodule stays empty: only tactile cameras need it
  fi
  install=(-e ".[$extras,calvin]" -e "$calvin_src")
  calvin=$(git -C "$calvin_src" rev-parse --short HEAD)
fi
.venv/bin/python -m pip install -q -c constraints.txt "${install[@]}"
[ -z "$calvin" ] || echo "calvin_env $calvin installed from $calvin_src"
echo "setup done: $(.venv/bin/python -c 'import harness; print("harness", harness.__version__)')"
