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
  std::string entry;                 ///< extern "C" symbol of the (main) __global__ entry point
  /// Every entry point of the module, `entry` first: one for the forward; the backward's four
  /// kernels (kBwdEntries) share one module, so one cubin serves the whole backward.
  std::vector<std::string> entries;
  std::string source;                ///< the generated translation unit (includes embedded templates)
  std::vector<std::string> options;  ///< NVRTC options, arch included (--gpu-architecture=sm_90a)
  int threads = 0;                   ///< block size
  std::size_t smem_bytes = 0;        ///< dynamic shared memory per CTA (the largest of the entries')
};

/// Entry points of a backward module, in launch order of the compute kernels' roles.
inline constexpr const char* kBwdEntryDkdv = "flashbias_bwd_dkdv";  ///< dK, dV, dKb per key block (main entry)
inline constexpr const char* kBwdEntryDq = "flashbias_bwd_dq";      ///< dQ, dQb per query block
inline constexpr const char* kBwdEntryPrep = "flashbias_bwd_prep";  ///< Delta = rowsum(dO * O)
inline constexpr const char* kBwdEntryReduce = "flashbias_bwd_reduce";  ///< sums over broadcast dims
/// dkdv and dq whose factor gradients take the 16-bit dS alone, without its residual (fp16 with a
/// bias, both families: bwd_has_hi_entries). The launch takes them where factor_grads_need_lo
/// (runtime/launch_plan.h) says the residual is not needed.
inline constexpr const char* kBwdEntryDkdvHi = "flashbias_bwd_dkdv_hi";
inline constexpr const char* kBwdEntryDqHi = "flashbias_bwd_dq_hi";
/// Whether a backward module of `key` carries kBwdEntryDkdvHi and kBwdEntryDqHi.
bool bwd_has_hi_entries(const ProblemKey& key);

/// Shared memory of the backward's two tiled kernels for (key, tile).
struct BwdSmem {
  std::size_t dkdv = 0;
  std::size_t dq = 0;
};
BwdSmem bwd_smem_bytes(const ProblemKey& key, const TileConfig& tile);

/// Output slices per (block, batch, head) of the backward's tiled kernels: `split` head-dim slices,
/// plus one for the factor gradient when rank > 0 and (split > 1 or rank > 32).
int bwd_slices(const ProblemKey& key, const TileConfig& tile);

/// Elements per swizzled shared-memory row of the sm90 tiles for a contraction width (head dim or
/// rank): 16, 32 or 64 (mirrors chunk_elems in templates/sm90/fwd_kernel.cuh). The TMA boxes the
/// launch plan encodes use the same width.
int sm90_chunk_elems(int width);

/// The sm90 forward's register split (mirrors templates/sm90/fwd_kernel.cuh): each warp starts
/// with the launch allocation; the producer warpgroup shrinks to `producer` registers per thread
/// and `consumers` warpgroups grow to `consumer`. setmaxnreg.inc draws only on what the CTA's own
/// decrements released, so the kernel's registers x threads must cover `required_regs()`, or its
/// consumers would wait forever (LaunchPlan refuses such a kernel). `active` is false when the
/// kernel keeps its launch allocation (one consumer warpgroup, one CTA per SM).
struct Sm90RegisterSplit {
  bool active = false;
  int threads = 0;
  int producer = 0;
  int consumer = 0;
  int consumers = 0;
  long long required_regs() const { return 128LL * producer + 128LL * consumer * consumers; }
};
Sm90RegisterSplit sm90_register_split(const ProblemKey& key, const TileConfig& tile);

/// Dynamic shared memory of the kernel (key, tile) names: the forward's, or the larger of the
/// backward's two tiled kernels.
std::size_t kernel_smem_bytes(const ProblemKey& key, const TileConfig& tile);

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
