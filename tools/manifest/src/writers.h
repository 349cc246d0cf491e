// The manifest's outputs: the JSON copy (tests, tooling), the human-readable listing that
// `flashbias gen --list` prints, and the generated C++ header the generator and tuner include.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "manifest.h"

namespace flashbias::manifest_tool {

/// Schema of the JSON copy; kept equal to flashbias::manifest::kSchemaVersion.
constexpr int kSchemaVersion = 1;

nlohmann::ordered_json to_json(const Manifest& m);

std::string listing(const Manifest& m);

/// The generated header. `ns` is the namespace of the data (flashbias::manifest, or another one
/// when tests generate a header from fixtures next to the real one); the types always come from
/// flashbias/manifest_types.h. `json` and `list` are embedded as string constants.
std::string header(const Manifest& m, const std::string& ns, const std::string& json, const std::string& list);

}  // namespace flashbias::manifest_tool
