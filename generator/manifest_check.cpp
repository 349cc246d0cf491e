// Build-time check of the generator against the template manifest (flashbias/manifest.gen.h,
// extracted from templates/ by tools/manifest). Compiling this file fails, with a message naming
// the generator's side and the template's side, when the generator names a knob that the sm80
// forward template does not declare, or a value its Knobs table does not list.
//
// What it can check at compile time is what the generator declares constexpr: the TileConfig
// fields (each one carries one knob into FwdKernel<..., block_m, block_n, warps, stages>, see
// kernel_source.cpp) and their defaults. The knob space and the heuristic's preference lists in
// variants.cpp are run-time tables; tests/tools/manifest_test.cpp compares them with the manifest.
#include "flashbias/manifest.gen.h"
#include "generator/problem_key.h"

namespace {

constexpr flashbias::TileConfig kDefaultTile{};

}  // namespace

FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kBlockM, "generator/problem_key.h TileConfig::block_m");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kBlockN, "generator/problem_key.h TileConfig::block_n");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kWarps, "generator/problem_key.h TileConfig::warps");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kStages, "generator/problem_key.h TileConfig::stages");

// A default-constructed TileConfig is a configuration the template must accept and the tuner
// also tries.
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kBlockM, kDefaultTile.block_m, "generator/problem_key.h TileConfig{}");
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kBlockN, kDefaultTile.block_n, "generator/problem_key.h TileConfig{}");
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kWarps, kDefaultTile.warps, "generator/problem_key.h TileConfig{}");
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kStages, kDefaultTile.stages, "generator/problem_key.h TileConfig{}");
