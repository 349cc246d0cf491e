#!/usr/bin/env bash
# The main job: install dependencies, build, run `flashbias demo` (GPU: run and check the demo
# problems; no GPU: compile the default variants and print the compile report).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec build/flashbias demo "$@"
