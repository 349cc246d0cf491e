#!/bin/bash
# Issue 2, the next GPU call in one command (about 6-8 minutes): first the correctness owed by the
# session-27 change (look-ahead tiles of 32 keys with the lean prologue and walked loads, compiled
# but never run), then their A/B against the portable heuristic on the d32 rows.
#   1. the d32 tiles test (every legal tile of two d32 problems, these included) and the d72 one
#      (narrow chunks, bf16);
#   2. memcheck and racecheck on one such tile (partial first tile, several walked ones);
#   3. bench/probes/portable_ahead_narrow.sh.
# Needs carry/new/flashbias and carry/flashbias_tests (strip them) and $OUT. Next, in a second
# call: BUDGET=150 bench/probes/portable_tune_d32.sh tune, and its peers (see that script).
cd "$(dirname "$0")/../.."
T=carry/flashbias_tests
F=carry/new/flashbias
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 300 "$T" "[gpu][forward][tiles]" > "$OUT/tiles.txt" 2>&1
echo "tiles rc=$?"; tail -n 3 "$OUT/tiles.txt"
cfg=bm=128,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=3
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "$F" check --portable \
    -p b=1,h=2,nq=150,nk=200,d=32,r=8 --config $cfg > "$OUT/$tool.txt" 2>&1
  echo "$tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$OUT/$tool.txt" | head -3
done
timeout 240 bench/probes/portable_ahead_narrow.sh | tee "$OUT/ab_narrow.txt"
