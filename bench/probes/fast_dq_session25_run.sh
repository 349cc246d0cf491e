#!/bin/bash
# Device script for bench/probes/fast_dq_session25.patch (the fast backward with dQ's columns
# split between the dkdv CTA's two warpgroups). Set-up here, on a checkout of main:
#   git apply bench/probes/fast_dq_session25.patch && python3 tools/gen_wgmma.py && ninja -C build
#   mkdir -p carry/cs && cp build/flashbias build/tests/flashbias_tests carry/cs/ && strip carry/cs/*
# the per-thread red.global form of the sums: `#define FLASHBIAS_FAST_DQ_RED` after `#pragma once`
# in templates/sm90/bwd_kernel.cuh, ninja -C build flashbias, copy to carry/csred/, take it out;
# session 24's divergent form (for the A/B): build its patch
# (`git show bdd6f8e:bench/probes/fast_dq_session24.patch`) the same way into carry/fast/. Run on an H100 in session 25 (about 2 minutes; output in
# bench/ab_session25_h100_2026-12-07.txt). Copy this script to carry/run.sh and run it with
# carry ["carry"]; it prints the elapsed time after each part.
# the fast dkdv with dQ's columns split between the two warpgroups (cs), against the
# deterministic pair and session 24's divergent form (fast). Binaries in carry/.
cd "$(dirname "$0")/.."
S=$SECONDS
CS=carry/cs/flashbias; CR=carry/csred/flashbias; OLD=carry/fast/flashbias
T="bm=128,bn=128,w=8,s=2,step=64,tma=1"
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== correctness, column split (bulk form), each placement"
for l in 0 2; do
  for p in "b=2,h=3,nq=1000,nk=777,d=64,r=16" "b=1,h=2,nq=700,nk=129,d=32,r=8,mask=causal" \
           "b=2,h=2,nq=200,nk=333,d=64,r=8,dtype=bf16,mask=causal" "b=2,h=3,n=256,d=32,r=16,qb=1n1r,kb=bn1r" \
           "b=1,h=1,nq=17,nk=1000,d=40,r=24,mask=causal" "b=1,h=2,nq=113,nk=113,d=32,r=0"; do
    o=$(timeout 30 $CS check -p "$p" --backward --fast --config "$T,dqdefer=$l" 2>&1)
    echo "dqdefer=$l $p: $(echo "$o" | grep -cE 'PASS') PASS $(echo "$o" | grep -E 'FAIL|rror' | cut -c1-160 | head -3)"
    echo "$o" >> $OUT/correct.txt
  done
done
for p in "b=2,h=3,nq=1000,nk=777,d=64,r=16" "b=2,h=2,nq=200,nk=333,d=32,r=32,dtype=bf16,mask=causal"; do
  o=$(timeout 30 $CR check -p "$p" --backward --fast --config "$T,dqdefer=2" 2>&1)
  echo "red $p: $(echo "$o" | grep -cE 'PASS') PASS $(echo "$o" | grep -E 'FAIL|rror' | cut -c1-160 | head -3)"
  o=$(timeout 30 $CS check -p "$p" --backward --fast 2>&1)
  echo "cs default config $p: $(echo "$o" | grep -cE 'PASS') PASS $(echo "$o" | grep -E 'FAIL|rror' | cut -c1-160 | head -3)"
done
echo "t=$((SECONDS-S))s"
echo "== gpu tests [fast] (column split)"
timeout 150 carry/cs/flashbias_tests "[fast]" > $OUT/tests_fast.txt 2>&1; echo "rc=$? $(tail -3 $OUT/tests_fast.txt | paste -sd' ' | cut -c1-200)"
grep -m3 -B2 -A8 "FAILED" $OUT/tests_fast.txt | cut -c1-160 | head -30
echo "t=$((SECONDS-S))s"
echo "== fwd+bwd ms: det | old fast dqdefer2 | cs 0 | cs 2 | cs red 2"
for p in "b=2,h=4,n=16384,d=32,r=8" "b=256,h=4,n=384,d=32,r=16" "b=4,h=16,n=4096,d=64,r=16"; do
  for round in 1 2; do
    line="$p"
    for l in det old2 0 2 red2; do
      case $l in
        det) c=($CS check -p $p --backward);;
        old2) c=($OLD check -p $p --backward --fast --config "$T,dqdefer=2");;
        red2) c=($CR check -p $p --backward --fast --config "$T,dqdefer=2");;
        *) c=($CS check -p $p --backward --fast --config "$T,dqdefer=$l");;
      esac
      v=$(timeout 40 "${c[@]}" --time-only --repeat 2 2>&1 | tee -a $OUT/timing_raw.txt |
          awk '/TIMED/{for (i = 1; i <= NF; ++i) if ($i == "fwd+bwd") printf "%s ", $(i + 1)}')
      line="$line | $l $v"
    done
    echo "$line"
  done
done
echo "t=$((SECONDS-S))s"
echo "== racecheck (fast, column split)"
for bin in $CS $CR; do
  f=$OUT/race_$(basename $(dirname $bin)).txt
  timeout 60 compute-sanitizer --tool racecheck --print-limit 10 $bin check -p "b=1,h=2,nq=200,nk=333,d=32,r=8" \
    --backward --fast --config "$T,dqdefer=2" > $f 2>&1
  echo "$bin: $(grep -E 'RACECHECK SUMMARY' $f) $(grep -cE 'PASS' $f) PASS"
  grep -m1 -A5 -E 'Race reported|hazard' $f | cut -c1-150
done
echo "t=$((SECONDS-S))s"
echo "== memcheck / racecheck on main's batched 2-byte factor copies (owed since session 23)"
for args in "--portable -p b=1,h=2,n=200,d=64,r=113" "-p b=1,h=2,n=200,d=32,r=113 --backward"; do
  for tool in memcheck racecheck; do
    [ $((SECONDS-S)) -gt 420 ] && { echo "skipped $tool $args: time"; continue; }
    timeout 80 compute-sanitizer --tool $tool $CS check $args > $OUT/san.txt 2>&1
    echo "$tool $args: $(grep -E 'SUMMARY' $OUT/san.txt) $(grep -cE 'PASS' $OUT/san.txt) PASS"
    cat $OUT/san.txt >> $OUT/san_all.txt
  done
done
echo "t=$((SECONDS-S))s"
echo "== per kernel (ncu, seed_n16k): deterministic pair against the column-split fast dkdv (dqdefer 2)"
for l in det 2; do
  [ $((SECONDS-S)) -gt 520 ] && { echo "skipped ncu $l: time"; continue; }
  if [ $l = det ]; then a=(--backward); else a=(--backward --fast --config "$T,dqdefer=2"); fi
  timeout 90 ncu --kernel-name "regex:bwd_(dkdv|dq)" --launch-skip 0 --launch-count 4 --section SpeedOfLight \
    $CS check -p "b=2,h=4,n=16384,d=32,r=8" "${a[@]}" --time-only > $OUT/ncu_$l.txt 2>&1
  echo "$l: $(grep -E '^  flashbias_bwd|Duration' $OUT/ncu_$l.txt | paste -sd' ' | cut -c1-300)"
done
echo "t=$((SECONDS-S))s"
