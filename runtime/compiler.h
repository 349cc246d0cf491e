// Stage 2 of the pipeline: KernelSource -> CompiledKernel (NVRTC, cubin only).
// Runs without a GPU. Thread-safe: every call owns its NVRTC program, so the tuner compiles
// candidates on several threads at once.
#pragma once

#include <string>
#include <vector>

#include "generator/kernel_source.h"
#include "runtime/resources.h"

namespace flashbias {

/// A cubin for one KernelSpec plus what the compiler reported about it. Plain data: the cache
/// stores and restores it field by field without NVRTC.
struct CompiledKernel {
  KernelSpec spec;
  std::string entry;             ///< extern "C" symbol to look up after loading
  std::vector<char> cubin;       ///< ELF for exactly the spec's arch (never PTX)
  int threads = 0;               ///< block size the kernel was written for
  std::size_t smem_bytes = 0;    ///< dynamic shared memory per CTA
  KernelResources resources;     ///< registers, spills, stack, static smem
  double compile_ms = 0.0;       ///< wall time of nvrtcCompileProgram
  std::string nvrtc_version;     ///< "13.0": part of cache keys
  std::string log;               ///< full NVRTC log (ptxas report included)
};

/// The option that makes ptxas print its resource report into the program log.
inline constexpr const char* kPtxasVerboseOption = "--ptxas-options=--verbose";
/// NVRTC 13 serves repeated compiles from the CUDA compute cache when a driver is present, and a
/// cached result comes with an empty log: no ptxas report, so no spill or smem figures (verified
/// on an H100 machine; NVIDIA/cuda-python#1124). Our own kernel store does the caching instead.
inline constexpr const char* kNoCacheOption = "--no-cache";

/// Compile with NVRTC: the embedded templates are passed as in-memory headers, the options are
/// KernelSource::options plus kPtxasVerboseOption and kNoCacheOption (dropped, once per process,
/// if this NVRTC does not know it). Throws Error(nvrtc_unavailable) if NVRTC
/// cannot be loaded, Error(compile_failed) with the key, the options and the NVRTC log if the
/// source does not compile.
CompiledKernel compile(const KernelSource& source);

}  // namespace flashbias
