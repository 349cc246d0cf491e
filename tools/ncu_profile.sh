#!/usr/bin/env bash
# Source-level stall profile of one kernel of a `flashbias check` run, on the GPU machine:
#   tools/ncu_profile.sh NAME KERNEL_REGEX -- check args...
# Writes $OUT/NAME.details.txt (throughput, warp state, launch statistics) and $OUT/NAME.sass.csv
# (per-SASS-instruction stall samples; `--page source --print-source sass`). The kernel is
# profiled on its third launch (after the warm-up runs of --time).
# First run in session 15 (2026-12-07, H100, seed_n16k, about 40 s): its output, with a per-opcode
# stall summary of the csv, is bench/probes/ncu_seed_n16k_splitloop_h100_2026-12-07.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-logs}"; mkdir -p "$OUT"
name=$1; regex=$2; shift 3
export FLASHBIAS_LIB="$PWD/carry/libflashbias.so"
ncu --kernel-name "regex:$regex" --launch-skip 2 --launch-count 1 --clock-control none \
    --section SpeedOfLight --section WarpStateStats --section SourceCounters \
    --section LaunchStats --section Occupancy --section ComputeWorkloadAnalysis \
    --section InstructionStats --import-source no -f -o "$OUT/$name" carry/flashbias check "$@" \
    > "$OUT/$name.ncu.log" 2>&1 || { tail -20 "$OUT/$name.ncu.log"; exit 1; }
ncu --import "$OUT/$name.ncu-rep" --page details > "$OUT/$name.details.txt"
ncu --import "$OUT/$name.ncu-rep" --page source --csv --print-source sass > "$OUT/$name.sass.csv"
rm -f "$OUT/$name.ncu-rep"
grep -E "Duration|Issue Slots Busy|Executed Ipc|Warp Cycles Per Issued|Registers|Achieved Occupancy|Compute \(SM\) Throughput" "$OUT/$name.details.txt"
