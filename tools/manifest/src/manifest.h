// The template manifest as the tool builds it: what one pass over templates/ learned about every
// kernel entry template. Clang-free on purpose: the extractor (entry_extractor.cpp) lowers the AST
// into these plain structs, and everything after it (the knob-space checks, the header and JSON
// writers) works on them alone, so those stages are testable and readable without libTooling.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "host_expr.h"

namespace flashbias::manifest_tool {

/// A place in a template file; `file` is relative to the templates root (the NVRTC include name),
/// so the manifest is the same on every machine.
struct SourcePos {
  std::string file;
  unsigned line = 0;
  std::string str() const { return file + ":" + std::to_string(line); }
};

enum class ParamKind { type, non_type };

struct Param {
  std::string name;
  ParamKind kind = ParamKind::non_type;
  std::string type;       ///< as declared: "typename"/"class" for type parameters, else "int", "bool", ...
  std::string host_type;  ///< type of the field in the host Values struct; empty if the host cannot hold it
  std::optional<std::string> default_text;  ///< the default argument as written
  std::optional<long long> default_value;   ///< set when the default is a constant (not dependent)
  int knob = -1;                            ///< index into Entry::knobs, -1 if not tunable
};

/// One tunable parameter: an array of the same name in the entry's `Knobs` struct.
struct Knob {
  std::string name;
  int param = -1;  ///< index into Entry::params
  std::vector<long long> values;
  SourcePos pos;   ///< the array's declaration
};

/// One legality rule: a static_assert in the body of the entry class template.
struct Rule {
  std::string condition;            ///< source text, whitespace collapsed
  std::string message;
  std::vector<std::string> params;  ///< parameters the rule depends on, directly or through members
  std::vector<std::string> members; ///< constexpr members of the entry the condition reads
  /// Set when the condition uses only non-type parameters, literals and operators: the host can
  /// evaluate it (the generated header gets a constexpr function for it).
  std::optional<HostExpr> host;
  std::string not_host_reason;      ///< why `host` is empty, for the listing
  SourcePos pos;
};

struct Entry {
  std::string name;       ///< qualified: flashbias::sm80::FwdKernel
  std::string direction;  ///< from FLASHBIAS_KERNEL(direction, family)
  std::string family;
  std::string knob_table; ///< qualified name of the struct `Knobs` aliases; empty if none
  SourcePos pos;
  std::vector<Param> params;
  std::vector<Knob> knobs;
  std::vector<Rule> rules;

  int param_index(const std::string& n) const {
    for (std::size_t i = 0; i < params.size(); ++i)
      if (params[i].name == n) return static_cast<int>(i);
    return -1;
  }
};

struct Manifest {
  std::vector<Entry> entries;  ///< sorted by (family, direction)
};

}  // namespace flashbias::manifest_tool
