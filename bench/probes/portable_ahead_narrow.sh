#!/bin/bash
# Issue 2, for the next GPU call: the look-ahead loop (ahead=1) on narrow key tiles, against the
# portable heuristic's tiles on the three d32 rows that trail cuDNN (seed_n4k, seed_n16k, af3_tri).
#
# Why (docs/PERF_NOTES.md, sm80 forward, step 18): the look-ahead tile saved 13% on its own
# 128x64 tile (step 10), but at 255 registers it holds two CTAs (8 warps) per SM and spills on
# most ranks. On 32-key tiles its two score buffers are half as large: with the lean prologue and
# walked loads these tiles take since session 27, 164-168 registers without a spill (three CTAs,
# 12 warps per SM), 178-192 with two. None of these was ever timed; the only look-ahead tiles
# measured were 128x64, 128x128 and 64x128. Run the d32 part of the tiles test first:
#   carry/flashbias_tests "[gpu][forward][tiles]"   (every legal tile, these included)
#
# Two alternating rounds, L2 flushed before every timed run (as bench/peers.py times). Prints
# "case label ms". Needs carry/flashbias (tools/pack_carry.sh; CARRY=dir for another folder).
#   bench/probes/portable_ahead_narrow.sh
cd "$(dirname "$0")/../.."
F=${CARRY:-carry}/flashbias
run() {  # case-label problem label config ("-": the dispatcher's tile)
  local cfg=()
  [ "$4" != "-" ] && cfg=(--config "$4")
  timeout 60 "$F" check --portable --flush-l2 --time --rows 8 -p "$2" "${cfg[@]}" 2>&1 |
    awk -v c="$1" -v l="$3" '/time|rror|FAIL/{print c, l, $0}'
}
for round in 1 2; do
  for c in "seed_n4k b=2,h=4,n=4096,d=32,r=8" "seed_n16k b=2,h=4,n=16384,d=32,r=8"; do
    set -- $c
    run "$1" "$2" heuristic -
    # 168 registers, no spill (r8), three CTAs per SM
    run "$1" "$2" a32_mb3 bm=128,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=3
    # 178 registers, two CTAs
    run "$1" "$2" a32_mb2 bm=128,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=2
    # 64 rows, 16 per warp: 120 registers, four CTAs
    run "$1" "$2" a64x32_mb4 bm=64,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=4
  done
  p=b=256,h=4,n=384,d=32,r=16
  run af3_tri $p heuristic -
  run af3_tri $p a32_mb3 bm=128,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=3
  run af3_tri $p a32_mb3_nosum bm=128,bn=32,w=4,s=2,ahead=1,minblocks=3
  run af3_tri $p a32_mb2 bm=128,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=2
  run af3_tri $p a64x32_mb4 bm=64,bn=32,w=4,s=2,ahead=1,mmasum=1,minblocks=4
done
