#!/usr/bin/env bash
# Copies the binaries the GPU machine needs into carry/ (git-ignored; the device tool carries it).
set -euo pipefail
cd "$(dirname "$0")/.."
B="${1:-build}"
mkdir -p carry
cp "$B/flashbias" "$B/tests/flashbias_tests" "$B/runtime/libflashbias.so"* carry/ 2>/dev/null || true
strip carry/flashbias carry/flashbias_tests 2>/dev/null || true
du -sh carry
