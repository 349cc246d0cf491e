// KernelSpec -> KernelSource: the generated translation unit, its NVRTC options and launch shape.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "generator/problem_key.h"

namespace flashbias {

struct KernelSource {
  KernelSpec spec;
  std::string entry;                 ///< extern "C" symbol of the __global__ entry point
  std::string source;                ///< the generated translation unit (includes embedded templates)
  std::vector<std::string> options;  ///< NVRTC options, arch included (--gpu-architecture=sm_90a)
  int threads = 0;                   ///< block size
  std::size_t smem_bytes = 0;        ///< dynamic shared memory per CTA
};

/// Generate the source for one kernel. Throws Error(unsupported) naming the rule that a
/// (key, tile) pair breaks, before any compiler runs.
KernelSource generate(const KernelSpec& spec);

/// Shared memory bytes the forward kernel needs for (key, tile); 0 if the pair is illegal.
std::size_t fwd_smem_bytes(const ProblemKey& key, const TileConfig& tile);

/// Check a (key, tile) pair against the template's legality rules. Returns "" if legal,
/// else a sentence naming the rule (for errors and the tuner's not-supported outcome).
std::string legality_error(const ProblemKey& key, const TileConfig& tile, std::size_t smem_limit = 0);

/// Templates embedded at build time: (include name, contents), e.g. ("sm80/fwd_kernel.cuh", "...").
const std::vector<std::pair<std::string_view, std::string_view>>& embedded_templates();

/// SHA-256 (hex) over every embedded template and the generator version: part of every cache key.
const std::string& templates_hash();

}  // namespace flashbias
