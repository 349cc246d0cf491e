#!/bin/bash
# Issue 2, the next GPU call in one command (about 6-8 minutes): first the correctness owed by the
# session-27 change (look-ahead tiles of 32 keys with the lean prologue and walked loads, compiled
# but never run), then their A/B against the portable heuristic on the d32 rows.
#   1. the d32 tiles test (every legal tile of two d32 problems, these included) and the d72 one
#      (narrow chunks, bf16);
#   2. memcheck and racecheck on one such tile (partial first tile, several walked ones);
#   3. bench/probes/portable_ahead_narrow.sh.
# Needs carry/{flashbias,flashbias_tests} (tools/pack_carry.sh; CARRY=dir for another folder)
# and $OUT. Next, in a second call: BUDGET=150 bench/probes/portable_tune_d32.sh tune, then
# its peers step (see that script).
cd "$(dirname "$0")/../.."
T=${CARRY:-carry}/flashbias_tests
F=${CARRY:-carry}/flashbias
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
# One test case per process, so that a timeout loses only its own report.
timeout 200 "$T" "every legal d32 tile computes the same function" > "$OUT/tiles_d32.txt" 2>&1
echo "tiles d32 rc=$?"; tail -n 3 "$OUT/tiles_d32.txt"
timeout 200 "$T" "every legal tile configuration computes the same function" > "$OUT/tiles_d72.txt" 2>&1
echo "tiles d72 rc=$?"; tail -n 3 "$OUT/tiles_d72.txt"
cfg=bm=128,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=3
for tool in memcheck racecheck; do
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "$F" check --portable \
    -p b=1,h=2,nq=150,nk=200,d=32,r=8 --config $cfg > "$OUT/$tool.txt" 2>&1
  echo "$tool rc=$?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$OUT/$tool.txt" | head -3
done
timeout 240 bench/probes/portable_ahead_narrow.sh | tee "$OUT/ab_narrow.txt"
# Beside issue 2, if time is left (about a minute): the bf16 d32 backward on seed_n16k's shape.
# The two-warpgroup tile the fp16 heuristic takes (48-row steps) ran 5% faster in bf16 too
# (session 26) but spills 16-136 bytes there; 32-row steps compile clean (113-120 registers).
p=b=2,h=4,n=16384,d=32,r=8,dtype=bf16
for round in 1 2; do
  for cfg in - bm=128,bn=128,w=8,s=2,step=32,minblocks=2 bm=128,bn=128,w=8,s=2,step=32,minblocks=2,tma=1 \
             bm=128,bn=128,w=8,s=2,step=48,minblocks=2,tma=1; do
    c=(); [ "$cfg" != - ] && c=(--config "$cfg")
    timeout 60 "$F" check -p $p --backward --time-only --flush-l2 "${c[@]}" 2>&1 | grep -E "TIMED|rror" |
      sed "s/^/bf16-bwd $cfg /" | cut -c1-200
  done
done
