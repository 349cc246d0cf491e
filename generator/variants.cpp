#include "generator/variants.h"

#include <algorithm>
#include <iterator>
#include <set>
#include <span>
#include <string_view>

#include <fmt/format.h>

#include "generator/kernel_source.h"
#include "generator/problem_spec.h"
#include "generator/knobs.h"

namespace flashbias {

std::size_t KnobSpace::size() const {
  std::size_t n = 1;
  for (const auto& [name, values] : all) n *= values.size();
  return n;
}

namespace {

KnobSpace read_knob_space(const manifest::EntryInfo& e) {
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
}

}  // namespace

const KnobSpace& knob_space(const ProblemKey& key) {
  // One space per manifest entry, read once (the manifest is constexpr data).
  static const std::vector<std::pair<const manifest::EntryInfo*, KnobSpace>> spaces = [] {
    std::vector<std::pair<const manifest::EntryInfo*, KnobSpace>> v;
    for (const manifest::EntryInfo& e : manifest::entries) v.emplace_back(&e, read_knob_space(e));
    return v;
  }();
  const manifest::EntryInfo* e = &kernel_entry(key);
  for (const auto& [entry, ks] : spaces)
    if (entry == e) return ks;
  throw Error(ErrorCode::internal, fmt::format("{}: its kernel entry is not in the manifest's entry list", key.str()));
}

const KnobSpace& knob_space(const Arch& arch, Direction direction) {
  // A representative key: 16-byte aligned rows and a head dim every family covers.
  ProblemKey key;
  key.arch = arch;
  key.direction = direction;
  key.head_dim = 64;
  return knob_space(key);
}

const KnobSpace& fwd_knob_space(const Arch& arch) { return knob_space(arch, Direction::fwd); }

std::size_t default_smem_limit(const Arch& arch) {
  // Opt-in shared memory per block: A100 163 KiB, H100 227 KiB, consumer Ampere/Ada 99 KiB.
  if (arch.sm >= 90) return 227 * 1024;
  if (arch.sm == 80 || arch.sm == 87) return 163 * 1024;
  return 99 * 1024;
}

std::vector<TileConfig> enumerate_tiles(const ProblemKey& key, std::size_t smem_limit) {
  const KnobSpace& ks = knob_space(key);
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

std::vector<TileConfig> covering_tiles(const ProblemKey& key, std::size_t smem_limit) {
  std::vector<TileConfig> out;
  std::set<std::pair<std::string, int>> covered;
  for (const TileConfig& t : enumerate_tiles(key, smem_limit)) {
    bool adds = false;
    for (const auto& [name, values] : knob_space(key).all)
      adds = covered.insert({name, t.get(name).value_or(-1)}).second || adds;
    if (adds) out.push_back(t);
  }
  return out;
}

int knob_distance(const ProblemKey& key, const TileConfig& a, const TileConfig& b) {
  int d = 0;
  for (const auto& [name, values] : knob_space(key).all) d += a.get(name) != b.get(name) ? 1 : 0;
  return d;
}

std::vector<TileConfig> nearest_first(const ProblemKey& key, std::vector<TileConfig> tiles, const TileConfig& center) {
  std::vector<std::pair<int, std::size_t>> order;
  order.reserve(tiles.size());
  for (std::size_t i = 0; i < tiles.size(); ++i) order.emplace_back(knob_distance(key, tiles[i], center), i);
  std::sort(order.begin(), order.end());  // by distance, then by given position
  std::vector<TileConfig> out;
  out.reserve(tiles.size());
  for (const auto& [d, i] : order) out.push_back(std::move(tiles[i]));
  return out;
}

namespace {

/// The first of `prefs` (best first, each passed through `adjust`) that is legal for `key` within
/// `smem_limit`; else the first legal tile of the knob space; else an error naming the key and
/// the rule its first preference breaks (for a key no tile can serve, such as a head dim that is
/// not a multiple of 8 or a factor alignment the rank's rows cannot have, that rule is the
/// template's limit on the key itself, not the shared memory).
template <class Adjust>
TileConfig first_legal(const ProblemKey& key, const std::vector<TileConfig>& prefs, std::size_t smem_limit,
                       Adjust&& adjust) {
  std::string first_why;
  for (TileConfig t : prefs) {
    adjust(t);
    std::string why = legality_error(key, t, smem_limit);
    if (why.empty()) return t;
    if (first_why.empty()) first_why = std::move(why);
  }
  for (const TileConfig& t : enumerate_tiles(key, smem_limit)) return t;
  throw Error(ErrorCode::unsupported,
              fmt::format("no {}tile configuration is legal for {} within {} bytes of shared memory{}{}",
                          key.direction == Direction::bwd ? "backward " : "", key.str(), smem_limit,
                          first_why.empty() ? "" : ": ", first_why));
}
TileConfig first_legal(const ProblemKey& key, const std::vector<TileConfig>& prefs, std::size_t smem_limit) {
  return first_legal(key, prefs, smem_limit, [](TileConfig&) {});
}

/// The backward's preference lists, from a timing sweep on the benchmark shapes (H100, 2026-11-24,
/// docs/PERF_NOTES.md, backward), each compiled with zero spills for sm_80 and sm_90a. Both tiled
/// kernels use the tile: block_m is the query tile (the dq kernel's rows, the dkdv kernel's inner
/// loop), block_n the key tile. split > 1 recomputes S and dP per slice (2x the work at d128), so
/// it is only the fallback for the widest heads.
TileConfig bwd_heuristic_tile(const ProblemKey& key, const ShapeInfo& shape, std::size_t smem_limit) {
  // d32: the tuner's pick on seed_n16k and af3_tri, 64x64 with 2 warps (16 rows each), beat
  // 128x64 with 4 warps by 12% and 9% side by side (backward alone 4.70 vs 5.28 ms, 0.497 vs
  // 0.541); 128x64 beat 64x64 with 4 warps by 10-15% in the first sweep.
  static const std::vector<TileConfig> d32{TileConfig::parse("bm=64,bn=64,w=2,s=2"),
                                           TileConfig::parse("bm=128,bn=64,w=4,s=2"),
                                           TileConfig::parse("bm=64,bn=64,w=4,s=2"),
                                           TileConfig::parse("bm=32,bn=32,w=2,s=1")};
  // d64: 128x64 with 4 warps was fastest (5.13 ms on llm_d64) but spills 40 bytes in dq; 128x128
  // with 8 warps (5.74) does not.
  static const std::vector<TileConfig> d64{TileConfig::parse("bm=128,bn=128,w=8,s=2"),
                                           TileConfig::parse("bm=64,bn=64,w=4,s=2"),
                                           TileConfig::parse("bm=32,bn=32,w=2,s=1")};
  // d128: 64x64, split 1 (254 registers, no spill): 19.3 ms on llm_d128 vs 42.7 with split 2.
  static const std::vector<TileConfig> d128{TileConfig::parse("bm=64,bn=64,w=4,s=2"),
                                            TileConfig::parse("bm=64,bn=64,w=4,s=2,split=2"),
                                            TileConfig::parse("bm=64,bn=64,w=4,s=1,split=2"),
                                            TileConfig::parse("bm=32,bn=32,w=2,s=1,split=2")};
  static const std::vector<TileConfig> d256{TileConfig::parse("bm=64,bn=64,w=4,s=1,split=4"),
                                            TileConfig::parse("bm=32,bn=32,w=2,s=1,split=4")};
  // d32, ranks over 32: dQb and dKb hold rank / 2 fp32 accumulators per thread and m16 tile, and
  // the two-warp tile (32 rows per warp) spilled 0.8-8 KB (rank 128: 8.2 KB). Four warps of 16
  // rows: b=2,h=8,n=2048,r=128 fwd+bwd 1.08 -> 0.82 ms (H100, session 21). Not at d64 and d128:
  // there the spill-free alternatives (split head dims, 32-row tiles) were not measured faster
  // (d128 rank 128 with split 2: 2.47 against 1.93 ms for the spilling 64x64 tile).
  static const std::vector<TileConfig> d32_wide_rank{TileConfig::parse("bm=64,bn=64,w=4,s=2"),
                                                     TileConfig::parse("bm=32,bn=32,w=2,s=1")};
  const auto& prefs = key.head_dim <= 32    ? (key.rank > 32 ? d32_wide_rank : d32)
                      : key.head_dim <= 64  ? d64
                      : key.head_dim <= 128 ? d128
                                            : d256;
  (void)shape;
  return first_legal(key, prefs, smem_limit);
}

/// The Hopper backward (templates/sm90/bwd_kernel.cuh), from a sweep on the benchmark shapes
/// (H100, 2026-11-24, docs/PERF_NOTES.md, sm90 backward). The dkdv kernel holds dK and dV (d / 2
/// registers each per thread) plus one step's S^T and dP^T (step / 2 each); wider steps feed the
/// tensor cores wider products and win as long as they fit:
///  - d <= 64: one warpgroup per CTA (independent CTAs interleave on the SM instead of two
///    warpgroups in lock step at the CTA barriers), 64-row steps (llm_d64 3.93 ms vs 4.36 for
///    two warpgroups and 4.48 for 32-row steps).
///  - d <= 128: two warpgroups, 64-row steps (llm_d128 11.5 ms, causal 5.85; 48-row steps 12.96
///    and 6.65, 32-row steps 15.8), and three stages: the load of step i + 2 goes into the buffer
///    of step i - 1, so one CTA barrier per step instead of two, which the two warpgroups of a CTA
///    otherwise meet twice (llm_d128 10.27 vs 11.68 ms, causal 5.78 vs 5.97; no change with one
///    warpgroup per CTA at d64, 3.97 vs 3.98). At d128 the dkdv kernel runs at 254-255 registers;
///    the causal mask with three stages spills 24-44 bytes (two stages: 0-8), and ranks over 16
///    spill 64-88 bytes at any stage count, so those keys take two stages, and 48-row steps past
///    rank 16 (the widest that compiles without spills for ranks up to 32 in both dtypes).
TileConfig sm90_bwd_heuristic_tile(const ProblemKey& key, const ShapeInfo& shape, std::size_t smem_limit) {
  // TMA loads (tma=1) first wherever the factors' rows allow them (16-byte aligned; the
  // template's rule skips them otherwise): llm_d64 backward 4.13 -> 3.05 ms, llm_d128 10.27 ->
  // 8.43, causal d128 6.0 -> 4.8 (H100, 2026-11-24, docs/PERF_NOTES.md step 19). With TMA the
  // dq kernel of causal d64 spills 12 bytes at three stages, and the non-causal d128 dkdv 16.
  // d <= 64 up to rank 16: dkdv with 48-row query tiles fits three CTAs per SM (168 registers, no
  // spills; 208 with 64-row tiles, two CTAs), dq keeps 64-row key tiles (dqstep 64). llm_d64
  // (ncu, base clocks): dkdv 2.145 -> 1.891 ms, dq 1.571 -> 1.572; causal: dkdv 1.331 -> 1.236,
  // dq 0.904 -> 0.903 (two stages: three spill 12 bytes in dq). At rank 32 these tiles spill.
  static const TileConfig narrow_three = TileConfig::parse("bm=64,bn=64,w=4,s=3,step=48,tma=1,minblocks=3,dqstep=64");
  static const TileConfig narrow_causal_three =
      TileConfig::parse("bm=64,bn=64,w=4,s=2,step=48,tma=1,minblocks=3,dqstep=64");
  static const std::vector<TileConfig> narrow{TileConfig::parse("bm=64,bn=64,w=4,s=3,step=64,tma=1"),
                                              TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64"),
                                              TileConfig::parse("bm=128,bn=128,w=8,s=2,step=64"),
                                              TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32")};
  static const std::vector<TileConfig> narrow_causal{TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64,tma=1"),
                                                     TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64"),
                                                     TileConfig::parse("bm=128,bn=128,w=8,s=2,step=64"),
                                                     TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32")};
  static const std::vector<TileConfig> wide{TileConfig::parse("bm=128,bn=128,w=8,s=2,step=64,tma=1"),
                                            TileConfig::parse("bm=128,bn=128,w=8,s=3,step=64"),
                                            TileConfig::parse("bm=128,bn=128,w=8,s=2,step=64"),
                                            TileConfig::parse("bm=128,bn=128,w=8,s=2,step=48"),
                                            TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32")};
  static const std::vector<TileConfig> wide_causal{TileConfig::parse("bm=128,bn=128,w=8,s=3,step=64,tma=1"),
                                                   TileConfig::parse("bm=128,bn=128,w=8,s=2,step=64"),
                                                   TileConfig::parse("bm=128,bn=128,w=8,s=2,step=48"),
                                                   TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32")};
  static const std::vector<TileConfig> wide_rank{TileConfig::parse("bm=128,bn=128,w=8,s=2,step=48,tma=1"),
                                                 TileConfig::parse("bm=128,bn=128,w=8,s=2,step=48"),
                                                 TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32")};
  const bool near_cap = key.head_dim > 112;
  const bool causal = key.mask == MaskKind::causal;
  // d32 (TMA only, kernel_family): two stages (af3_tri backward 0.497 ms vs 0.516 with three),
  // and three CTAs per SM (168 registers, no spills up to rank 16): seed_n16k backward 5.04 ->
  // 4.75 ms, af3_tri 0.496 -> 0.432; 48- or 32-row steps (four CTAs) were slower then (before
  // step 24 dropped the residual; fp16 with a bias now takes the tiles below). Rank 32
  // spills at 168 registers, so it keeps the launch allocation.
  static const std::vector<TileConfig> d32{TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64,tma=1,minblocks=3"),
                                           TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64,tma=1")};
  static const std::vector<TileConfig> d32_rank{TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64,tma=1")};
  // d32, fp16, ranks 1-16, no mask (session 26, H100, fwd+bwd in the CLI, two rounds of three;
  // docs/PERF_NOTES.md, the log of the sm90 section, step 29). Since the factor gradients
  // dropped their residual (step 24) these kernels fit 117-130 registers, and 48-row steps win:
  //  - long rows: two warpgroups per CTA (the CTA's Q, dO, factor and LSE tiles serve both
  //    warpgroups' 128 keys) at two CTAs per SM, the winner of a tune of seed_n16k over the
  //    whole space: seed_n16k 4.09-4.24 -> 3.85-3.96 ms, b=2,h=4,n=4096 0.360 -> 0.276 (one wave of 256 CTAs
  //    where the 64-row tile ran 1.3 waves of 512), b=8,h=8,n=1024 0.177 -> 0.169. It needs a
  //    CTA per SM for one wave; with fewer the narrower tile below keeps more CTAs busy.
  //  - rows of at most 512 keys: one warpgroup, three stages, three CTAs per SM: af3_tri 0.434
  //    -> 0.420 ms (the two-warpgroup tile 0.435).
  // Not taken: the causal mask (b=2,h=8,n=8192,r=16: 1.21-1.22 ms against 1.23-1.27), bf16 (the
  // two-warpgroup tile runs seed_n16k 5% faster but spills 16 bytes in dkdv under its
  // 128-register cap), rank 0 (level), rank 32 (spills).
  static const TileConfig d32_two_wg = TileConfig::parse("bm=128,bn=128,w=8,s=2,step=48,tma=1,minblocks=2");
  static const TileConfig d32_short_keys = TileConfig::parse("bm=64,bn=64,w=4,s=3,step=48,tma=1,minblocks=3");
  if (key.head_dim == 32 && key.dtype == DType::f16 && !causal && key.rank >= 1 && key.rank <= 16) {
    const std::int64_t rows = std::min(shape.seqlen_q, shape.seqlen_k);
    const bool one_wave = shape.batch_heads * ((rows + 127) / 128) >= 132;
    const TileConfig* pick = shape.seqlen_k <= 512 ? &d32_short_keys : one_wave ? &d32_two_wg : nullptr;
    if (pick != nullptr && legality_error(key, *pick, smem_limit).empty()) return *pick;
  }
  if (key.head_dim > 32 && key.head_dim <= 64 && key.rank <= 16) {
    const TileConfig& three = causal ? narrow_causal_three : narrow_three;
    if (legality_error(key, three, smem_limit).empty()) return three;  // else the lists below
  }
  const auto& prefs = key.head_dim <= 32            ? (key.rank > 16 ? d32_rank : d32)
                      : key.head_dim <= 64          ? (causal ? narrow_causal : narrow)
                      : near_cap && key.rank > 16   ? wide_rank
                      : near_cap && causal          ? wide_causal
                                                    : wide;
  return first_legal(key, prefs, smem_limit);
}

/// Each of `tiles` with `knobs` appended (TileConfig::parse syntax).
std::vector<TileConfig> with_knobs(std::span<const char* const> tiles, std::string_view knobs) {
  std::vector<TileConfig> out;
  for (const char* t : tiles) out.push_back(TileConfig::parse(fmt::format("{},{}", t, knobs)));
  return out;
}

/// The Hopper forward (templates/sm90/fwd_kernel.cuh), from timing sweeps on the benchmark
/// shapes (H100, 2026-11-24, docs/PERF_NOTES.md, sm90 forward). Every entry names its product
/// order (pvoverlap, FwdKnobs::kPvOverlap):
///  - d <= 32: exp-bound; two CTAs per SM of two consumer warpgroups with 64-key tiles and three
///    stages, P V after each tile's softmax (pvoverlap 0): seed_n4k 0.0766-0.0774 ms, af3_tri
///    0.1071-0.1079, seed_n16k 1.058-1.069, against 0.0776-0.0784, 0.1092-0.1103 and
///    1.066-1.074 with P V behind the next tile's score products (pvoverlap 2). With the causal
///    mask and enough rows for four waves of one CTA per SM, three consumer warpgroups with
///    192-key tiles: alibi_gpt2 0.897-0.903 ms against 0.988-1.005 for the two-CTA tile (which
///    stays for fewer rows: seed_n4k ran 0.103 with 192x192, 176 CTAs on 132 SMs). Factor rows of
///    odd rank (2-byte aligned, copied by the producer's loads and stores) took three consumer
///    warpgroups of one CTA until session 22, when the copy moved to the whole producer
///    warpgroup and its registers fell from 56 to 32; they now fit two CTAs. Rows of at
///    most 512 keys (a CTA sees a handful of key tiles, so its start, the wait for its Q tile,
///    weighs: 9% of af3_tri's warp samples): four CTAs per SM of one consumer warpgroup each,
///    af3_tri 0.1011-0.1025 ms against 0.1072-0.1088, and 0.0887-0.0897 against 0.0953-0.0958
///    with the causal mask and rank 2 (0.130 with the 192x192 tile). At 1024 and 2048 keys the
///    two tiles are within 1.5% of each other; seed_n4k (4096 keys) runs 0.092 with four CTAs
///    against 0.078.
///  - d <= 64: three consumer warpgroups, 128-key tiles, three stages, pvoverlap 2, taking turns
///    at the score products (pingpong 1): llm_d64 0.616-0.619 ms against 0.642-0.646 without
///    turns and 0.639-0.642 with two stages and pvoverlap 0 (which turns make slower, 0.667-0.673).
///    Where the 192-row tile's factor tiles overflow shared memory (ranks over 64), two CTAs of
///    128x64, except for odd ranks, whose copy loads serialise that tile: 128x128, one CTA.
///  - d <= 128: two consumer warpgroups, 128-key tiles; P V overlapped with the next Q K^T
///    (pvoverlap 1) without a mask (8-12% on llm_d128), not with the causal mask
///    (llm_d128_causal 1.115 ms vs 1.153), where the two warpgroups take turns instead
///    (pingpong 1: 1.074-1.076 ms against 1.123-1.125; without a mask even, 2.02-2.14 vs
///    2.01-2.02). The d32 rows run slower with turns (seed_n16k 1.12 vs 1.065, alibi_gpt2 0.911
///    vs 0.897). Without a mask the row max by compare and select
///    (maxselect 1: llm_d128 2.00-2.10 ms against 2.11-2.23 with FMNMX; every other row is 5-9%
///    faster with FMNMX, llm_d128_causal 1.12 against 1.19-1.20).
///  - d <= 256: 64-key tiles fit the shared memory with two consumer warpgroups.
TileConfig sm90_fwd_heuristic_tile(const ProblemKey& key, const ShapeInfo& shape, std::size_t smem_limit) {
  // The d32 tiles (P V after each tile's softmax, pvoverlap 0, for all of them): two CTAs of two
  // consumer warpgroups, one CTA of three, four CTAs of one, and the 192x192 tile.
  static constexpr const char* kTwoCtas = "bm=128,bn=64,w=12,s=3,minblocks=2";
  static constexpr const char* kThreeWgs = "bm=192,bn=64,w=16,s=2";
  static constexpr const char* kD32[] = {kTwoCtas, kThreeWgs, "bm=128,bn=128,w=12,s=2"};
  static constexpr const char* kD32ShortKeys[] = {"bm=64,bn=64,w=8,s=3,minblocks=4", kTwoCtas, kThreeWgs};
  static constexpr const char* kD32CausalMany[] = {"bm=192,bn=192,w=16,s=2", kTwoCtas, kThreeWgs};
  static const std::vector<TileConfig> d32 = with_knobs(kD32, "pvoverlap=0");
  static const std::vector<TileConfig> d32_short_keys = with_knobs(kD32ShortKeys, "pvoverlap=0");
  static const std::vector<TileConfig> d32_causal_many = with_knobs(kD32CausalMany, "pvoverlap=0");
  static const std::vector<TileConfig> d64{TileConfig::parse("bm=192,bn=128,w=16,s=3,pvoverlap=2,pingpong=1"),
                                           TileConfig::parse("bm=128,bn=64,w=12,s=2,minblocks=2,pvoverlap=0"),
                                           TileConfig::parse("bm=128,bn=128,w=12,s=2,pvoverlap=0")};
  // Odd ranks at d64 (2-byte factor rows copied by the producer's loads): the two-CTA tile,
  // which ranks over 64 reach, compiles serialised with a spill under its 80-register cap.
  static const std::vector<TileConfig> d64_narrow{d64[0], d64[2]};
  // The d128, d256 and short-row tiles, each with the product order of its mask (above).
  static constexpr const char* kD128[] = {"bm=128,bn=128,w=12,s=2", "bm=128,bn=64,w=12,s=2", "bm=64,bn=64,w=8,s=2"};
  static constexpr const char* kD256[] = {"bm=128,bn=64,w=12,s=2", "bm=64,bn=64,w=8,s=2"};
  static constexpr const char* kShort[] = {"bm=64,bn=64,w=8,s=2,minblocks=2", "bm=64,bn=128,w=8,s=2", "bm=64,bn=64,w=8,s=2"};
  static const std::vector<TileConfig> d128 = with_knobs(kD128, "pvoverlap=1,maxselect=1");
  static const std::vector<TileConfig> d128_causal = with_knobs(kD128, "pvoverlap=0,pingpong=1");
  static const std::vector<TileConfig> d256 = with_knobs(kD256, "pvoverlap=1");
  static const std::vector<TileConfig> d256_causal = with_knobs(kD256, "pvoverlap=0");
  static const std::vector<TileConfig> short_rows_overlap = with_knobs(kShort, "pvoverlap=1");
  static const std::vector<TileConfig> short_rows = with_knobs(kShort, "pvoverlap=0");
  const bool causal = key.mask != MaskKind::none;
  // Four waves of one 192-row CTA per SM on a 132-SM GPU.
  const bool many_rows = shape.batch_heads * ((shape.seqlen_q + 191) / 192) >= 4 * 132;
  const auto& prefs = shape.seqlen_q <= 64    ? (key.head_dim > 64 && !causal ? short_rows_overlap : short_rows)
                      : key.head_dim <= 32  ? (shape.seqlen_k <= 512 ? d32_short_keys
                                               : causal && many_rows   ? d32_causal_many
                                                                       : d32)
                      : key.head_dim <= 64  ? (key.rank > 0 && key.bias_align == 2 ? d64_narrow : d64)
                      : key.head_dim <= 128 ? (causal ? d128_causal : d128)
                                            : (causal ? d256_causal : d256);
  return first_legal(key, prefs, smem_limit);
}

}  // namespace

namespace {

/// Hopper (sm_90, the portable family), f16, d32 with 16-byte Q/K/V rows and the rank's widest
/// factor alignment, one of `ranks`: the keys the d32 register-bound tiles are measured and
/// compiled for.
template <std::size_t N>
bool hopper_f16_d32_key(const ProblemKey& key, const int (&ranks)[N]) {
  return key.direction == Direction::fwd && kernel_family(key) == "sm80" && key.arch.sm == 90 &&
         key.dtype == DType::f16 && key.head_dim == 32 && key.qkv_align == 16 &&
         key.bias_align == dense_problem_key(ProblemSpec{.rank = key.rank}, key.arch).bias_align &&
         std::find(std::begin(ranks), std::end(ranks), key.rank) != std::end(ranks);
}

}  // namespace

bool portable_ahead_fits(const ProblemKey& key) {
  constexpr int kRanks[] = {0, 2, 8, 16, 32, 128};
  return hopper_f16_d32_key(key, kRanks);
}

bool portable_ahead_mmasum_fits(const ProblemKey& key) {
  constexpr int kRanks[] = {0, 16, 32};
  return hopper_f16_d32_key(key, kRanks);
}

TileConfig heuristic_tile(const ProblemKey& key, const ShapeInfo& shape, std::size_t smem_limit) {
  if (key.direction == Direction::bwd)
    return kernel_family(key) == "sm90" ? sm90_bwd_heuristic_tile(key, shape, smem_limit)
                                        : bwd_heuristic_tile(key, shape, smem_limit);
  if (kernel_family(key) == "sm90") return sm90_fwd_heuristic_tile(key, shape, smem_limit);
  // Preference lists per head-dim class, best first, from the sweep of every legal tile on the
  // benchmark shapes (H100, 2026-11-24, docs/PERF_NOTES.md, sm80 forward step 7); a tuned winner
  // overrides them.
  //  - d <= 32, long rows: 128x128 tiles, 4 warps of 32 rows, one K/V stage (242 registers, 2 CTAs
  //    per SM): wide key tiles halve the per-tile barriers and row reductions. Best on seed_n4k,
  //    seed_n16k and alibi_gpt2.
  //  - d <= 32, short rows (Nk <= 512, e.g. AlphaFold triangle attention at N = 384): 128x64 with
  //    two stages and 3 CTAs per SM (167 registers): too few key tiles to amortise a 128-wide one.
  //  - d <= 64: 128x64, two stages (217 registers). The sweep's faster 128x128 and min-blocks
  //    variants spill at d64 (the nvrtc test of the default set refuses spills).
  //  - d <= 128: 128x64, 4 warps of 32 rows, one stage, 2 CTAs per SM (252 registers, no spill
  //    since P is packed to 16 bits early); 8 warps of 16 rows double the shared-memory reads per
  //    FLOP and lose 25-35%. O is rescaled lazily (lazyrescale=1: 128 multiplies per thread and
  //    tile skipped, llm_d128 -4%); at d <= 64 the vote and branch cost more than they save (the knob
  //    stays 0 there: d32 +5-7%, d64 +2.5%, H200, 2026-12-06).
  //  - d <= 256: a 128x64 tile needs 135 KiB + the factors (over the A100's 163 KiB at rank 128),
  //    so the 64-row tile with 4 warps is the fallback.
  static const std::vector<TileConfig> d32_long{TileConfig::parse("bm=128,bn=128,w=4,s=1"),
                                                TileConfig::parse("bm=128,bn=64,w=4,s=2"),
                                                TileConfig::parse("bm=64,bn=64,w=4,s=1")};
  static const std::vector<TileConfig> d32_short{TileConfig::parse("bm=128,bn=64,w=4,s=2,minblocks=3"),
                                                 TileConfig::parse("bm=128,bn=64,w=4,s=2"),
                                                 TileConfig::parse("bm=64,bn=64,w=4,s=1")};
  static const std::vector<TileConfig> d64{TileConfig::parse("bm=128,bn=64,w=4,s=2"),
                                           TileConfig::parse("bm=128,bn=64,w=4,s=1"),
                                           TileConfig::parse("bm=64,bn=64,w=4,s=1")};
  static const std::vector<TileConfig> mid_d{TileConfig::parse("bm=128,bn=64,w=4,s=1,minblocks=2,lazyrescale=1"),
                                             TileConfig::parse("bm=128,bn=32,w=4,s=2"),
                                             TileConfig::parse("bm=64,bn=64,w=4,s=1")};
  static const std::vector<TileConfig> large_d{TileConfig::parse("bm=128,bn=64,w=8,s=1"),
                                               TileConfig::parse("bm=64,bn=64,w=4,s=1"),
                                               TileConfig::parse("bm=64,bn=32,w=4,s=1")};
  // d32, f16, long rows on Hopper: the 128x64 tile that scores the next key tile while it
  // exponentiates this one (ahead=1, 255 registers) interleaves the tensor-core products with the
  // exponentials inside each warp: seed_n4k -5%, seed_n16k -3% against the 128x128 tile, alibi_gpt2
  // even, af3_tri's 384 keys +17% (too few tiles to fill the pipeline), bf16 +15% (it spills
  // there) (H100, 2026-12-07, docs/PERF_NOTES.md sm80 forward step 10). The register file is
  // full, and ptxas spills on other ranks and alignments, so it is taken only on the keys the
  // nvrtc test compiles without spills: the rank's widest factor alignment, ranks 0, 2, 8, 16, 32
  // and 128, either mask.
  //
  // On the same keys the row sums can come from the tensor cores (mmasum=1: P times ones inside
  // P V, one FADD per score fewer; H100, 2026-12-07, docs/PERF_NOTES.md sm80 forward step 11):
  //  - past 8192 keys without a mask the 128x128 one-stage tile with mmasum is fastest (seed_n16k
  //    1.18 against 1.21 ms for the ahead tile, rank 16 1.28 against 1.31; at 8192 keys the three
  //    are even, at 4096 and below the ahead tile wins). The line sits on a shape-bucket boundary
  //    (generator/shape_bucket.h), so every shape of a bucket gets the same tile;
  //  - the ahead tile takes mmasum as well on the ranks where it still compiles without spills
  //    (0, 16, 32: 0.5-2% on every row measured). On ranks 2, 8 and 128 ptxas parks 4-20 bytes
  //    of loop-invariant values on the stack; ranks 2 and 8 measured faster even so (seed_n4k
  //    0.0841 against 0.0847 ms, alibi_gpt2 1.05 against 1.07), but the forward's heuristic and
  //    the tuner (which rejects every spilling candidate but the heuristic's own) stay with tiles that
  //    compile clean.
  static const std::vector<TileConfig> d32_ahead{TileConfig::parse("bm=128,bn=64,w=4,s=2,minblocks=2,ahead=1"),
                                                 TileConfig::parse("bm=128,bn=128,w=4,s=1")};
  static const std::vector<TileConfig> d32_ahead_mmasum{
      TileConfig::parse("bm=128,bn=64,w=4,s=2,minblocks=2,ahead=1,mmasum=1"),
      TileConfig::parse("bm=128,bn=128,w=4,s=1,mmasum=1")};
  static const std::vector<TileConfig> d32_wide_mmasum{TileConfig::parse("bm=128,bn=128,w=4,s=1,mmasum=1"),
                                                       TileConfig::parse("bm=128,bn=64,w=4,s=2")};
  const bool ahead = portable_ahead_fits(key) && shape.seqlen_q > 64;
  const auto& d32_hopper = key.mask == MaskKind::none && shape.seqlen_k > 8192 ? d32_wide_mmasum
                           : portable_ahead_mmasum_fits(key)                    ? d32_ahead_mmasum
                                                                                : d32_ahead;
  // Short d32 rows on Hopper: 32-key tiles with the row sums on the tensor cores, four CTAs (16
  // warps) per SM against three for the 128x64 tile (af3_tri 0.1128-0.1139 against 0.1157-0.1168
  // ms, H100, 2026-12-07; the portable tune's pick; docs/PERF_NOTES.md sm80 forward step 16).
  // minblocks=4 holds every rank, alignment, dtype and mask to 128 registers without spills (the
  // nvrtc test of the short-row tile); without it some keys take 129-137 and fit three CTAs.
  static const std::vector<TileConfig> d32_short_mmasum{TileConfig::parse("bm=128,bn=32,w=4,s=2,minblocks=4,mmasum=1"),
                                                        TileConfig::parse("bm=128,bn=64,w=4,s=2,minblocks=3,mmasum=1"),
                                                        TileConfig::parse("bm=64,bn=64,w=4,s=1")};
  const auto& d32_rows_short = key.arch.sm == 90 ? d32_short_mmasum : d32_short;
  const auto& prefs = key.head_dim <= 32    ? (shape.seqlen_k <= 512 ? d32_rows_short : ahead ? d32_hopper : d32_long)
                      : key.head_dim <= 64  ? d64
                      : key.head_dim <= 128 ? mid_d
                                            : large_d;

  // Short query sequences waste most of a 128-row tile: prefer 64-row tiles there.
  const bool short_rows = shape.seqlen_q <= 64;
  return first_legal(key, prefs, smem_limit, [&](TileConfig& t) {
    if (short_rows && t.block_m == 128) {
      t.block_m = 64;
      t.warps = 4;
    }
  });
}

std::vector<DefaultVariant> default_variants(const Arch& arch) {
  struct Row {
    const char* name;
    int d, r;
    MaskKind mask;
    std::int64_t batch_heads, n;
  };
  // The benchmark cases of shared/BENCH.md (seed, ALiBi GPT-2, LLM d64/d128, AlphaFold-3); seed
  // at seed_n4k's extents (seed_n16k's pick the same tile).
  static const Row rows[] = {
      {"seed", 32, 8, MaskKind::none, 8, 4096},          {"alibi_gpt2", 32, 2, MaskKind::causal, 50, 8192},
      {"llm_d64", 64, 16, MaskKind::none, 64, 4096},     {"llm_d128", 128, 16, MaskKind::none, 32, 8192},
      {"llm_d128_causal", 128, 16, MaskKind::causal, 32, 8192}, {"af3_tri", 32, 16, MaskKind::none, 1024, 384},
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
      k.bias_align = dense_problem_key(ProblemSpec{.rank = r.r}, arch).bias_align;
      out.push_back({fmt::format("{}_{}", r.name, to_string(dt)), k, ShapeInfo{r.batch_heads, r.n, r.n}});
    }
  return out;
}

}  // namespace flashbias
