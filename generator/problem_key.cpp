#include "generator/problem_key.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <vector>

#include "common/params.h"
#include "generator/knobs.h"

namespace flashbias {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// boost::hash_combine's mixing step: cheap and good enough for an unordered_map key.
void mix(std::size_t& seed, std::size_t v) { seed ^= v + 0x9e3779b97f4a7c15ull + (seed << 6) + (seed >> 2); }

}  // namespace

const char* to_string(DType d) noexcept { return d == DType::bf16 ? "bf16" : "f16"; }
const char* to_string(MaskKind m) noexcept { return m == MaskKind::causal ? "causal" : "none"; }
const char* to_string(Direction d) noexcept { return d == Direction::bwd ? "bwd" : "fwd"; }

DType parse_dtype(const std::string& s) {
  const std::string l = lower(s);
  if (l == "f16" || l == "fp16" || l == "half" || l == "float16") return DType::f16;
  if (l == "bf16" || l == "bfloat16") return DType::bf16;
  throw Error(ErrorCode::invalid_argument, fmt::format("dtype '{}' is not supported: use f16 or bf16", s));
}

MaskKind parse_mask(const std::string& s) {
  const std::string l = lower(s);
  if (l == "none" || l.empty()) return MaskKind::none;
  if (l == "causal") return MaskKind::causal;
  throw Error(ErrorCode::invalid_argument, fmt::format("mask '{}' is not supported: use none or causal", s));
}

std::string Arch::name() const { return fmt::format("sm_{}{}", sm, a ? "a" : ""); }

Arch Arch::parse(const std::string& s) {
  std::string t = lower(s);
  if (t.rfind("sm_", 0) == 0) t = t.substr(3);
  else if (t.rfind("sm", 0) == 0) t = t.substr(2);
  Arch arch;
  if (!t.empty() && t.back() == 'a') {
    arch.a = true;
    t.pop_back();
  }
  int v = 0;
  auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || ec != std::errc() || ptr != t.data() + t.size())
    throw Error(ErrorCode::invalid_argument, fmt::format("arch '{}' is not of the form sm_80 or sm_90a", s));
  if (v < 80)
    throw Error(ErrorCode::unsupported,
                fmt::format("arch '{}' is older than sm_80, the oldest arch the kernels support", s));
  if (arch.a && v != 90 && v != 100 && v != 120)
    throw Error(ErrorCode::invalid_argument, fmt::format("arch '{}': only sm_90a, sm_100a and sm_120a exist", s));
  arch.sm = v;
  return arch;
}

std::string ProblemKey::str() const {
  std::string bc;
  if (broadcast & kQbBatch) bc += "Qb";
  if (broadcast & kQbHead) bc += "Qh";
  if (broadcast & kKbBatch) bc += "Kb";
  if (broadcast & kKbHead) bc += "Kh";
  if (bc.empty()) bc = "0";
  return fmt::format("{}_{}_{}_d{}_r{}_{}_bc{}_a{}.{}", arch.name(), to_string(direction), to_string(dtype), head_dim,
                     rank, to_string(mask), bc, qkv_align, bias_align);
}

std::string TileConfig::str() const {
  std::string s = fmt::format("bm{}_bn{}_w{}_s{}", block_m, block_n, warps, stages);
  for (const auto& [name, value] : extra) {
    const TileKnob* k = find_tile_knob(name);
    s += fmt::format("_{}{}", k ? k->spelling : knob_spelling(name), value);
  }
  return s;
}

std::optional<int> TileConfig::get(std::string_view knob) const {
  const TileKnob* k = find_tile_knob(knob);
  if (!k) return std::nullopt;
  if (k->field) return this->*(k->field);
  for (const auto& [name, value] : extra)
    if (name == k->name) return value;
  if (k->default_value) return int(*k->default_value);
  return std::nullopt;
}

TileConfig& TileConfig::set(std::string_view knob, int value) {
  const TileKnob* k = find_tile_knob(knob);
  if (!k)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("tile config: unknown knob '{}' (knobs: {})", knob, knob_spellings()));
  if (k->field) {
    this->*(k->field) = value;
    return *this;
  }
  std::erase_if(extra, [&](const auto& e) { return e.first == k->name; });
  if (k->default_value && *k->default_value == value) return *this;  // the canonical form omits defaults
  // Insert in manifest order, so equal configurations compare and hash equal.
  const auto& all = tile_knobs();
  auto order = [&](std::string_view name) {
    for (std::size_t i = 0; i < all.size(); ++i)
      if (all[i].name == name) return i;
    return all.size();
  };
  auto at = extra.begin();
  while (at != extra.end() && order(at->first) < order(k->name)) ++at;
  extra.insert(at, {std::string(k->name), value});
  return *this;
}

TileConfig TileConfig::parse(const std::string& s) {
  // Accepts "bm=128,bn=64,w=4,s=1,splitk=2" (any order, missing knobs keep their defaults) and
  // str()'s "bm128_bn64_w4_s1_splitk2".
  TileConfig t;
  // Items are separated by ','; in str()'s form (items without '=') also by '_', which the
  // "name=value" form keeps for names like block_m.
  std::string norm;
  for (std::size_t i = 0, item = 0; i < s.size(); ++i) {
    if (s[i] == ',') item = i + 1;
    const bool named = s.find('=', item) < s.find(',', item);
    norm += s[i] == '_' && !named ? ',' : s[i];
  }
  auto unknown = [&](const std::string& name) {
    return Error(ErrorCode::invalid_argument,
                 fmt::format("tile config: unknown knob '{}' (knobs: {})", name, knob_spellings()));
  };
  auto parse_int = [](const std::string& text, int& v) {
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    return !text.empty() && ec == std::errc() && ptr == text.data() + text.size();
  };
  std::size_t pos = 0;
  while (pos <= norm.size()) {
    std::size_t end = norm.find(',', pos);
    if (end == std::string::npos) end = norm.size();
    std::string item = lower(norm.substr(pos, end - pos));
    pos = end + 1;
    if (item.empty()) continue;
    std::size_t split = item.find('=');
    std::string name, value;
    const TileKnob* knob = nullptr;
    if (split != std::string::npos) {
      name = item.substr(0, split);
      value = item.substr(split + 1);
      knob = find_tile_knob(name);
      if (!knob) throw unknown(name);
    } else {
      std::size_t d = item.find_first_of("0123456789");
      if (d == std::string::npos || d == 0)
        throw Error(ErrorCode::invalid_argument, fmt::format("tile config item '{}' has no value", item));
      // "splitk2": the longest knob name that the item starts with and that leaves a number (knob
      // names may contain digits, so the first digit is not always where the value starts).
      int ignored = 0;
      for (const TileKnob& k : tile_knobs()) {
        std::vector<std::string> names = k.aliases;
        names.push_back(k.spelling);
        for (const std::string& n : names)
          if (n.size() > name.size() && item.size() > n.size() && item.compare(0, n.size(), n) == 0 &&
              parse_int(item.substr(n.size()), ignored)) {
            name = n;
            knob = &k;
          }
      }
      if (!knob) throw unknown(item.substr(0, d));
      value = item.substr(name.size());
    }
    int v = 0;
    // The named knobs are sizes and counts; a further knob may be a flag or a mode (0 allowed).
    if (!parse_int(value, v) || (knob->field && v <= 0) || (!knob->field && v < 0))
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("tile config: '{}' must be a {} integer, got '{}'", name,
                              knob->field ? "positive" : "non-negative", value));
    t.set(knob->name, v);
    if (pos > norm.size()) break;
  }
  return t;
}

bool forward_scale_needs_portable(const ProblemKey& key, std::optional<float> scale) {
  // Every default scale 1/sqrt(D), D in [8, 256], lies in [1/16, 0.36] and folds: no work on the
  // common call.
  return scale && key.rank > 0 && key.dtype == DType::f16 && key.arch.a &&
         !folds_scale_into_q(true, key.rank, *scale);
}

std::size_t hash_value(const ProblemKey& k) noexcept {
  std::size_t h = 0;
  for (std::size_t v : {std::size_t(k.arch.sm), std::size_t(k.arch.a), std::size_t(k.dtype), std::size_t(k.head_dim),
                        std::size_t(k.rank), std::size_t(k.mask), std::size_t(k.direction), std::size_t(k.broadcast),
                        std::size_t(k.qkv_align), std::size_t(k.bias_align)})
    mix(h, v);
  return h;
}

std::size_t hash_value(const TileConfig& t) noexcept {
  std::size_t h = 0;
  for (std::size_t v : {std::size_t(t.block_m), std::size_t(t.block_n), std::size_t(t.warps), std::size_t(t.stages)})
    mix(h, v);
  for (const auto& [name, value] : t.extra) {
    mix(h, std::hash<std::string>{}(name));
    mix(h, std::size_t(value));
  }
  return h;
}

std::size_t hash_value(const KernelSpec& s) noexcept {
  std::size_t h = hash_value(s.key);
  mix(h, hash_value(s.tile));
  return h;
}

}  // namespace flashbias
