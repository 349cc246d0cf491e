#!/usr/bin/env bash
# Checks and times every legal tile of each benchmark case (GPU machine). Output: one line per
# tile with its time; used to set the heuristic and to verify the tuner.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-carry/flashbias}"
cases=(
  "seed_n4k b=2,h=4,n=4096,d=32,r=8"
  "seed_n16k b=2,h=4,n=16384,d=32,r=8"
  "alibi_gpt2 b=1,h=50,n=8192,d=32,r=2,mask=causal"
  "llm_d64 b=4,h=16,n=4096,d=64,r=16"
  "llm_d128 b=2,h=16,n=8192,d=128,r=16"
  "llm_d128_causal b=2,h=16,n=8192,d=128,r=16,mask=causal"
  "af3_tri b=256,h=4,n=384,d=32,r=16"
)
for c in "${cases[@]}"; do
  set -- $c
  [ -n "${ONLY:-}" ] && [[ ",$ONLY," != *",$1,"* ]] && continue
  echo "## $1 $2"
  "$BIN" check -p "$2" --config all --time --rows 8 | awk '/^b=/{cfg=$2} /rel_l2/{ok=$NF} /time/{print cfg, $2, $3, $8, $9, ok}'
done
