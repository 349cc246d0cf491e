#!/usr/bin/env bash
# The test command: install dependencies, build, run every test label (cpu, nvrtc, gpu), then the
# Python package's tests (tests/python: argument checks, library discovery, the C struct layout,
# the tuning ABI's errors; the GPU tests skip, saying so, without a GPU).
# Without a GPU the gpu label is reported as skipped, with the reason.
# FLASHBIAS_SKIP_PYTHON=1 leaves the Python tests out (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
status=0
ctest --test-dir build --output-on-failure "$@" || status=$?

if [ "${FLASHBIAS_SKIP_PYTHON:-0}" = 1 ]; then
  echo "test: FLASHBIAS_SKIP_PYTHON=1: the Python tests (tests/python) were not run"
  exit $status
fi
py_status=0
PY="$(tools/python_env.sh)" || py_status=$?
if [ $py_status -eq 0 ]; then
  "$PY" -m pytest tests/python -q -rs -p no:cacheprovider || py_status=$?
else
  echo "test: could not set up Python with PyTorch and pytest for tests/python (see above)" >&2
fi
[ $py_status -eq 0 ] || status=1
exit $status
