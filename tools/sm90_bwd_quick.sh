#!/bin/bash
# Times chosen backward tile configs on one problem (GPU machine): forward + backward and the
# backward alone, per config. Each run is bounded by a timeout.
#   tools/sm90_bwd_quick.sh "problem" "cfg1" "cfg2" ...
C=${BIN:-carry/flashbias}
p=$1; shift
echo "## $p"
for cfg in "$@"; do
  timeout 60 $C check -p "$p" --backward --time-only --config "$cfg" > /tmp/qb.log 2>&1
  rc=$?
  awk -v cfg="$cfg" '/TIMED/{for(i=1;i<=NF;i++) if($i=="fwd+bwd") fb=$(i+1); print "   ", cfg, "fwd+bwd", fb, "bwd", $(NF-1)} /rror|FAIL/{print "   ", cfg, $0}' /tmp/qb.log
  [ $rc -eq 124 ] && echo "    $cfg TIMEOUT"
done
