#!/usr/bin/env bash
# The test command: install dependencies, build, run every test label (cpu, nvrtc, gpu).
# Without a GPU the gpu label is reported as skipped, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
ctest --test-dir build --output-on-failure "$@"
