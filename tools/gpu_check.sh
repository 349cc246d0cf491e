#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, over binaries built on the development
# machine and carried in `carry/` (tools/pack_carry.sh): the gpu test label, compute-sanitizer
# memcheck and racecheck on the small [sanitize] problems, the demo, and (with --bench) the peer
# benchmark. Logs go to $OUT (or ./gpu-logs).
#   tools/gpu_check.sh [--tests] [--sanitize] [--demo] [--bench "bench args"]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-logs}"; mkdir -p "$OUT"
C=carry
export FLASHBIAS_LIB="$PWD/$C/libflashbias.so"
status=0
run() {  # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$(date +%s)
  # Bounded: a kernel that hangs (a barrier never completing) costs one step, not the call.
  timeout "${STEP_TIMEOUT:-900}" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "=== $name: TIMEOUT after ${STEP_TIMEOUT:-900} s"
  tail -n 40 "$OUT/$name.log"
  echo "=== $name: exit $rc in $(( $(date +%s) - t0 )) s"
  [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
"$C/flashbias" info
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) run gpu_tests "$C/flashbias_tests" --require-gpu "[gpu]~[sanitize]" ;;
    --tests-only) shift; run gpu_tests "$C/flashbias_tests" --require-gpu "$1" ;;
    --sanitize)
      run memcheck compute-sanitizer --tool memcheck --error-exitcode 9 "$C/flashbias_tests" "[sanitize]"
      run racecheck compute-sanitizer --tool racecheck --racecheck-report all --error-exitcode 9 "$C/flashbias_tests" "[sanitize]"
      ;;
    --demo) run demo "$C/flashbias" demo ;;
    --bench) shift; PYTHONUNBUFFERED=1 run bench python3 bench/peers.py --json "$OUT/bench.json" $1 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
exit $status
