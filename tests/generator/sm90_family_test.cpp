// The Hopper (sm90) families: which keys they take, their tile spaces and rules, the forward's
// register split it promises the runtime, and what the generator emits for them. No GPU needed;
// the last case compiles with NVRTC and reads the SASS-level resources.
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include "generator/kernel_source.h"
#include "generator/knobs.h"
#include "generator/variants.h"
#include "runtime/compiler.h"
#include "tuner/parallel.h"

namespace flashbias {
namespace {

ProblemKey hopper_key(int d, int r, int bias_align = 16) {
  ProblemKey k;
  k.arch = Arch::parse("sm_90a");
  k.head_dim = d;
  k.rank = r;
  k.bias_align = bias_align;
  return k;
}

}  // namespace

TEST_CASE("the sm90 family takes aligned forward keys on sm_90a only", "[cpu][generator][sm90]") {
  CHECK(kernel_family(hopper_key(128, 16)) == "sm90");
  CHECK(kernel_family(hopper_key(16, 0)) == "sm90");
  ProblemKey k = hopper_key(128, 16);
  k.arch = Arch::parse("sm_90");  // ContextOptions::portable
  CHECK(kernel_family(k) == "sm80");
  k = hopper_key(128, 16);
  k.arch = Arch::parse("sm_80");
  CHECK(kernel_family(k) == "sm80");
  k = hopper_key(128, 16);
  k.qkv_align = 8;  // TMA needs 16-byte rows
  CHECK(kernel_family(k) == "sm80");
  CHECK(kernel_family(hopper_key(8, 3)) == "sm80");  // under one 16-column k step
  // Narrow factors stay on the sm90 family (its producer copies them).
  CHECK(kernel_family(hopper_key(32, 3, 2)) == "sm90");
}

TEST_CASE("the sm90 backward takes head dims in [32, 128] (32 with TMA factors) and ranks up to 32", "[cpu][generator][sm90]") {
  auto bwd = [](int d, int r, int bias_align = 16) {
    ProblemKey k = hopper_key(d, r, bias_align);
    k.direction = Direction::bwd;
    return k;
  };
  CHECK(kernel_family(bwd(128, 16)) == "sm90");
  CHECK(kernel_family(bwd(40, 0)) == "sm90");
  CHECK(kernel_family(bwd(32, 8)) == "sm90");     // TMA loads: ahead of the portable family
  CHECK(kernel_family(bwd(32, 0)) == "sm90");
  CHECK(kernel_family(bwd(32, 3, 2)) == "sm80");  // no TMA for 2-byte factor rows: behind it
  CHECK(kernel_family(bwd(24, 0)) == "sm80");
  CHECK(kernel_family(bwd(72, 3, 2)) == "sm90");
  CHECK(kernel_family(bwd(128, 32)) == "sm90");
  CHECK(kernel_family(bwd(256, 16)) == "sm80");  // dK + dV would not fit the registers
  CHECK(kernel_family(bwd(64, 33)) == "sm80");   // nor dKb
  CHECK(kernel_family(bwd(8, 0)) == "sm80");
  ProblemKey k = bwd(64, 16);
  k.qkv_align = 8;
  CHECK(kernel_family(k) == "sm80");
  k = bwd(64, 16);
  k.arch = Arch::parse("sm_90");
  CHECK(kernel_family(k) == "sm80");

  // Its tiles: block_m = block_n, a warpgroup per 64 rows, one slice; the generated module
  // instantiates the sm90 template with the four backward entry points.
  for (int d : {40, 64, 72, 128})
    for (int r : {0, 3, 16, 32}) {
      const ProblemKey key = bwd(d, r, r == 3 ? 2 : 16);
      const std::vector<TileConfig> tiles = enumerate_tiles(key, default_smem_limit(key.arch));
      INFO(key.str());
      REQUIRE_FALSE(tiles.empty());
      for (const TileConfig& t : tiles) {
        INFO(t.str());
        CHECK(t.block_m == t.block_n);
        CHECK(t.warps == t.block_m / 16);
        CHECK(bwd_slices(key, t) == 1);
        CHECK(kernel_smem_bytes(key, t) <= default_smem_limit(key.arch));
      }
    }
  const ProblemKey key = bwd(128, 16);
  const TileConfig t = heuristic_tile(key, ShapeInfo{32, 8192, 8192}, default_smem_limit(key.arch));
  CHECK(t.str() == "bm128_bn128_w8_s2_tma1");  // step 64, the default; TMA loads
  // Factor rows TMA cannot take keep cp.async loads.
  ProblemKey narrow = bwd(128, 3, 2);
  CHECK(heuristic_tile(narrow, ShapeInfo{32, 8192, 8192}, default_smem_limit(narrow.arch)).get("kTma") == 0);
  // d32, fp16 with a bias and no mask: two warpgroups per CTA at two CTAs per SM over long rows
  // when they fill a wave, one warpgroup at three CTAs per SM over rows of at most 512 keys; the
  // 64-row step tile elsewhere.
  narrow = bwd(32, 16);
  const std::size_t smem = default_smem_limit(narrow.arch);
  CHECK(heuristic_tile(narrow, ShapeInfo{32, 8192, 8192}, smem).str() == "bm128_bn128_w8_s2_minblocks2_step48_tma1");
  CHECK(heuristic_tile(narrow, ShapeInfo{8, 4096, 4096}, smem).str() == "bm128_bn128_w8_s2_minblocks2_step48_tma1");
  CHECK(heuristic_tile(narrow, ShapeInfo{1024, 384, 384}, smem).str() == "bm64_bn64_w4_s3_minblocks3_step48_tma1");
  CHECK(heuristic_tile(narrow, ShapeInfo{2, 4096, 4096}, smem).str() == "bm64_bn64_w4_s2_minblocks3_tma1");  // 64 CTAs
  CHECK(heuristic_tile(narrow, ShapeInfo{64, 32, 8192}, smem).str() == "bm64_bn64_w4_s2_minblocks3_tma1");  // 1 row tile
  ProblemKey other_d32 = narrow;
  other_d32.mask = MaskKind::causal;
  CHECK(heuristic_tile(other_d32, ShapeInfo{32, 8192, 8192}, smem).str() == "bm64_bn64_w4_s2_minblocks3_tma1");
  other_d32 = narrow;
  other_d32.dtype = DType::bf16;
  CHECK(heuristic_tile(other_d32, ShapeInfo{32, 8192, 8192}, smem).str() == "bm64_bn64_w4_s2_minblocks3_tma1");
  other_d32 = bwd(32, 0);
  CHECK(heuristic_tile(other_d32, ShapeInfo{32, 8192, 8192}, smem).str() == "bm64_bn64_w4_s2_minblocks3_tma1");
  // d <= 64 up to rank 16: dkdv walks 48-row query tiles at three CTAs per SM, dq 64-row key tiles.
  narrow = bwd(64, 16);
  CHECK(heuristic_tile(narrow, ShapeInfo{32, 8192, 8192}, default_smem_limit(narrow.arch)).str() ==
        "bm64_bn64_w4_s3_minblocks3_step48_tma1_dqstep64");
  narrow.mask = MaskKind::causal;
  CHECK(heuristic_tile(narrow, ShapeInfo{32, 8192, 8192}, default_smem_limit(narrow.arch)).str() ==
        "bm64_bn64_w4_s2_minblocks3_step48_tma1_dqstep64");
  narrow = bwd(64, 32);  // those tiles spill at rank 32
  CHECK(heuristic_tile(narrow, ShapeInfo{32, 8192, 8192}, default_smem_limit(narrow.arch)).str() ==
        "bm64_bn64_w4_s3_tma1");
  CHECK_THAT(legality_error(narrow, TileConfig::parse("bm=64,bn=64,w=4,s=2,step=64,dqstep=64"), 0),
             Catch::Contains("dqstep equal to step is dqstep 0"));
  CHECK_THAT(legality_error(narrow, TileConfig::parse("bm=64,bn=64,w=4,s=2,step=48,dqstep=48"), 0),
             Catch::Contains("dqstep must be 0 (the step) or 64"));
  // The dq kernel's shared memory follows its own key tile rows.
  const TileConfig split_steps = TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32,dqstep=64");
  const TileConfig same_steps = TileConfig::parse("bm=64,bn=64,w=4,s=2,step=32");
  CHECK(bwd_smem_bytes(narrow, split_steps).dkdv == bwd_smem_bytes(narrow, same_steps).dkdv);
  CHECK(bwd_smem_bytes(narrow, split_steps).dq > bwd_smem_bytes(narrow, same_steps).dq);
  const KernelSource src = generate(KernelSpec{key, t});
  CHECK_THAT(src.source, Catch::Contains("#include \"sm90/bwd_kernel.cuh\""));
  // fp16 with a bias: dkdv and dq also without the factor gradients' residual product.
  REQUIRE(key.dtype == DType::f16);
  REQUIRE(key.rank > 0);
  CHECK(src.entries == std::vector<std::string>{kBwdEntryDkdv, kBwdEntryDq, kBwdEntryPrep, kBwdEntryReduce,
                                                kBwdEntryDkdvHi, kBwdEntryDqHi});
  CHECK_THAT(src.source, Catch::Contains("Kernel::template dkdv<false>(params)") &&
                             Catch::Contains("Kernel::template dq<false>(params)"));
  CHECK(bwd_has_hi_entries(key));
  ProblemKey other = key;
  other.dtype = DType::bf16;  // bf16 keeps the residual everywhere
  CHECK_FALSE(bwd_has_hi_entries(other));
  CHECK(generate(KernelSpec{other, t}).entries.size() == 4);
  other = key;
  other.rank = 0;  // no factor gradients
  CHECK_FALSE(bwd_has_hi_entries(other));
  other = key;
  other.arch.a = false;  // the portable family has them too
  CHECK(bwd_has_hi_entries(other));
  CHECK(src.threads == 256);
  CHECK_THAT(legality_error(key, TileConfig::parse("bm=128,bn=64,w=8,s=2,step=64"), 0),
             Catch::Contains("block_m and block_n must be equal"));
  CHECK_THAT(legality_error(key, TileConfig::parse("bm=128,bn=128,w=12,s=2,step=64"), 0),
             Catch::Contains("warps must be 4 per 64 rows of block_m"));
}

TEST_CASE("the sizes-only part of the sm90 backward rule", "[cpu][generator][sm90]") {
  // Context::backward_workspace_size reserves the scaled Q by it (it may not read pointers);
  // kernel_family's backward rule is it plus the alignment conditions.
  CHECK(sm90_backward_sizes(Arch::parse("sm_90a"), 32, 0));
  CHECK(sm90_backward_sizes(Arch::parse("sm_90a"), 128, 32));
  CHECK_FALSE(sm90_backward_sizes(Arch::parse("sm_90a"), 24, 0));
  CHECK(sm90_backward_sizes(Arch::parse("sm_90a"), 64, 16));
  CHECK_FALSE(sm90_backward_sizes(Arch::parse("sm_90"), 64, 16));  // ContextOptions::portable
  CHECK_FALSE(sm90_backward_sizes(Arch::parse("sm_80"), 64, 16));
  CHECK_FALSE(sm90_backward_sizes(Arch::parse("sm_90a"), 256, 16));
  CHECK_FALSE(sm90_backward_sizes(Arch::parse("sm_90a"), 64, 33));
}

TEST_CASE("every enumerated sm90 tile fits its register split into the launch allocation", "[cpu][generator][sm90]") {
  for (int d : {16, 32, 64, 72, 128, 256})
    for (int r : {0, 2, 3, 16, 128})
      for (int align : {2, 16}) {
        if (r == 0 && align != 16) continue;
        if (r > 0 && (r * 2) % align != 0) continue;
        const ProblemKey key = hopper_key(d, r, r > 0 ? align : 16);
        const std::vector<TileConfig> tiles = enumerate_tiles(key, default_smem_limit(key.arch));
        INFO(key.str());
        REQUIRE_FALSE(tiles.empty());
        for (const TileConfig& t : tiles) {
          INFO(t.str());
          const Sm90RegisterSplit split = sm90_register_split(key, t);
          const int min_blocks = t.get("kMinBlocks").value_or(1);
          const long long launch = (65536 / (split.threads * min_blocks)) / 8 * 8;
          CHECK(split.threads == t.warps * 32);
          CHECK(t.warps == 4 * (t.block_m / 64 + 1));
          if (split.active) {
            CHECK(split.required_regs() <= launch * split.threads);
            CHECK(split.consumer >= 96);
            CHECK(split.consumer <= 240);
            CHECK(split.producer >= 24);
          }
          // Every wgmma's accumulators fit the launch allocation (ptxas refuses otherwise).
          CHECK(launch >= std::max(d, t.block_n) / 2 + 32);
          CHECK(fwd_smem_bytes(key, t) <= default_smem_limit(key.arch));
        }
      }
}

TEST_CASE("sm90 tiles that would starve the consumers are refused with the rule's words", "[cpu][generator][sm90]") {
  // Two CTAs of three consumer warpgroups leave each consumer thread 72-77 registers, whatever
  // the factor rows. Two CTAs fit with every producer: 24 registers (TMA) or 32 (factor rows copied
  // by cp.async or, for 2-byte rows of odd rank, by the warpgroup's loads and stores).
  const TileConfig starving = TileConfig::parse("bm=192,bn=64,w=16,s=2,minblocks=2");
  CHECK_THAT(legality_error(hopper_key(32, 16), starving, 0), Catch::Contains("under 96 registers per consumer thread"));
  CHECK_THAT(legality_error(hopper_key(32, 3, 2), starving, 0), Catch::Contains("under 96 registers per consumer thread"));
  const TileConfig two_ctas = TileConfig::parse("bm=128,bn=64,w=12,s=2,minblocks=2");
  CHECK(legality_error(hopper_key(32, 3, 2), two_ctas, 0).empty());
  CHECK(legality_error(hopper_key(32, 2, 4), two_ctas, 0).empty());
  CHECK(legality_error(hopper_key(32, 16), TileConfig::parse("bm=128,bn=64,w=12,s=2,minblocks=2"), 0).empty());
  CHECK_THAT(legality_error(hopper_key(256, 16), TileConfig::parse("bm=64,bn=64,w=8,s=2,minblocks=2"), 0),
             Catch::Contains("must hold the widest wgmma's accumulators"));
  CHECK_THAT(legality_error(hopper_key(64, 16), TileConfig::parse("bm=128,bn=64,w=8,s=2"), 0),
             Catch::Contains("warps must be 4 per 64 query rows"));
  // The portable family's tiles are not sm90 tiles.
  CHECK_FALSE(legality_error(hopper_key(64, 16), TileConfig::parse("bm=128,bn=64,w=4,s=1"), 0).empty());
}

TEST_CASE("the sm90 forward runs four one-warpgroup CTAs per SM on short d32 rows", "[cpu][generator][sm90]") {
  // af3_tri (N = 384): a handful of key tiles per CTA, so four CTAs per SM overlap one's start
  // with three others' work; long rows keep two CTAs of two consumer warpgroups.
  const std::size_t smem = default_smem_limit(Arch::parse("sm_90a"));
  CHECK(heuristic_tile(hopper_key(32, 16), ShapeInfo{1024, 384, 384}, smem).str() ==
        "bm64_bn64_w8_s3_minblocks4_pvoverlap0");
  CHECK(heuristic_tile(hopper_key(32, 8), ShapeInfo{8, 4096, 4096}, smem).str() ==
        "bm128_bn64_w12_s3_minblocks2_pvoverlap0");
  // Odd rank: the producer's 32 registers leave one consumer warpgroup 96 of the 64-register
  // launch allocation of four CTAs, so odd ranks take the same tile.
  CHECK(heuristic_tile(hopper_key(32, 3, 2), ShapeInfo{1024, 384, 384}, smem).str() ==
        "bm64_bn64_w8_s3_minblocks4_pvoverlap0");
  CHECK(heuristic_tile(hopper_key(32, 3, 2), ShapeInfo{8, 4096, 4096}, smem).str() ==
        "bm128_bn64_w12_s3_minblocks2_pvoverlap0");
  // d64: odd ranks over 64 skip the two-CTA tile that even ranks take (serialised under its
  // 80-register cap with the copy loads).
  CHECK(heuristic_tile(hopper_key(64, 66, 4), ShapeInfo{64, 4096, 4096}, smem).str() ==
        "bm128_bn64_w12_s2_minblocks2_pvoverlap0");
  CHECK(heuristic_tile(hopper_key(64, 65, 2), ShapeInfo{64, 4096, 4096}, smem).str() ==
        "bm128_bn128_w12_s2_pvoverlap0");
  // Four CTAs need the launch allocation (64 registers) to hold the widest wgmma's accumulators.
  CHECK_THAT(legality_error(hopper_key(32, 16), TileConfig::parse("bm=64,bn=128,w=8,s=3,minblocks=4"), 0),
             Catch::Contains("must hold the widest wgmma's accumulators"));
}

TEST_CASE("the sm90 source instantiates the sm90 template with a grid-constant parameter block", "[cpu][generator][sm90]") {
  const ProblemKey key = hopper_key(128, 16);
  const TileConfig t = heuristic_tile(key, ShapeInfo{32, 8192, 8192}, default_smem_limit(key.arch));
  CHECK(t.str() == "bm128_bn128_w12_s2_maxselect1");
  const KernelSource src = generate(KernelSpec{key, t});
  CHECK_THAT(src.source, Catch::Contains("#include \"sm90/fwd_kernel.cuh\""));
  CHECK_THAT(src.source, Catch::Contains("const __grid_constant__ flashbias::Sm90FwdParams params"));
  CHECK(src.threads == 384);
  CHECK(src.smem_bytes == fwd_smem_bytes(key, t));
  CHECK_THAT(src.options.front(), Catch::Contains("sm_90a"));
}

TEST_CASE("every value of every sm90 backward knob compiles", "[nvrtc][generator][sm90]") {
  // The tiles the GPU test of every legal backward tile runs (covering_tiles), for keys of both
  // load forms (TMA with 16-byte factor rows or none, cp.async with 2-byte rows), both dtypes, and
  // head dims from 32 to 128: a legal tile that NVRTC or ptxas refuses (a wgmma's accumulators
  // over the launch allocation) fails here, without a GPU.
  struct Case {
    int d, r, bias_align;
    bool causal, bf16;
  };
  for (const Case& c : {Case{72, 3, 2, true, false}, Case{128, 16, 16, false, true}, Case{32, 8, 16, true, false},
                        Case{96, 0, 16, false, false}}) {
    ProblemKey key = hopper_key(c.d, c.r, c.bias_align);
    key.direction = Direction::bwd;
    key.mask = c.causal ? MaskKind::causal : MaskKind::none;
    key.dtype = c.bf16 ? DType::bf16 : DType::f16;
    REQUIRE(kernel_family(key) == "sm90");
    const std::vector<TileConfig> tiles = covering_tiles(key, default_smem_limit(key.arch));
    REQUIRE_FALSE(tiles.empty());
    std::vector<std::string> failures(tiles.size());
    detail::parallel_for(std::int64_t(tiles.size()), 0, [&](std::int64_t i) {
      const KernelSpec spec{key, tiles[std::size_t(i)]};
      try {
        const CompiledKernel ck = compile(generate(spec));
        if (ck.cubin.empty()) failures[std::size_t(i)] = spec.str() + ": empty cubin";
      } catch (const std::exception& e) {
        failures[std::size_t(i)] = spec.str() + ": " + e.what();
      }
    });
    for (const std::string& f : failures) {
      INFO(f);
      CHECK(f.empty());
    }
  }
}

TEST_CASE("sm90 kernels compile to wgmma code without spills", "[nvrtc][generator][sm90]") {
  const std::pair<Direction, const char*> cases[] = {{Direction::fwd, "bm=128,bn=128,w=12,s=2"},
                                                     {Direction::fwd, "bm=128,bn=64,w=12,s=2,minblocks=2"},
                                                     {Direction::fwd, "bm=192,bn=128,w=16,s=2"},
                                                     {Direction::fwd, "bm=192,bn=128,w=16,s=3,pvoverlap=2"},
                                                     {Direction::fwd, "bm=128,bn=128,w=12,s=2,maxselect=1"},
                                                     {Direction::bwd, "bm=128,bn=128,w=8,s=2,step=64"},
                                                     {Direction::bwd, "bm=64,bn=64,w=4,s=1,step=32"}};
  for (const auto& [dir, cfg] : cases) {
    ProblemKey key = hopper_key(64, 16);
    key.direction = dir;
    const KernelSpec spec{key, TileConfig::parse(cfg)};
    const CompiledKernel ck = compile(generate(spec));
    INFO(spec.str() << ": " << ck.resources.str());
    CHECK(ck.resources.spill_store_bytes == 0);
    CHECK(ck.resources.spill_load_bytes == 0);
    CHECK(ck.cubin.size() > 0);
  }
}

}  // namespace flashbias
