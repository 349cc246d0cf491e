#!/bin/bash
# GPU machine: the forward gpu tests (sm90 family and the portable family on Hopper), then
# memcheck and racecheck on the [sanitize] problems. Each step bounded; logs under $OUT.
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}; mkdir -p "$OUT"
step() { local name=$1 t=$2; shift 2; local t0=$(date +%s); timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?;
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s"; grep -E "FAILED|failed|error|passed|ERROR SUMMARY|hazard|TIMEOUT" "$OUT/$name.log" | grep -v "^\s*$" | head -${LINES_PER:-20}; }
step forward 330 carry/flashbias_tests --require-gpu "[forward]"
step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 9 carry/flashbias_tests "[sanitize]"
step racecheck 120 compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 9 carry/flashbias_tests "[sanitize]"
