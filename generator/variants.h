// The one table of kernel variants and tunable knobs. The tuner's search space, the built-in
// heuristic, the default variant set (CLI demo, nvrtc tests, bundles) and the CLI's listings all
// read it from here. Knob values are not declared here either: they come from the template
// manifest (templates/README.md), which the kernel templates declare next to the code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "generator/problem_key.h"

namespace flashbias {

/// Candidate values of each knob of a kernel template, as its manifest entry lists them.
struct KnobSpace {
  /// The knobs TileConfig carries in named fields (kBlockM, kBlockN, kWarps, kStages).
  std::vector<int> block_m, block_n, warps, stages;
  /// Every further knob of the template, by template parameter name, in manifest order.
  std::vector<std::pair<std::string, std::vector<int>>> extra;
  /// Every knob (named ones included) in manifest order: what enumerate_tiles() takes the product of.
  std::vector<std::pair<std::string, std::vector<int>>> all;

  /// Number of configurations in the product of all knobs (before any rule).
  std::size_t size() const;
};

/// The knobs of the kernel template that runs `key` (kernel_family(key)), read from the manifest.
const KnobSpace& knob_space(const ProblemKey& key);

/// The same for a representative key of an arch and direction (16-byte aligned rows, head dim 64):
/// the family that arch runs by default.
const KnobSpace& knob_space(const Arch& arch, Direction direction);

/// knob_space(arch, Direction::fwd).
const KnobSpace& fwd_knob_space(const Arch& arch);

/// What changes only the best tile choice, not the code: sequence lengths and batch*heads.
struct ShapeInfo {
  std::int64_t batch_heads = 1;
  std::int64_t seqlen_q = 1;
  std::int64_t seqlen_k = 1;
};

/// Every legal TileConfig for `key`: the product of all the template's knobs (KnobSpace::all, the
/// last knob varying fastest), pruned by the template's host-evaluable rules and by shared memory
/// under `smem_limit`. Empty means no variant covers the key.
std::vector<TileConfig> enumerate_tiles(const ProblemKey& key, std::size_t smem_limit);

/// A few of enumerate_tiles(key, smem_limit) that hold every value of every knob between them:
/// each legal tile, in order, that brings a (knob, value) pair no earlier one had. What the tests
/// compile and run when all legal tiles would take too long.
std::vector<TileConfig> covering_tiles(const ProblemKey& key, std::size_t smem_limit);

/// How many knobs of `key`'s template (KnobSpace::all) hold different values in `a` and `b`
/// (an unset knob counts as its template default).
int knob_distance(const ProblemKey& key, const TileConfig& a, const TileConfig& b);

/// `tiles` nearest `center` first: ordered by knob_distance to `center` (0 for `center` itself),
/// ties kept in their given order. The tuner compiles candidates in this order, so that a budget
/// that stops it part way has covered the tiles around the heuristic's instead of one corner of
/// the knob product.
std::vector<TileConfig> nearest_first(const ProblemKey& key, std::vector<TileConfig> tiles, const TileConfig& center);

/// The built-in choice for keys nobody tuned: the first legal entry of a short preference list
/// per head-dim class. Throws Error(unsupported) when nothing fits.
TileConfig heuristic_tile(const ProblemKey& key, const ShapeInfo& shape, std::size_t smem_limit);

/// Whether the portable forward's look-ahead tile (knob ahead, sm80/fwd_kernel.cuh) is the
/// heuristic's choice for a key with long rows: Hopper, f16, d32, the ranks and alignments on
/// which it compiles without spills (tests/generator/default_variants_test.cpp checks them all).
bool portable_ahead_fits(const ProblemKey& key);

/// Of those keys, the ones on which the ahead tile also takes mmasum (the row sums on the tensor
/// cores) without spills. On every key portable_ahead_fits() admits, the heuristic's tile for
/// more than 8192 keys without a mask is the 128x128 tile with mmasum (spill-free on all of them).
bool portable_ahead_mmasum_fits(const ProblemKey& key);

/// Shared memory available to one CTA (opt-in maximum) on an arch when no device is at hand.
std::size_t default_smem_limit(const Arch& arch);

/// A named problem class of the default variant set.
struct DefaultVariant {
  std::string name;  ///< the benchmark case it serves, e.g. "llm_d128_causal"
  ProblemKey key;    ///< arch filled in by default_variants()
  ShapeInfo shape;   ///< the benchmark case's extents, which the heuristic's tile choice reads
};

/// The default variant set for an arch: the keys of the benchmark cases in both dtypes, with
/// 16-byte alignment. `flashbias demo` compiles them without a GPU; the nvrtc tests require them
/// to compile with zero spills; bundles start from them.
std::vector<DefaultVariant> default_variants(const Arch& arch);

}  // namespace flashbias
