#!/bin/bash
# Times chosen forward tile configs on the benchmark shapes (GPU machine). Each run is bounded by
# a timeout so that one hanging kernel cannot take the whole call.
#   tools/sm90_quick.sh "problem" "cfg1" "cfg2" ...
C=${BIN:-carry/flashbias}
p=$1; shift
echo "## $p"
for cfg in "$@"; do
  timeout 60 $C check -p "$p" --config "$cfg" --time --rows 16 > /tmp/q.log 2>&1
  rc=$?
  awk -v cfg="$cfg" '/rel_l2/{ok=$NF} /time/{print "   ", cfg, $2, $3, $8, $9, ok} /rror|FAIL/{print "   ", cfg, $0}' /tmp/q.log
  [ $rc -eq 124 ] && echo "    $cfg TIMEOUT"
done
