cd "$(dirname "$0")/.." 2>/dev/null || true
for p in "b=2,h=4,n=4096,d=32,r=8" "b=2,h=4,n=16384,d=32,r=8" "b=1,h=50,n=8192,d=32,r=2,mask=causal" "b=4,h=16,n=4096,d=64,r=16" "b=2,h=16,n=8192,d=128,r=16" "b=2,h=16,n=8192,d=128,r=16,mask=causal" "b=256,h=4,n=384,d=32,r=16"; do
  timeout 30 carry/flashbias check -p "$p" --time --rows 16 2>&1 | awk -v p="$p" '/^b=/{cfg=$2} /rel_l2/{ok=$NF} /time/{print p, cfg, $2, $3, ok}'
done
STEP_TIMEOUT=400 bash tools/gpu_check.sh --tests-only "[forward]" --sanitize 2>&1 | grep -E "===|passed|failed|SUMMARY|FAILED"
