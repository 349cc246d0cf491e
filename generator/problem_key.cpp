#include "generator/problem_key.h"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <vector>

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

std::string TileConfig::str() const { return fmt::format("bm{}_bn{}_w{}_s{}", block_m, block_n, warps, stages); }

TileConfig TileConfig::parse(const std::string& s) {
  // Accepts "bm=128,bn=64,w=4,s=1" (any order, missing knobs keep their defaults) and str()'s
  // "bm128_bn64_w4_s1".
  TileConfig t;
  std::string norm = s;
  for (char& c : norm)
    if (c == '_') c = ',';
  std::size_t pos = 0;
  while (pos <= norm.size()) {
    std::size_t end = norm.find(',', pos);
    if (end == std::string::npos) end = norm.size();
    std::string item = lower(norm.substr(pos, end - pos));
    pos = end + 1;
    if (item.empty()) continue;
    std::size_t split = item.find('=');
    std::string name, value;
    if (split != std::string::npos) {
      name = item.substr(0, split);
      value = item.substr(split + 1);
    } else {
      std::size_t d = item.find_first_of("0123456789");
      if (d == std::string::npos || d == 0)
        throw Error(ErrorCode::invalid_argument, fmt::format("tile config item '{}' has no value", item));
      name = item.substr(0, d);
      value = item.substr(d);
    }
    int v = 0;
    auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (value.empty() || ec != std::errc() || ptr != value.data() + value.size() || v <= 0)
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("tile config: '{}' must be a positive integer, got '{}'", name, value));
    if (name == "bm" || name == "block_m") t.block_m = v;
    else if (name == "bn" || name == "block_n") t.block_n = v;
    else if (name == "w" || name == "warps") t.warps = v;
    else if (name == "s" || name == "stages") t.stages = v;
    else
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("tile config: unknown knob '{}' (knobs: bm, bn, w, s)", name));
    if (pos > norm.size()) break;
  }
  return t;
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
  return h;
}

std::size_t hash_value(const KernelSpec& s) noexcept {
  std::size_t h = hash_value(s.key);
  mix(h, hash_value(s.tile));
  return h;
}

}  // namespace flashbias
