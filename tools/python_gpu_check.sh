#!/usr/bin/env bash
# The Python package's tests on the GPU machine: tests/python (GPU tests included) against a given
# libflashbias.so with PYTHONPATH=python, then a summary: pass/fail counts, skips with their
# reasons, and the largest measured error against the fp64 reference per tensor and dtype.
#
#   tools/python_gpu_check.sh [--lib PATH] [--forward-only] [-- extra pytest args]
#   tools/python_gpu_check.sh --pack        # on the development machine: pytest into carry/pylib
#
# --lib: default carry/libflashbias.so (tools/pack_carry.sh), else build/runtime/libflashbias.so.
# pytest: the machine's own, else carry/pylib (the GPU machine has no network; --pack installs
# pytest there, pure Python, for the carry). Exit status: 0 only if no test failed and, unless
# --forward-only, the gradient tests ran (a library without the backward skips them: a failure here).
# Logs and the error table go to $OUT (default ./gpu-logs).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--pack" ]; then
  mkdir -p carry
  # Pure Python only (tomli built from source: its wheels are compiled per Python version), and the
  # backports pytest needs below Python 3.11, so the carry works whatever the GPU machine runs.
  python3 -m pip install -q --no-compile --target carry/pylib --no-binary tomli pytest exceptiongroup tomli || exit 1
  du -sh carry/pylib
  exit 0
fi

LIB=""
FORWARD_ONLY=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lib) LIB="$2"; shift ;;
    --forward-only) FORWARD_ONLY=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$LIB" ]; then
  for c in carry/libflashbias.so build/runtime/libflashbias.so; do
    [ -e "$c" ] && { LIB="$c"; break; }
  done
fi
if [ -z "$LIB" ] || [ ! -e "$LIB" ]; then
  echo "python_gpu_check: no libflashbias.so (give --lib PATH, or carry one with tools/pack_carry.sh)" >&2
  exit 2
fi

OUT="${OUT:-$PWD/gpu-logs}"; mkdir -p "$OUT"
export FLASHBIAS_LIB="$(realpath "$LIB")"
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import pytest" 2>/dev/null; then
  if [ -d carry/pylib ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/carry/pylib"
  else
    echo "python_gpu_check: pytest is not installed here and carry/pylib is missing (run $0 --pack on the development machine)" >&2
    exit 2
  fi
fi
# A fresh kernel cache: the tune/cache-only test must not depend on (or pollute) a real one.
export FLASHBIAS_CACHE_DIR="${FLASHBIAS_CACHE_DIR:-$(mktemp -d)}"
export FLASHBIAS_TEST_REPORT="$OUT/python_gpu_errors.jsonl"
rm -f "$FLASHBIAS_TEST_REPORT"

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
python3 - <<'EOF'
import torch, flashbias
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
print(f"libflashbias {flashbias.library_version()} at {flashbias.library_path()}, features: {flashbias.library_features()}")
EOF
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "python_gpu_check: PyTorch sees no CUDA GPU here: the GPU tests would all skip" >&2
  exit 1
fi

t0=$(date +%s)
python3 -m pytest tests/python -rs -q -p no:cacheprovider --junitxml="$OUT/python_gpu.xml" "${EXTRA[@]}" \
  > "$OUT/python_gpu.log" 2>&1
rc=$?
tail -n 60 "$OUT/python_gpu.log"
echo "=== python tests: exit $rc in $(( $(date +%s) - t0 )) s (log $OUT/python_gpu.log)"

python3 - "$FLASHBIAS_TEST_REPORT" <<'EOF'
import json, sys
from collections import defaultdict
try:
    rows = [json.loads(l) for l in open(sys.argv[1])]
except FileNotFoundError:
    rows = []
worst = defaultdict(lambda: None)
for r in rows:
    if "tensor" not in r:
        print("tune:", {k: r[k] for k in r if k != "case"})
        continue
    key = (r["dtype"], r["tensor"], "bwd" if r["case"].endswith("/bwd") else "fwd")
    if worst[key] is None or r["rel_l2"] > worst[key]["rel_l2"]:
        worst[key] = r
if worst:
    print(f"{'dtype':<16}{'pass':<5}{'tensor':<7}{'max rel L2':>12}{'bound':>11}{'plain bf16':>12}  case")
    for (dtype, tensor, d), r in sorted(worst.items()):
        p = r["plain_rel_l2"]
        print(f"{dtype:<16}{d:<5}{tensor:<7}{r['rel_l2']:>12.3e}{r['bound']:>11.3e}"
              f"{'' if p is None else format(p, '.3e'):>12}  {r['case']}")
EOF

status=$rc
if [ $FORWARD_ONLY -eq 0 ] && grep -q "does not export the backward" "$OUT/python_gpu.log"; then
  echo "=== the gradient tests were skipped: this libflashbias.so has no backward (use --forward-only to accept)"
  status=1
fi
exit $status
