// The generator's reading of the template manifest (flashbias/manifest.gen.h, extracted from
// templates/ by tools/manifest): which entry template a kernel instantiates, how each of its
// tunable parameters maps onto TileConfig, and the template argument list in the entry's own
// parameter order. Knobs are never listed here: a knob added to a template (parameter + value
// array, templates/README.md) reaches TileConfig, the knob space, enumerate_tiles() and generate()
// through these functions with no code change.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flashbias/manifest.gen.h"
#include "generator/problem_key.h"

namespace flashbias {

/// A tunable template parameter, as TileConfig carries it.
struct TileKnob {
  std::string_view name;      ///< the template parameter: "kBlockM", "kSplitK"
  std::string spelling;       ///< in TileConfig::str(): "bm" (named fields), "splitk" (knob_spelling)
  int TileConfig::*field;     ///< the named TileConfig field that carries it; null for an extra knob
  std::optional<long long> default_value;  ///< the value a tile that does not set it runs with
  std::vector<std::string> aliases;        ///< further names TileConfig::parse accepts (lower case)
};

/// Every knob of every kernel template in the manifest, each once, in manifest order (entries by
/// family and direction, each entry's knobs in parameter order). The four named TileConfig fields
/// map by name to kBlockM, kBlockN, kWarps, kStages; their defaults are TileConfig{}'s. Throws
/// Error(internal) when two knobs would share a spelling.
const std::vector<TileKnob>& tile_knobs();

/// The knob named `name` (template parameter name, spelling or alias; case-insensitive), or null.
const TileKnob* find_tile_knob(std::string_view name);

/// The spelling of an extra knob in TileConfig::str()/parse(): the parameter name without its
/// leading 'k' (when a capital follows), lower case: kSplitK -> "splitk", kUseTma -> "usetma".
std::string knob_spelling(std::string_view knob);

/// "bm, bn, w, s, splitk": the knob spellings, for error messages and the CLI.
std::string knob_spellings();

/// The template family that runs `key`: "sm90" (wgmma) on sm_90a when the Q/K/V/O (and, for the
/// backward, dO/dQ/dK/dV) rows are 16-byte aligned and the head dim is at least 16 (the backward
/// takes head dims in [32, 128], 32 only with 16-byte factor rows, and ranks up to 32); "sm80" (the
/// portable family, sm_80 and newer)
/// otherwise. An sm_90 key without the 'a' suffix selects the portable
/// family on Hopper (ContextOptions::portable).
std::string_view kernel_family(const ProblemKey& key);

/// The part of kernel_family's backward rule that sizes alone decide: whether `arch` can run the
/// sm90 backward at this head dim and rank. The rest (16-byte aligned rows; at head dim 32,
/// 16-byte factor rows) depends on pointers, which Context::backward_workspace_size may not read:
/// it sizes the workspace by this.
bool sm90_backward_sizes(const Arch& arch, std::int64_t head_dim, std::int64_t rank);

/// The manifest entry the generator instantiates for `key`: FLASHBIAS_KERNEL(direction,
/// kernel_family(key)). Throws Error(unsupported) when no template covers it.
const manifest::EntryInfo& kernel_entry(const ProblemKey& key);

/// One value per template parameter of `entry`, in its order (the manifest's generic Args form):
/// problem parameters (Element, kHeadDim, kRank, kCausal, kQkvAlign, kBiasAlign) from the key,
/// knobs from the tile (a knob the tile does not set takes the template's default), any other
/// parameter its default. Type slots are 0. Throws Error(internal) for a parameter the generator
/// cannot set (no default, not a knob, not a problem parameter it knows).
std::vector<long long> template_args(const manifest::EntryInfo& entry, const ProblemKey& key, const TileConfig& tile);

/// "kBlockM = 96, kWarps = 4": the values of the parameters a rule reads, for error messages.
std::string rule_values(const manifest::EntryInfo& entry, const manifest::RuleInfo& rule, manifest::Args args);

}  // namespace flashbias
