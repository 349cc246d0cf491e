// Build-time check of the generator against the template manifest (flashbias/manifest.gen.h,
// extracted from templates/ by tools/manifest). Compiling this file fails, with a message naming
// the generator's side and the template's side, when the generator names a knob that the sm80
// forward template does not declare, or a value its Knobs table does not list.
//
// What it can check at compile time is what the generator declares constexpr: the named TileConfig
// fields (each one carries one knob, mapped by name in generator/knobs.cpp) and their defaults.
// Every other knob reaches TileConfig::extra, the knob space and the template arguments from the
// manifest itself, so there is nothing of theirs to check. The heuristic's preference lists in
// variants.cpp are run-time tables; tests/tools/manifest_test.cpp compares them with the manifest.
//
// Compiled as part of flashbias_generator (generator/CMakeLists.txt): the library does not build
// while the check fails.
#include "flashbias/manifest.gen.h"
#include "generator/problem_key.h"

FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kBlockM, "generator/problem_key.h TileConfig::block_m");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kBlockN, "generator/problem_key.h TileConfig::block_n");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kWarps, "generator/problem_key.h TileConfig::warps");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kStages, "generator/problem_key.h TileConfig::stages");

// A default-constructed TileConfig is a configuration the template must accept and the tuner
// also tries.
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kBlockM, flashbias::TileConfig{}.block_m, "generator/problem_key.h TileConfig{}");
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kBlockN, flashbias::TileConfig{}.block_n, "generator/problem_key.h TileConfig{}");
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kWarps, flashbias::TileConfig{}.warps, "generator/problem_key.h TileConfig{}");
FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kStages, flashbias::TileConfig{}.stages, "generator/problem_key.h TileConfig{}");

// The Hopper forward carries the same four named knobs (its defaults differ: the heuristic and
// the tuner always set all four, so TileConfig{} never reaches it).
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm90, kBlockM, "generator/problem_key.h TileConfig::block_m");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm90, kBlockN, "generator/problem_key.h TileConfig::block_n");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm90, kWarps, "generator/problem_key.h TileConfig::warps");
FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm90, kStages, "generator/problem_key.h TileConfig::stages");
