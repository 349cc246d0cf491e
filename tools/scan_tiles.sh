#!/bin/bash
# Compiles the heuristic's tile for a grid of keys (no GPU) and prints every one that spills or
# whose wgmma pipeline ptxas serialises:
#   tools/scan_tiles.sh [flashbias binary]
# Grid (override by environment): ARCHS="sm_90a", DIRS="fwd bwd", DTYPES="f16 bf16",
# DIMS="32 64 128 256", RANKS="1 2 3 ... 128", MASKS="none causal", JOBS=2.
B=${1:-build/flashbias}
ARCHS=${ARCHS:-sm_90a}; DIRS=${DIRS:-fwd bwd}; DTYPES=${DTYPES:-f16 bf16}; DIMS=${DIMS:-32 64 128 256}
RANKS=${RANKS:-0 1 2 3 4 6 8 12 16 24 32 33 48 64 66 72 96 100 112 127 128}; MASKS=${MASKS:-none causal}
for a in $ARCHS; do for dir in $DIRS; do for t in $DTYPES; do for d in $DIMS; do for r in $RANKS; do for m in $MASKS; do
  echo "$a $dir $t $d $r $m"
done; done; done; done; done; done |
  xargs -P "${JOBS:-2}" -L 1 sh -c '
    out=$("$0" gen --arch "$1" --direction "$2" --dtype "$3" -d "$4" -r "$5" --mask "$6" --emit resources 2>&1)
    err=""
    bad=$(printf "%s\n" "$out" | grep -E "^resources" | grep -vE "spill_st=0 spill_ld=0 stack=0 smem=[0-9]+ bar=[0-9]+( \(worst over the entries\))?$")
    # No resources line: the compile (or the key) failed; show the CLI'"'"'s error line.
    printf "%s\n" "$out" | grep -qE "^resources" || err=$(printf "%s\n" "$out" | grep -m1 -iE "error" || echo "no resources reported")
    [ -n "$bad$err" ] && printf "%s %s %s d%s r%s %s: %s | %s\n" "$1" "$2" "$3" "$4" "$5" "$6" \
      "$(printf "%s\n" "$out" | grep -E "^kernel" | sed "s/.*\///")" "$(printf "%s\n" "$bad$err" | tr -s " " | tr "\n" ";")"
    true' "$B"
