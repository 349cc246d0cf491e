#!/bin/bash
# A/B of two flashbias binaries (or of knob settings) on the forward benchmark shapes, alternating
# in one session on the GPU machine:
#   tools/fwd_ab.sh "label=binary[:knobs]" "label=binary[:knobs]" ...
# knobs are appended to each case's base tile, the heuristic's choice on an H100 (session 7); a
# later knob of the same name wins ("-" alone: the dispatcher's own tile).
# Prints "case label ms" per run; two rounds. PORTABLE=1: the portable family (--portable) with
# its own heuristic's tiles as the bases; CASES="2 7": only those cases (line numbers below);
# FLUSH=1: every timed run after an overwrite of twice the L2 (check --flush-l2), as
# bench/peers.py and the tuner time, instead of back to back with warm inputs.
cd "$(dirname "$0")/.."
flags=()
[ "${PORTABLE:-0}" = 1 ] && flags=(--portable)
[ "${FLUSH:-0}" = 1 ] && flags+=(--flush-l2)
n=0
while read -r p base pbase; do
  n=$((n + 1))
  [ -n "${CASES:-}" ] && [[ " $CASES " != *" $n "* ]] && continue
  [ "${PORTABLE:-0}" = 1 ] && base=$pbase
  for round in 1 2; do
    for spec in "$@"; do
      label=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; knobs=${rest#*:}
      [ "$knobs" = "$rest" ] && knobs=-
      cfg=()
      [ "$knobs" != "-" ] && cfg=(--config "$base,$knobs")
      timeout 60 "$bin" check -p "$p" "${flags[@]}" "${cfg[@]}" --time --rows 8 2>&1 |
        awk -v p="$p" -v l="$label" '/time|rror|FAIL/{print p, l, $0}'
    done
  done
done <<'CASES_END'
b=2,h=4,n=4096,d=32,r=8 bm=128,bn=64,w=12,s=3,minblocks=2,pvoverlap=0 bm=128,bn=128,w=4,s=1
b=2,h=4,n=16384,d=32,r=8 bm=128,bn=64,w=12,s=3,minblocks=2,pvoverlap=0 bm=128,bn=128,w=4,s=1
b=1,h=50,n=8192,d=32,r=2,mask=causal bm=192,bn=192,w=16,s=2,pvoverlap=0 bm=128,bn=128,w=4,s=1
b=4,h=16,n=4096,d=64,r=16 bm=192,bn=128,w=16,s=3,pvoverlap=2,pingpong=1 bm=128,bn=64,w=4,s=2
b=2,h=16,n=8192,d=128,r=16 bm=128,bn=128,w=12,s=2,maxselect=1 bm=128,bn=64,w=4,s=1,minblocks=2
b=2,h=16,n=8192,d=128,r=16,mask=causal bm=128,bn=128,w=12,s=2,pvoverlap=0,pingpong=1 bm=128,bn=64,w=4,s=1,minblocks=2
b=256,h=4,n=384,d=32,r=16 bm=64,bn=64,w=8,s=3,minblocks=4,pvoverlap=0 bm=128,bn=32,w=4,s=2,minblocks=4,mmasum=1
CASES_END
