#!/bin/bash
# A/B of one knob on the benchmark shapes, alternating in one session (GPU machine):
#   tools/sm90_ab.sh "knob=a" "knob=b"   (appended to each case's heuristic-like base tile)
cd "$(dirname "$0")/.."
A=$1; B=$2
while read -r p base; do
  for round in 1 2; do
    for x in "$A" "$B"; do
      timeout 30 carry/flashbias check -p "$p" --config "$base,$x" --time --rows 8 2>&1 |
        awk -v p="$p" -v c="$base,$x" '/time/{print p, c, $2, $3} /rror/{print p, c, $0}'
    done
  done
done <<'CASES'
b=2,h=4,n=16384,d=32,r=8 bm=128,bn=64,w=12,s=2,minblocks=2
b=1,h=50,n=8192,d=32,r=2,mask=causal bm=192,bn=64,w=16,s=2
b=4,h=16,n=4096,d=64,r=16 bm=192,bn=128,w=16,s=2
b=2,h=16,n=8192,d=128,r=16 bm=128,bn=128,w=12,s=2
b=2,h=16,n=8192,d=128,r=16,mask=causal bm=128,bn=128,w=12,s=2
b=256,h=4,n=384,d=32,r=16 bm=128,bn=64,w=12,s=2,minblocks=2
CASES
