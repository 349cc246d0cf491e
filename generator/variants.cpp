#include "generator/variants.h"

#include <fmt/format.h>

#include "generator/kernel_source.h"
#include "generator/knobs.h"

namespace flashbias {

std::size_t KnobSpace::size() const {
  std::size_t n = 1;
  for (const auto& [name, values] : all) n *= values.size();
  return n;
}

const KnobSpace& fwd_knob_space(const Arch& arch) {
  static const KnobSpace sm80 = [] {
    ProblemKey key;
    key.direction = Direction::fwd;
    const manifest::EntryInfo& e = kernel_entry(key);
    KnobSpace ks;
    for (const manifest::KnobInfo& k : e.knobs) {
      std::vector<int> values(k.values.begin(), k.values.end());
      const TileKnob* t = find_tile_knob(k.name);
      if (t && t->field == &TileConfig::block_m) ks.block_m = values;
      else if (t && t->field == &TileConfig::block_n) ks.block_n = values;
      else if (t && t->field == &TileConfig::warps) ks.warps = values;
      else if (t && t->field == &TileConfig::stages) ks.stages = values;
      else ks.extra.emplace_back(std::string(k.name), values);
      ks.all.emplace_back(std::string(k.name), std::move(values));
    }
    return ks;
  }();
  (void)arch;  // every supported arch runs the sm80 family today
  return sm80;
}

std::size_t default_smem_limit(const Arch& arch) {
  // Opt-in shared memory per block: A100 163 KiB, H100 227 KiB, consumer Ampere/Ada 99 KiB.
  if (arch.sm >= 90) return 227 * 1024;
  if (arch.sm == 80 || arch.sm == 87) return 163 * 1024;
  return 99 * 1024;
}

std::vector<TileConfig> enumerate_tiles(const ProblemKey& key, std::size_t smem_limit) {
  const KnobSpace& ks = fwd_knob_space(key.arch);
  std::vector<TileConfig> out;
  if (ks.size() == 0) return out;
  // An odometer over the knobs in manifest order, the last one fastest.
  std::vector<std::size_t> at(ks.all.size(), 0);
  for (;;) {
    TileConfig t;
    for (std::size_t i = 0; i < ks.all.size(); ++i) t.set(ks.all[i].first, ks.all[i].second[at[i]]);
    if (legality_error(key, t, smem_limit).empty()) out.push_back(std::move(t));
    std::size_t i = ks.all.size();
    while (i > 0 && ++at[i - 1] == ks.all[i - 1].second.size()) at[--i] = 0;
    if (i == 0) break;
  }
  return out;
}

TileConfig heuristic_tile(const ProblemKey& key, const ShapeInfo& shape, std::size_t smem_limit) {
  // Preference lists per head-dim class, best first. Register counts are ptxas's for sm_80
  // (fp16, rank 16), read with `flashbias gen --emit resources`:
  //  - d <= 64: 4 warps of 32 rows keep 167-220 registers with no spills, and 128x64 tiles with
  //    two K/V stages fit in under 64 KiB, so several CTAs share an SM.
  //  - d <= 128: 4 warps of 32 rows need 255 registers and spill at rank 16; 8 warps of 16 rows
  //    need about 185, so the 128-row tile uses 8 warps.
  //  - d <= 256: a 128x64 tile needs 135 KiB + the factors (over the A100's 163 KiB at rank 128),
  //    so the 64-row tile with 4 warps is the fallback.
  static const std::vector<TileConfig> small_d{{128, 64, 4, 2}, {128, 64, 4, 1}, {64, 64, 4, 1}};
  static const std::vector<TileConfig> mid_d{{128, 64, 8, 2}, {128, 64, 8, 1}, {64, 64, 4, 1}};
  static const std::vector<TileConfig> large_d{{128, 64, 8, 1}, {64, 64, 4, 1}, {64, 32, 4, 1}};
  const auto& prefs = key.head_dim <= 64 ? small_d : key.head_dim <= 128 ? mid_d : large_d;

  // Short query sequences (many small problems, e.g. AlphaFold triangle attention) waste half of
  // a 128-row tile when Nq is not a multiple of 128: prefer 64-row tiles when that halves padding.
  const bool short_rows = shape.seqlen_q <= 64;
  for (const TileConfig& t : prefs) {
    TileConfig c = t;
    if (short_rows && c.block_m == 128) c = TileConfig{64, c.block_n, 4, c.stages};
    if (legality_error(key, c, smem_limit).empty()) return c;
  }
  for (const TileConfig& t : enumerate_tiles(key, smem_limit)) return t;
  throw Error(ErrorCode::unsupported,
              fmt::format("no tile configuration fits {} within {} bytes of shared memory", key.str(), smem_limit));
}

std::vector<DefaultVariant> default_variants(const Arch& arch) {
  struct Row {
    const char* name;
    int d, r;
    MaskKind mask;
  };
  // The benchmark cases of shared/BENCH.md (seed, ALiBi GPT-2, LLM d64/d128, AlphaFold-3).
  static const Row rows[] = {
      {"seed", 32, 8, MaskKind::none},          {"alibi_gpt2", 32, 2, MaskKind::causal},
      {"llm_d64", 64, 16, MaskKind::none},      {"llm_d128", 128, 16, MaskKind::none},
      {"llm_d128_causal", 128, 16, MaskKind::causal}, {"af3_tri", 32, 16, MaskKind::none},
  };
  std::vector<DefaultVariant> out;
  for (DType dt : {DType::f16, DType::bf16})
    for (const Row& r : rows) {
      ProblemKey k;
      k.arch = arch;
      k.dtype = dt;
      k.head_dim = r.d;
      k.rank = r.r;
      k.mask = r.mask;
      k.qkv_align = 16;
      k.bias_align = (r.r * 2) % 16 == 0 ? 16 : (r.r * 2) % 8 == 0 ? 8 : (r.r * 2) % 4 == 0 ? 4 : 2;
      out.push_back({fmt::format("{}_{}", r.name, to_string(dt)), k});
    }
  return out;
}

}  // namespace flashbias
