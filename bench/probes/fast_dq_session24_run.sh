#!/bin/bash
# Device script for bench/probes/fast_dq_session24.patch (not run: no GPU was lent in session 24).
# Set-up here: git apply the patch to main, python3 tools/gen_wgmma.py, ninja -C build; then
#   mkdir -p carry/fast && cp build/flashbias carry/fast/ && strip carry/fast/flashbias
# and, for the sums' per-thread atomic form, a second binary: put `#define FLASHBIAS_FAST_DQ_RED`
# after `#pragma once` in templates/sm90/bwd_kernel.cuh, ninja -C build, copy build/flashbias to
# carry/fastred/ (optional: the script skips it when absent), take the define out again.
# Copy this script to carry/run.sh; run it on the device with carry ["carry"].
# It times fwd+bwd of the deterministic mode against the fast mode's three placements of the
# deferred dQ product (dqdefer 0, 1, 2; 128-key dkdv CTAs of two warpgroups), checks the fast
# mode against fp64 and runs racecheck on it. Keep it first in a call: about 4 minutes.
cd "$(dirname "$0")/.."
F=carry/fast/flashbias
T="bm=128,bn=128,w=8,s=2,step=64,tma=1"
nvidia-smi --query-gpu=name --format=csv,noheader
R=carry/fastred/flashbias
labels="det 0 1 2"; [ -x $R ] && labels="$labels red2"
echo "== fwd+bwd ms: det | fast dqdefer=0 | 1 | 2 [| red form, dqdefer=2] (two rounds, two runs each)"
for p in "b=2,h=4,n=16384,d=32,r=8" "b=256,h=4,n=384,d=32,r=16" "b=4,h=16,n=4096,d=64,r=16"; do
  for round in 1 2; do
    line="$p"
    for l in $labels; do
      case $l in
        det) c=($F check -p $p --backward);;
        red2) c=($R check -p $p --backward --fast --config "$T,dqdefer=2");;
        *) c=($F check -p $p --backward --fast --config "$T,dqdefer=$l");;
      esac
      v=$(timeout 40 "${c[@]}" --time-only --repeat 2 2>&1 | tee -a $OUT/timing_raw.txt |
          awk '/TIMED/{for (i = 1; i <= NF; ++i) if ($i == "fwd+bwd") printf "%s ", $(i + 1)}')
      line="$line | $l $v"
    done
    echo "$line"
  done
done
echo "== correctness (fast, each placement)"
for l in 0 1 2; do
  for p in "b=2,h=3,nq=1000,nk=777,d=64,r=16" "b=1,h=2,nq=700,nk=129,d=32,r=8,mask=causal" \
           "b=2,h=2,nq=200,nk=333,d=64,r=8,dtype=bf16,mask=causal" "b=2,h=3,n=256,d=32,r=16,qb=1n1r,kb=bn1r"; do
    o=$(timeout 30 $F check -p "$p" --backward --fast --config "$T,dqdefer=$l" 2>&1)
    echo "dqdefer=$l $p: $(echo "$o" | grep -cE 'PASS') PASS $(echo "$o" | grep -E 'FAIL|rror' | cut -c1-150 | head -3)"
  done
done
echo "== racecheck (fast)"
for l in 0 2 red2; do
  bin=$F; d=$l; [ $l = red2 ] && { [ -x $R ] || continue; bin=$R; d=2; }
  f=$OUT/race_$l.txt
  timeout 60 compute-sanitizer --tool racecheck --print-limit 10 $bin check -p "b=1,h=2,nq=200,nk=333,d=32,r=8" \
    --backward --fast --config "$T,dqdefer=$d" > $f 2>&1
  echo "$l: $(grep -E 'RACECHECK SUMMARY' $f) $(grep -cE 'PASS' $f) PASS"
  grep -m1 -A5 -E 'Race reported|hazard' $f | cut -c1-150
done
echo "== memcheck / racecheck on main's batched 2-byte factor copies (owed since session 23)"
for args in "--portable -p b=1,h=2,n=200,d=64,r=113" "-p b=1,h=2,n=200,d=32,r=113 --backward" \
            "-p b=1,h=2,nq=150,nk=201,d=64,r=113,mask=causal --backward"; do
  for tool in memcheck racecheck; do
    timeout 150 compute-sanitizer --tool $tool $F check $args > $OUT/san.txt 2>&1
    echo "$tool $args: $(grep -E 'SUMMARY' $OUT/san.txt) $(grep -cE 'PASS' $OUT/san.txt) PASS"
    cat $OUT/san.txt >> $OUT/san_all.txt
  done
done
echo "== per kernel (ncu, seed_n16k): deterministic pair against the fast dkdv (dqdefer 2)"
for l in det 2; do
  if [ $l = det ]; then a=(--backward); else a=(--backward --fast --config "$T,dqdefer=2"); fi
  timeout 120 ncu --kernel-name "regex:bwd_(dkdv|dq)" --launch-skip 0 --launch-count 4 --section SpeedOfLight \
    $F check -p "b=2,h=4,n=16384,d=32,r=8" "${a[@]}" --time-only > $OUT/ncu_$l.txt 2>&1
  echo "$l: $(grep -E '^  flashbias_bwd|Duration' $OUT/ncu_$l.txt | paste -sd' ' | cut -c1-300)"
done
