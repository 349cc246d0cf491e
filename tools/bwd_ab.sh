#!/bin/bash
# A/B of two or more flashbias binaries (or backward tiles) on the fwd+bwd benchmark shapes,
# alternating in one session on the GPU machine:
#   tools/bwd_ab.sh "label=binary[:config]" "label=binary[:config]" ...
# config: a backward tile for --config (bm=64,bn=64,w=4,s=3,step=48,tma=1,...); without one, the
# dispatcher's. Prints "case label fwd+bwd MS bwd MS" per timed run: ROUNDS (2) alternating rounds,
# REPEAT (5) runs per process (check --backward --time-only --repeat, fresh inputs each, median of
# ten launches per run). CASES="1 5": only those cases (line numbers below).
# Compare the fwd+bwd column: on llm_d64 the "backward alone" figure is bimodal from one process to
# the next (2.40 or 2.59-2.72 ms, both libraries; docs/PERF_NOTES.md, sm90 step 22).
cd "$(dirname "$0")/.."
n=0
while read -r p; do
  n=$((n + 1))
  [ -n "${CASES:-}" ] && [[ " $CASES " != *" $n "* ]] && continue
  for round in $(seq "${ROUNDS:-2}"); do
    for spec in "$@"; do
      label=${spec%%=*}; rest=${spec#*=}; bin=${rest%%:*}; cfg=${rest#*:}
      args=()
      [ "$cfg" != "$rest" ] && args=(--config "$cfg")
      timeout 120 "$bin" check -p "$p" --backward --time-only --repeat "${REPEAT:-5}" "${args[@]}" 2>&1 |
        awk -v p="$p" -v l="$label" '/TIMED/{for (i = 1; i <= NF; ++i) { if ($i == "fwd+bwd") f = $(i + 1); if ($i == "alone") b = $(i + 1) }
                                            print p, l, "fwd+bwd", f, "bwd", b}
                                     /rror|FAIL/{print p, l, $0}'
    done
  done
done <<'CASES_END'
b=2,h=4,n=16384,d=32,r=8
b=4,h=16,n=4096,d=64,r=16
b=2,h=16,n=8192,d=128,r=16
b=2,h=16,n=8192,d=128,r=16,mask=causal
b=256,h=4,n=384,d=32,r=16
CASES_END
