// Types of the template manifest: the description of every kernel entry template, extracted from
// templates/ at build time by tools/manifest (flashbias-manifest) into the generated header
// flashbias/manifest.gen.h, which includes this file. Everything is constexpr, so the generator's
// variant table can be checked against the templates with static_assert, and the tuner can
// enumerate knobs and prune illegal combinations with the templates' own rules and messages.
//
// Declaration style the manifest reads: templates/README.md.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace flashbias::manifest {

/// Bumped when the layout of these types or of the JSON copy changes.
inline constexpr int kSchemaVersion = 1;

/// One value per template parameter of an entry, in declaration order. Slots of type parameters
/// are ignored (write 0); bool parameters are 0 or 1. The generic form of an entry's `Values`.
using Args = std::span<const long long>;

enum class ParamKind : unsigned char { type, non_type };

struct ParamInfo {
  std::string_view name;
  ParamKind kind;
  std::string_view type;          ///< as declared: "typename", "int", "bool", ...
  std::string_view default_text;  ///< the default argument as written; empty when there is none
  bool has_default_value;         ///< the default is a constant (not computed from other parameters)
  long long default_value;
  int knob;                       ///< index into EntryInfo::knobs; -1 if the parameter is not tunable
};

/// A tunable parameter and the candidate values its template declares.
struct KnobInfo {
  std::string_view name;          ///< the template parameter's name
  int param;                      ///< index into EntryInfo::params
  std::span<const long long> values;
  std::string_view file;          ///< where the candidate array is declared (relative to templates/)
  int line;

  constexpr bool allows(long long v) const {
    for (long long x : values)
      if (x == v) return true;
    return false;
  }
};

/// A static_assert of the entry: the template refuses to compile when `condition` is false.
struct RuleInfo {
  std::string_view condition;            ///< source text
  std::string_view message;              ///< the static_assert's message
  std::span<const std::string_view> params;   ///< parameters it depends on (directly or via members)
  std::span<const std::string_view> members;  ///< constexpr members of the entry it reads
  /// Evaluates the rule on the host; null when the rule needs the device compiler (it reads a
  /// type, a member or calls a function): such rules surface as NVRTC errors instead.
  bool (*check)(Args);
  std::string_view not_host_evaluable_because;
  std::string_view file;
  int line;

  constexpr bool host_evaluable() const { return check != nullptr; }
};

struct EntryInfo {
  std::string_view name;       ///< qualified class template name: flashbias::sm80::FwdKernel
  std::string_view direction;  ///< FLASHBIAS_KERNEL(direction, family)
  std::string_view family;
  std::string_view knob_table; ///< the struct `Knobs` aliases; empty when nothing is tunable
  std::string_view file;
  int line;
  std::span<const ParamInfo> params;  ///< in the order the generator instantiates them
  std::span<const KnobInfo> knobs;    ///< in parameter order
  std::span<const RuleInfo> rules;    ///< in declaration order

  constexpr int param_index(std::string_view n) const {
    for (std::size_t i = 0; i < params.size(); ++i)
      if (params[i].name == n) return static_cast<int>(i);
    return -1;
  }
  constexpr const KnobInfo* find_knob(std::string_view n) const {
    for (const auto& k : knobs)
      if (k.name == n) return &k;
    return nullptr;
  }
  /// The first host-evaluable rule that `a` breaks, or null when all of them hold.
  constexpr const RuleInfo* first_violation(Args a) const {
    for (const auto& r : rules)
      if (r.check && !r.check(a)) return &r;
    return nullptr;
  }
  constexpr bool legal(Args a) const { return first_violation(a) == nullptr; }
};

constexpr const EntryInfo* find_entry(std::span<const EntryInfo> entries, std::string_view direction,
                                      std::string_view family) {
  for (const auto& e : entries)
    if (e.direction == direction && e.family == family) return &e;
  return nullptr;
}

/// A string usable as a template argument, so that a failing static_assert's instantiation
/// context shows it (RequireKnobValue<Name{"fwd"}, Name{"sm80"}, Name{"kBlockM"}, 96>): a
/// static_assert message itself must be a literal and cannot name the offending knob.
template <std::size_t N>
struct Name {
  char chars[N]{};
  constexpr Name() = default;
  constexpr Name(const char (&s)[N]) {
    for (std::size_t i = 0; i < N; ++i) chars[i] = s[i];
  }
  constexpr std::string_view view() const { return {chars, N - 1}; }
};

/// Name<N + 1> from a constexpr string_view of length N (e.g. a knob name in a constexpr table):
///   constexpr std::string_view s = kTable[I].knob;  RequireKnobValue<..., name_of<s.size()>(s), ...>
template <std::size_t N>
constexpr Name<N + 1> name_of(std::string_view s) {
  Name<N + 1> n;
  for (std::size_t i = 0; i < N && i < s.size(); ++i) n.chars[i] = s[i];
  return n;
}

}  // namespace flashbias::manifest

// Build-time checks of host code against the manifest, for files that include
// flashbias/manifest.gen.h. direction, family and knob are identifiers, `where` a string literal
// naming the caller's side (e.g. "generator/problem_key.h TileConfig::block_m"); the message names
// the template's side from FLASHBIAS_MANIFEST_WHERE_<family>_<direction>, which the generated
// header defines per entry (its file, line, class and knob table). A static_assert message must
// be a literal, hence macros: they say what is wrong in words on every compiler.
//
//   FLASHBIAS_MANIFEST_REQUIRE_KNOB(fwd, sm80, kBlockM, "generator/problem_key.h TileConfig::block_m");
//   FLASHBIAS_MANIFEST_REQUIRE_VALUE(fwd, sm80, kBlockM, 128, "generator/variants.cpp heuristic");
//
// A (direction, family) without an entry fails as an undeclared FLASHBIAS_MANIFEST_WHERE_ macro.
#define FLASHBIAS_MANIFEST_REQUIRE_KNOB(direction, family, knob, where)                             \
  static_assert(::flashbias::manifest::has_knob(#direction, #family, #knob),                         \
                where " uses knob " #knob ", but the kernel template "                               \
                FLASHBIAS_MANIFEST_WHERE_##family##_##direction " declares no array " #knob          \
                " in its Knobs table")
#define FLASHBIAS_MANIFEST_REQUIRE_VALUE(direction, family, knob, value, where)                     \
  static_assert(::flashbias::manifest::knob_allows(#direction, #family, #knob, value),               \
                where " uses " #knob " = " #value ", which is not among the candidate values of "    \
                #knob " in the Knobs table of the kernel template "                                 \
                FLASHBIAS_MANIFEST_WHERE_##family##_##direction)
