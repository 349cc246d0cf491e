#include "generator/knobs.h"

#include <fmt/format.h>

#include <cctype>

namespace flashbias {

namespace mf = ::flashbias::manifest;

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

/// The knobs every template has, carried by named TileConfig fields (the runtime, the tuner and
/// the CLI read them by name). generator/manifest_check.cpp fails the build when the template
/// lacks one of these parameters.
struct NamedKnob {
  std::string_view name;
  int TileConfig::*field;
  const char* spelling;
  const char* long_name;
};
constexpr NamedKnob kNamedKnobs[] = {
    {"kBlockM", &TileConfig::block_m, "bm", "block_m"},
    {"kBlockN", &TileConfig::block_n, "bn", "block_n"},
    {"kWarps", &TileConfig::warps, "w", "warps"},
    {"kStages", &TileConfig::stages, "s", "stages"},
};

std::vector<TileKnob> build_tile_knobs() {
  std::vector<TileKnob> out;
  const TileConfig defaults{};
  auto add_named = [&](const NamedKnob& n) {
    out.push_back({n.name, n.spelling, n.field, defaults.*(n.field),
                   {n.long_name, lower(n.name), knob_spelling(n.name)}});
  };
  for (const mf::EntryInfo& e : mf::entries)
    for (const mf::KnobInfo& k : e.knobs) {
      bool seen = false;
      for (const TileKnob& t : out) seen = seen || t.name == k.name;
      if (seen) continue;
      const NamedKnob* named = nullptr;
      for (const NamedKnob& n : kNamedKnobs)
        if (n.name == k.name) named = &n;
      if (named) {
        add_named(*named);
        continue;
      }
      const mf::ParamInfo& p = e.params[static_cast<std::size_t>(k.param)];
      out.push_back({k.name, knob_spelling(k.name), nullptr,
                     p.has_default_value ? std::optional<long long>(p.default_value) : std::nullopt,
                     {lower(k.name)}});
    }
  // A manifest without some named knob fails the build (manifest_check.cpp); keep the field usable.
  for (const NamedKnob& n : kNamedKnobs) {
    bool seen = false;
    for (const TileKnob& t : out) seen = seen || t.name == n.name;
    if (!seen) add_named(n);
  }
  // Spellings and aliases must name one knob each, or parse() and str() would be ambiguous.
  for (std::size_t i = 0; i < out.size(); ++i)
    for (std::size_t j = 0; j < i; ++j) {
      std::vector<std::string> a = out[i].aliases, b = out[j].aliases;
      a.push_back(out[i].spelling);
      b.push_back(out[j].spelling);
      for (const auto& x : a)
        for (const auto& y : b)
          if (x == y)
            throw Error(ErrorCode::internal,
                        fmt::format("template knobs {} and {} are both spelled '{}' in tile configs; rename one in "
                                    "its template (templates/README.md)",
                                    out[j].name, out[i].name, x));
    }
  return out;
}

}  // namespace

std::string knob_spelling(std::string_view knob) {
  if (knob.size() > 1 && knob[0] == 'k' && std::isupper(static_cast<unsigned char>(knob[1]))) knob.remove_prefix(1);
  return lower(knob);
}

const std::vector<TileKnob>& tile_knobs() {
  static const std::vector<TileKnob> knobs = build_tile_knobs();
  return knobs;
}

const TileKnob* find_tile_knob(std::string_view name) {
  const std::string l = lower(name);
  for (const TileKnob& k : tile_knobs()) {
    if (k.name == name || k.spelling == l) return &k;
    for (const auto& a : k.aliases)
      if (a == l) return &k;
  }
  return nullptr;
}

std::string knob_spellings() {
  std::string s;
  for (const TileKnob& k : tile_knobs()) s += (s.empty() ? "" : ", ") + k.spelling;
  return s;
}

bool sm90_backward_sizes(const Arch& arch, std::int64_t head_dim, std::int64_t rank) {
  // dK, dV (and dKb) stay in registers: head dims up to 128 and ranks up to 32 (the template's
  // rules); wider problems run the portable family, which splits them into slices.
  return arch.sm == 90 && arch.a && head_dim >= 32 && head_dim <= 128 && rank <= 32 &&
         mf::find_entry("bwd", "sm90") != nullptr;
}

std::string_view kernel_family(const ProblemKey& key) {
  // The Hopper families need sm_90a (wgmma, setmaxnreg) and rows the 16-byte copies can address
  // (16-byte aligned pointers and strides; TMA for the forward, cp.async for the backward). An
  // sm_90 key without the 'a' suffix (ContextOptions::portable) runs the portable family.
  if (key.arch.sm != 90 || !key.arch.a || key.qkv_align != 16 || key.head_dim < 16) return "sm80";
  // Forward: any head dim and rank of the range.
  if (key.direction == Direction::fwd && mf::find_entry("fwd", "sm90") != nullptr) return "sm90";
  // Backward: the sizes of sm90_backward_sizes. At head dim 32 the sm90 backward is ahead only
  // with its TMA loads (16-byte factor rows: af3_tri backward 0.497 vs 0.551 ms, seed_n16k 5.11
  // vs 5.16; with cp.async it was behind, 0.56 vs 0.50 and 5.27 vs 4.69; H100, 2026-11-24,
  // docs/PERF_NOTES.md), and under 32 the portable family runs.
  const bool tma_factors = key.rank == 0 || key.bias_align == 16;
  if (key.direction == Direction::bwd && sm90_backward_sizes(key.arch, key.head_dim, key.rank) &&
      (key.head_dim > 32 || tma_factors))
    return "sm90";
  return "sm80";
}

const mf::EntryInfo& kernel_entry(const ProblemKey& key) {
  const std::string_view direction = key.direction == Direction::bwd ? "bwd" : "fwd";
  const std::string_view family = kernel_family(key);
  const mf::EntryInfo* e = mf::find_entry(direction, family);
  if (!e)
    throw Error(ErrorCode::unsupported,
                fmt::format("no kernel template under templates/ is declared FLASHBIAS_KERNEL(\"{}\", \"{}\"): {} "
                            "kernels are not available in this build",
                            direction, family, key.direction == Direction::bwd ? "backward" : "forward"));
  return *e;
}

std::vector<long long> template_args(const mf::EntryInfo& e, const ProblemKey& key, const TileConfig& tile) {
  std::vector<long long> args(e.params.size(), 0);
  for (std::size_t i = 0; i < e.params.size(); ++i) {
    const mf::ParamInfo& p = e.params[i];
    auto cannot = [&](std::string_view why) {
      return Error(ErrorCode::internal,
                   fmt::format("{}: template parameter {} of {} (templates/{}:{}) {}", key.str(), p.name, e.name,
                               e.file, e.line, why));
    };
    if (p.kind == mf::ParamKind::type) {
      // The one type parameter the generator spells (from key.dtype; see generate()).
      if (p.name != "Element") throw cannot("is a type parameter the generator does not know how to set");
      continue;
    }
    if (p.knob >= 0) {
      const std::optional<int> v = tile.get(p.name);
      if (!v) throw cannot("is a knob without a constant default, and the tile config does not set it");
      args[i] = *v;
    } else if (p.name == "kHeadDim") {
      args[i] = key.head_dim;
    } else if (p.name == "kRank") {
      args[i] = key.rank;
    } else if (p.name == "kCausal") {
      args[i] = key.mask == MaskKind::causal;
    } else if (p.name == "kQkvAlign") {
      args[i] = key.qkv_align;
    } else if (p.name == "kBiasAlign") {
      // No factors: any legal value; 16 keeps the rank-0 kernels one per key.
      args[i] = key.rank > 0 ? key.bias_align : 16;
    } else if (p.has_default_value) {
      args[i] = p.default_value;
    } else {
      throw cannot("is neither a knob, nor a problem parameter the generator sets from the key, nor has a constant "
                   "default");
    }
  }
  return args;
}

std::string rule_values(const mf::EntryInfo& e, const mf::RuleInfo& rule, mf::Args args) {
  std::string s;
  for (std::string_view name : rule.params) {
    const int i = e.param_index(name);
    if (i < 0 || e.params[static_cast<std::size_t>(i)].kind == mf::ParamKind::type) continue;
    const long long v = args[static_cast<std::size_t>(i)];
    const std::string text =
        e.params[static_cast<std::size_t>(i)].type == "bool" ? (v ? "true" : "false") : std::to_string(v);
    s += fmt::format("{}{} = {}", s.empty() ? "" : ", ", name, text);
  }
  return s;
}

}  // namespace flashbias
