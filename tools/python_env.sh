#!/usr/bin/env bash
# Prints the path of a Python interpreter that has PyTorch, pytest and numpy, for tests/python;
# progress goes to stderr. Order: python3 itself when it has them; else a virtual environment in
# build/python-venv (made with --system-site-packages, so whatever python3 has is reused; kept
# between runs) with the missing ones installed by pip: torch from PyTorch's CPU wheel index when
# that is reachable (about 200 MB), else from PyPI. pip's own cache makes a re-install after a
# fresh clone an unpack, not a download.
set -euo pipefail
cd "$(dirname "$0")/.."

has_deps() { "$1" -c "import torch, pytest, numpy" >/dev/null 2>&1; }

if ! command -v python3 >/dev/null; then
  echo "python_env: python3 is not installed" >&2
  exit 1
fi
if has_deps python3; then
  command -v python3
  exit 0
fi

VENV="${FLASHBIAS_PY_VENV:-build/python-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv --system-site-packages "$VENV" >/dev/null 2>&1; then
    # Debian ships venv apart from python3.
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "python_env: installing python3-venv" >&2
    $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >&2
    rm -rf "$VENV"
    python3 -m venv --system-site-packages "$VENV" >&2
  fi
fi
PY="$VENV/bin/python"
if has_deps "$PY"; then
  echo "$PY"
  exit 0
fi
pip=("$PY" -m pip install -q --disable-pip-version-check)
"$PY" -c "import pytest" 2>/dev/null || "${pip[@]}" pytest >&2
"$PY" -c "import numpy" 2>/dev/null || "${pip[@]}" numpy >&2
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "python_env: installing PyTorch into $VENV (once; later runs reuse it)" >&2
  "${pip[@]}" --retries 0 --timeout 10 torch --index-url https://download.pytorch.org/whl/cpu >&2 2>/dev/null ||
    "${pip[@]}" torch >&2
fi
has_deps "$PY" || { echo "python_env: PyTorch, pytest or numpy still missing in $VENV" >&2; exit 1; }
echo "$PY"
