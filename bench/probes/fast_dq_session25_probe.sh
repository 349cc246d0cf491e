#!/bin/bash
# Where the fast dkdv's time goes (not run yet: session 25's device starts were refused after its
# first call). Three builds of bench/probes/fast_dq_session25.patch into carry/:
#   carry/cs/flashbias      as patched
#   carry/nosum/flashbias   with `#define FLASHBIAS_FAST_DQ_SUMS 0` after `#pragma once` in
#                           templates/sm90/bwd_kernel.cuh (no stage, no bulk reductions)
#   carry/noprod/flashbias  with that and `#define FLASHBIAS_FAST_DQ_PRODUCTS 0` (no dQ products)
# (ninja -C build flashbias after each edit; strip the copies; take the defines out again). The
# last two compute wrong gradients: timing only. Copy to carry/run2.sh; carry ["carry"]; about
# 2 minutes. Reading: noprod near cs's 4.1 ms (seed_n16k dkdv, ncu) says the two-warpgroup
# structure binds; nosum far under cs says the sums' traffic does.
cd "$(dirname "$0")/.."
S=$SECONDS
T="bm=128,bn=128,w=8,s=2,step=64,tma=1,dqdefer=2"
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== fwd+bwd ms: det | cs | nosum | noprod"
for p in "b=2,h=4,n=16384,d=32,r=8" "b=2,h=4,n=16384,d=32,r=8" "b=256,h=4,n=384,d=32,r=16" "b=4,h=16,n=4096,d=64,r=16"; do
  line="$p"
  for l in det cs nosum noprod; do
    if [ $l = det ]; then c=(carry/cs/flashbias check -p $p --backward); else c=(carry/$l/flashbias check -p $p --backward --fast --config "$T"); fi
    v=$(timeout 40 "${c[@]}" --time-only --repeat 2 2>&1 | awk '/TIMED/{for (i = 1; i <= NF; ++i) if ($i == "fwd+bwd") printf "%s ", $(i + 1)}')
    line="$line | $l $v"
  done
  echo "$line"
done
echo "t=$((SECONDS-S))s"
echo "== ncu seed_n16k, one launch each"
for l in cs nosum noprod; do
  timeout 60 ncu --kernel-name "regex:bwd_dkdv" --launch-count 1 --section SpeedOfLight --section Occupancy \
    carry/$l/flashbias check -p "b=2,h=4,n=16384,d=32,r=8" --backward --fast --config "$T" --time-only > $OUT/ncu_$l.txt 2>&1
  echo "$l: $(grep -E 'Duration|Compute \(SM\)|L2 Cache Throughput|L1/TEX Cache|Achieved Occupancy' $OUT/ncu_$l.txt | awk '{print $1,$2,$NF}' | paste -sd' ')"
done
echo "t=$((SECONDS-S))s"
