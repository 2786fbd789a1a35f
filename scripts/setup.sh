#!/usr/bin/env bash
# Installs everything hrrl_jax needs into ./.venv (idempotent): Debian's Fashion-MNIST files where apt
# is available, then the Python packages from requirements.txt and the package itself (editable).
# PYTHON picks the interpreter (default python3), VENV the environment's folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist \
    || echo "warning: could not install dataset-fashion-mnist; fashion_mnist will need tfds' download." >&2
fi

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
