#!/usr/bin/env bash
# Installs the build dependencies (Debian packages) and builds FlashBias JIT into build/.
# Used by tools/demo.sh and tools/test.sh; safe to run again (apt and cmake are incremental).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake ninja-build g++ pkg-config libfmt-dev catch2 libcli11-dev nlohmann-json3-dev libsqlite3-dev
      clang-14 libclang-14-dev libclang-cpp14-dev llvm-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
if [ ! -f "$CUDA_HOME/include/cuda.h" ] || [ ! -f "$CUDA_HOME/include/nvrtc.h" ]; then
  echo "setup: the CUDA toolkit headers (cuda.h, nvrtc.h) were not found under $CUDA_HOME." >&2
  echo "setup: install the CUDA toolkit (12.x or 13.x) there, or set CUDA_HOME." >&2
  exit 1
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHBIAS_CUDA_HOME="$CUDA_HOME" >/dev/null
cmake --build build -j"$(nproc)"
