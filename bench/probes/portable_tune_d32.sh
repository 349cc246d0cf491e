#!/bin/bash
# Issue 2, next on a GPU: tune the portable forward on the d32 benchmark rows over a long budget
# (only af3_tri's portable space was tuned before, 128 of 852 candidates in 120 s), then run the
# peers in the same call with the stored winners (libflashbias.so reads the store by default).
# Session 26 found the sm90 backward's tune 7% ahead of its hand-swept heuristic on seed_n16k.
#   [BUDGET=s] bench/probes/portable_tune_d32.sh [tune|peers]   (two calls: each fits the 10-minute limit)
# Needs carry/{flashbias,libflashbias.so} (tools/pack_carry.sh; CARRY=dir for another folder) and $OUT.
cd "$(dirname "$0")/../.."
C=${CARRY:-carry}
F=$C/flashbias
export FLASHBIAS_CACHE_DIR=$OUT/cache
[ -n "${CACHE_FROM:-}" ] && mkdir -p "$OUT/cache" && cp "$CACHE_FROM"/flashbias.db "$OUT/cache/"
case "${1:-tune}" in
  tune)
    for c in seed_n4k seed_n16k af3_tri; do
      timeout $((${BUDGET:-170} + 20)) $F tune --portable --preset $c --budget ${BUDGET:-170} > "$OUT/tune_$c.txt" 2>&1
      echo "$c rc=$?"; grep -v '^\[1/1\]' "$OUT/tune_$c.txt" | tail -3 | cut -c1-220
    done ;;
  peers)
    FLASHBIAS_LIB=$PWD/$C/libflashbias.so PYTHONUNBUFFERED=1 timeout 400 python3 bench/peers.py --portable \
      --cases seed_n4k,seed_n16k,af3_tri --json "$OUT/peers_portable.json" 2>&1 | grep -E "ours|rror" | cut -c1-220 ;;
esac
