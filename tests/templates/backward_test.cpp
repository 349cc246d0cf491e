// GPU correctness of the backward kernels (prep, dkdv, dq, reduce) through the whole pipeline,
// against the fp64 CPU reference: all five gradients, with the gradients poisoned before every
// run and fresh random inputs every run (the seed is printed on failure). On Hopper the
// dispatcher runs the sm90 family where it applies (head dim <= 128, rank <= 32) and the
// portable family elsewhere; the portable family is also run on its own there.
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include "flashbias/flashbias.hpp"
#include "templates/gpu_test_util.h"
#include "generator/knobs.h"
#include "generator/problem_spec.h"
#include "generator/variants.h"
#include "runtime/compiler.h"
#include "runtime/device.h"
#include "runtime/launch_plan.h"
#include "runtime/loaded_kernel.h"
#include "runtime/validate.h"
#include "tuner/harness.h"
#include "tuner/parallel.h"

namespace flashbias {
namespace {

using test::Case;
using test::family_devices;
using test::fresh_seed;

// The backward issue's matrix: D x R x causal x dtype, each on a shape drawn by rotation from odd
// sizes with Nq != Nk variants, and the four factor broadcast patterns rotating independently for
// Qb and Kb. The fp64 reference needs every row (B*H*Nq*Nk*(6D+3R) multiply-adds), so the longest
// sequences here are 1000.
std::vector<Case> backward_matrix() {
  return test::rotation_matrix({32, 64, 72, 128, 256}, {0, 1, 2, 3, 16, 128},
                               {{1, 1, 2, 3}, {17, 17, 1, 2}, {113, 113, 2, 1}, {1000, 1000, 1, 1},
                                {1000, 777, 1, 1}, {17, 300, 2, 2}, {113, 17, 2, 2}, {1, 257, 1, 2},
                                {777, 1000, 1, 1}, {300, 300, 2, 2}},
                               /*kb_shift=*/1);
}

unsigned worker_count() { return std::max(2u, std::min(8u, std::thread::hardware_concurrency() / 2)); }

bool same_bits(const HostTensor& a, const HostTensor& b) {
  return a.bytes() == b.bytes() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

void run_matrix(bool portable) {
  activate_primary_context(0);
  Context ctx(ContextOptions{0, Policy::heuristic, true, portable});
  test::run_parallel(backward_matrix(), worker_count(), [&](const Case& c, std::uint64_t seed) {
    DeviceProblem problem(c.spec, seed);
    const BackwardCheck r = check_backward(
        problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
        [&](const BackwardArgs& a) { ctx.backward(a, nullptr); }, dout_seed(seed));
    return r.pass ? std::string() : "\n" + r.str();
  });
}

}  // namespace

TEST_CASE("backward matches the fp64 reference over the D x R x mask x dtype matrix", "[gpu][backward]") {
  run_matrix(/*portable=*/false);
}

TEST_CASE("the portable backward matches the fp64 reference on Hopper too", "[gpu][backward][portable]") {
  if (!query_device(0).arch.a) {
    WARN("the device runs the portable family by default; the matrix above covered it");
    return;
  }
  run_matrix(/*portable=*/true);
}

TEST_CASE("ranks whose factor columns do not come in whole 32-column chunks", "[gpu][backward][rank]") {
  // The portable dq accumulates P Kb 32 factor columns at a time; ranks 33-56, 65-88 and 97-120
  // end in a narrower chunk (one, two or three n8 tiles: ranks 36, 112, 56), which failed to
  // compile before session 21. Ranks 50 (4-byte rows) and 113 (2-byte rows) also take the
  // loaders' loop over many narrow passes. Ranks over 32 run the portable family on Hopper too.
  activate_primary_context(0);
  Context ctx(ContextOptions{0, Policy::heuristic, true, false});
  const std::vector<Case> cases = test::rotation_matrix(
      {32, 64, 128}, {36, 50, 56, 112, 113}, {{113, 97, 1, 2}, {17, 300, 2, 1}, {1000, 777, 1, 1}, {1, 129, 2, 1}},
      /*kb_shift=*/1);
  test::run_parallel(cases, worker_count(), [&](const Case& c, std::uint64_t seed) {
    DeviceProblem problem(c.spec, seed);
    const BackwardCheck r = check_backward(
        problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
        [&](const BackwardArgs& a) { ctx.backward(a, nullptr); }, dout_seed(seed));
    return r.pass ? std::string() : "\n" + r.str();
  });
}

TEST_CASE("the dispatcher's d32 tiles for many heads match the reference and repeat bitwise", "[gpu][backward][d32]") {
  // The matrix above has too few heads for the two-warpgroup d32 tile, which the heuristic takes
  // once its CTAs fill a wave (more than 512 keys); rows of at most 512 keys take the three-stage
  // one-warpgroup tile. Through the Context, as a caller runs them: the fp64 reference, then
  // three more runs that must give the same bits.
  activate_primary_context(0);
  const DeviceInfo dev = query_device(0);
  Context ctx(ContextOptions{0, Policy::heuristic, true});
  const std::pair<const char*, const char*> cases[] = {
      {"b=1,h=132,nq=600,nk=777,d=32,r=8", "bm128_bn128_w8_s2_minblocks2_step48_tma1"},
      {"b=2,h=66,n=520,d=32,r=16,qb=1n1r,kb=bn1r", "bm128_bn128_w8_s2_minblocks2_step48_tma1"},
      {"b=8,h=20,nq=384,nk=300,d=32,r=16,kb=1nhr", "bm64_bn64_w4_s3_minblocks3_step48_tma1"}};
  for (const auto& [text, tile] : cases) {
    DeviceProblem problem(parse_problem(text), fresh_seed());
    problem.enable_backward(fresh_seed());
    const BackwardArgs& args = problem.backward_args();
    const ProblemKey key = validate_backward(args, dev);
    INFO(text << " " << key.str());
    if (kernel_family(key) != "sm90") {
      WARN("no sm_90a device: the sm90 backward does not run here");
      return;
    }
    const ShapeInfo shape{args.batch * args.heads, args.seqlen_q, args.seqlen_k};
    REQUIRE(heuristic_tile(key, shape, dev.max_smem_per_block_optin).str() == tile);
    const BackwardCheck r = check_backward(
        problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
        [&](const BackwardArgs& a) { ctx.backward(a, nullptr); }, 0);
    INFO(r.str());
    CHECK(r.pass);
    const DeviceProblem::Gradients first = problem.download_gradients();
    for (int run = 0; run < 3; ++run) {
      problem.poison_gradients();
      ctx.backward(args, nullptr);
      const DeviceProblem::Gradients g = problem.download_gradients();
      INFO("run " << run);
      REQUIRE(same_bits(g.dq, first.dq));
      REQUIRE(same_bits(g.dk, first.dk));
      REQUIRE(same_bits(g.dv, first.dv));
      REQUIRE(same_bits(g.dqb, first.dqb));
      REQUIRE(same_bits(g.dkb, first.dkb));
    }
  }
}

TEST_CASE("every legal backward tile computes the same function", "[gpu][backward][tiles]") {
  // Odd sizes, a rank that needs the k8 tail, broadcast factors (the reduce kernel), causal with
  // Nq != Nk; every legal tile of the knob space, compiled in parallel, loaded directly.
  const char* problems[] = {"b=2,h=2,nq=300,nk=259,d=72,r=3,mask=causal,qb=1n1r,kb=bn1r",
                            "b=1,h=2,nq=130,nk=200,d=128,r=16,dtype=bf16,qb=bnhr,kb=1nhr"};
  for (const DeviceInfo& dev : family_devices())
  for (const char* text : problems) {
    DeviceProblem problem(parse_problem(text), fresh_seed());
    problem.enable_backward(fresh_seed());
    const ProblemKey key = validate_backward(problem.backward_args(), dev);
    // Every value of every knob, each in at least one tile (the legal space is a few hundred tiles,
    // each a four-entry module: compiling them all would take most of the test budget).
    const std::vector<TileConfig> legal = enumerate_tiles(key, dev.max_smem_per_block_optin);
    REQUIRE(!legal.empty());
    std::vector<TileConfig> tiles = covering_tiles(key, dev.max_smem_per_block_optin);
    tiles.push_back(heuristic_tile(key, ShapeInfo{4, 300, 300}, dev.max_smem_per_block_optin));
    UNSCOPED_INFO(text << ": " << tiles.size() << " of " << legal.size() << " legal tiles");
    std::vector<CompiledKernel> compiled(tiles.size());
    detail::parallel_for(std::int64_t(tiles.size()), 0, [&](std::int64_t i) {
      compiled[std::size_t(i)] = compile(generate(KernelSpec{key, tiles[std::size_t(i)]}));
    });
    int checked = 0;
    // A LaunchPlan takes the workspace as given (the Context allocates one when the caller does not).
    DeviceBuffer ws(bwd_workspace_layout(problem.backward_args()).bytes);
    for (std::size_t i = 0; i < tiles.size(); ++i) {
      const KernelSpec spec{key, tiles[i]};
      auto kernel = std::make_shared<const LoadedKernel>(compiled[i]);
      if (kernel->max_active_blocks_per_sm() == 0) continue;  // registers x threads exceed an SM
      LaunchPlan plan(kernel, spec);
      Context ctx(ContextOptions{0, Policy::heuristic, true});
      const BackwardCheck r = check_backward(
          problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
          [&](const BackwardArgs& a) { plan.launch_backward(a, ws.get(), nullptr); }, 0);
      INFO(text << " " << spec.str() << " (" << kernel_family(key) << "):\n" << r.str());
      CHECK(r.pass);
      ++checked;
    }
    INFO(text);
    CHECK(checked > 0);
  }
}

TEST_CASE("the sm90 backward plan encodes its TMA descriptors once per set of tensors", "[gpu][backward][tma]") {
  activate_primary_context(0);
  const DeviceInfo dev = query_device(0);
  const ProblemSpec p = parse_problem("b=2,h=3,nq=300,nk=259,d=64,r=16,mask=causal,kb=1n1r");
  DeviceProblem first(p, fresh_seed());
  first.enable_backward(fresh_seed());
  const ProblemKey key = validate_backward(first.backward_args(), dev);
  if (kernel_family(key) != "sm90") {
    WARN("no sm_90a device: the sm90 backward does not run here");
    return;
  }
  const KernelSpec spec{key, heuristic_tile(key, ShapeInfo{6, 300, 259}, dev.max_smem_per_block_optin)};
  REQUIRE(spec.tile.get("kTma") == 1);
  auto kernel = std::make_shared<const LoadedKernel>(compile(generate(spec)));
  LaunchPlan plan(kernel, spec);
  DeviceBuffer ws(bwd_workspace_layout(first.backward_args()).bytes);
  Context ctx(ContextOptions{0, Policy::heuristic, true});
  auto fwd = [&](const ForwardArgs& a) { ctx.forward(a, nullptr); };
  auto bwd = [&](const BackwardArgs& a) { plan.launch_backward(a, ws.get(), nullptr); };
  CHECK(plan.tma_encodes() == 0);
  BackwardCheck r = check_backward(first, fwd, bwd, 0);
  INFO(r.str());
  CHECK(r.pass);
  CHECK(plan.tma_encodes() == 1);
  bwd(first.backward_args());  // same tensors: the descriptors are reused
  CHECK(plan.tma_encodes() == 1);
  // Other tensors of the same key: new descriptors, and the gradients follow the new tensors.
  DeviceProblem second(p, fresh_seed());
  r = check_backward(second, fwd, bwd, fresh_seed());
  INFO(r.str());
  CHECK(r.pass);
  CHECK(plan.tma_encodes() == 2);
  r = check_backward(first, fwd, bwd, 0);  // back to the first tensors
  INFO(r.str());
  CHECK(r.pass);
  CHECK(plan.tma_encodes() == 3);
}

TEST_CASE("backward results are bitwise identical over 20 runs", "[gpu][backward][determinism]") {
  activate_primary_context(0);
  for (const DeviceInfo& dev : family_devices())
  for (const char* text : {"b=2,h=3,nq=1000,nk=777,d=64,r=3,mask=causal,qb=1n1r,kb=bn1r",
                           "b=1,h=2,n=2048,d=128,r=16,dtype=bf16,qb=bn1r"}) {
    Context ctx(ContextOptions{0, Policy::heuristic, true, !dev.arch.a && query_device(0).arch.a});
    DeviceProblem problem(parse_problem(text), fresh_seed());
    problem.enable_backward(fresh_seed());
    ctx.forward(problem.forward_args(), nullptr);
    DeviceProblem::Gradients first;
    for (int run = 0; run < 20; ++run) {
      problem.poison_gradients();
      ctx.backward(problem.backward_args(), nullptr);
      DeviceProblem::Gradients g = problem.download_gradients();
      if (run == 0) {
        first = std::move(g);
        continue;
      }
      INFO(text << " (" << dev.arch.name() << ") run " << run);
      REQUIRE(same_bits(g.dq, first.dq));
      REQUIRE(same_bits(g.dk, first.dk));
      REQUIRE(same_bits(g.dv, first.dv));
      REQUIRE(same_bits(g.dqb, first.dqb));
      REQUIRE(same_bits(g.dkb, first.dkb));
    }
  }
}

TEST_CASE("a caller's workspace gives the same gradients as the stream-ordered one", "[gpu][backward][workspace]") {
  activate_primary_context(0);
  Context ctx(ContextOptions{0, Policy::heuristic, true});
  DeviceProblem problem(parse_problem("b=2,h=2,nq=200,nk=333,d=64,r=5,mask=causal,qb=1nhr,kb=bn1r"), fresh_seed());
  problem.enable_backward(fresh_seed());
  ctx.forward(problem.forward_args(), nullptr);
  ctx.backward(problem.backward_args(), nullptr);
  const DeviceProblem::Gradients a = problem.download_gradients();
  const std::size_t need = ctx.backward_workspace_size(problem.backward_args());
  REQUIRE(need > 0);
  DeviceBuffer ws(need);
  // Too small a workspace is refused, naming the size it needs.
  try {
    ctx.backward(problem.backward_args(ws.get(), need - 1), nullptr);
    FAIL("a short workspace was accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("workspace_bytes") && Catch::Contains(std::to_string(need)));
  }
  problem.poison_gradients();
  ctx.backward(problem.backward_args(ws.get(), need), nullptr);
  const DeviceProblem::Gradients b = problem.download_gradients();
  CHECK(std::memcmp(a.dq.data(), b.dq.data(), a.dq.bytes()) == 0);
  CHECK(std::memcmp(a.dkb.data(), b.dkb.data(), a.dkb.bytes()) == 0);
  CHECK(std::memcmp(a.dqb.data(), b.dqb.data(), a.dqb.bytes()) == 0);
}

TEST_CASE("factor gradients that are cancelling sums over a few values stay within the bound", "[gpu][backward][delta]") {
  // A factor shared over batch and heads on a row of one query (dQb is one value per rank
  // column), or on rows of three keys (dKb, and dQ of a single row): each gradient is
  // sum_j dS_ij x, and sum_j dS_ij = 0, so it cancels, and Delta taken from the 16-bit O alone
  // errs by up to 1e-1 there (fp64 simulation: 4-16% of random inputs over 2e-3, as the plain
  // implementation does; sm80/bwd_kernel.cuh, "Delta"). Many seeds per shape, both dtypes, both
  // families on Hopper.
  activate_primary_context(0);
  const char* problems[] = {"b=1,h=2,nq=1,nk=257,d=72,r=1,mask=causal,qb=1n1r,kb=1n1r",
                            "b=1,h=2,nq=257,nk=3,d=72,r=1,qb=1n1r,kb=1n1r",
                            "b=1,h=2,nq=1,nk=3,d=64,r=2,qb=1n1r,kb=1n1r"};
  constexpr int kSeeds = 30;
  for (const DeviceInfo& dev : family_devices())
    for (const char* text : problems)
      for (const char* dtype : {"f16", "bf16"}) {
        const std::string problem_text = fmt::format("{},dtype={}", text, dtype);
        Context ctx(ContextOptions{0, Policy::heuristic, true, !dev.arch.a && query_device(0).arch.a});
        int failed = 0;
        for (int i = 0; i < kSeeds; ++i) {
          const std::uint64_t seed = fresh_seed();
          DeviceProblem problem(parse_problem(problem_text), seed);
          const BackwardCheck r = check_backward(
              problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
              [&](const BackwardArgs& a) { ctx.backward(a, nullptr); }, dout_seed(seed));
          if (!r.pass) {
            ++failed;
            UNSCOPED_INFO(problem_text << " (" << dev.arch.name() << ") seed " << seed << ":\n" << r.str());
          }
        }
        INFO(problem_text << " (" << dev.arch.name() << "): " << failed << " of " << kSeeds << " seeds failed");
        CHECK(failed == 0);
      }
}

TEST_CASE("scales in and out of the fold range, and a forward of one family under the other's backward",
          "[gpu][backward][scale]") {
  // With a bias every kernel defines the scores from the scaled Q, round16(scale Q), when
  // |scale| is in [2^-6, 1] (folds_scale_into_q): the backward's P = exp(S - LSE) only sums to
  // one if its S is the forward's, in either family. Other scales take the portable family on
  // Hopper and keep S = scale (Q K^T) + Qb Kb^T. Scales 1/sqrt(72) and 1/sqrt(128) are not powers
  // of two, so the rounding of the scaled Q is real there.
  activate_primary_context(0);
  const bool hopper = query_device(0).arch.a;
  Context fast(ContextOptions{0, Policy::heuristic, true, false});
  Context portable(ContextOptions{0, Policy::heuristic, true, true});
  struct Pair {
    Context* fwd;
    Context* bwd;
    const char* name;
  };
  std::vector<Pair> pairs = {{&fast, &fast, "default"}};
  if (hopper) {
    pairs.push_back({&fast, &portable, "sm90 forward, portable backward"});
    pairs.push_back({&portable, &fast, "portable forward, sm90 backward"});
  }
  for (const char* text :
       {"b=1,h=2,nq=150,nk=97,d=72,r=3", "b=1,h=2,n=257,d=128,r=16,mask=causal", "b=2,h=1,nq=1,nk=200,d=72,r=2",
        "b=1,h=2,nq=97,nk=150,d=64,r=8,scale=1", "b=1,h=2,n=113,d=64,r=8,scale=-0.5,mask=causal",
        "b=1,h=2,n=113,d=72,r=4,scale=0.015625", "b=1,h=2,nq=150,nk=97,d=64,r=8,scale=2.5",
        "b=1,h=2,n=113,d=128,r=4,scale=0.005,mask=causal", "b=1,h=2,n=113,d=64,r=2,scale=-3"})
    for (const char* dtype : {"f16", "bf16"})
      for (const Pair& pr : pairs) {
        const std::string problem_text = fmt::format("{},dtype={}", text, dtype);
        const std::uint64_t seed = fresh_seed();
        DeviceProblem problem(parse_problem(problem_text), seed);
        const BackwardCheck r = check_backward(
            problem, [&](const ForwardArgs& a) { pr.fwd->forward(a, nullptr); },
            [&](const BackwardArgs& a) { pr.bwd->backward(a, nullptr); }, dout_seed(seed));
        INFO(problem_text << " (" << pr.name << ") seed " << seed << ":\n" << r.str());
        CHECK(r.pass);
      }
}

TEST_CASE("small backward problems for the memory and race checkers", "[gpu][sanitize][backward]") {
  // Every code path in few launches: k8 tails (D 72, R 3), 2-byte factor rows, both pipelines
  // (heuristic tiles differ by head dim), split slices (D 128, 256), causal with fully masked rows
  // and key blocks no query sees, broadcast factors (the reduce kernel), ragged tiles, and on
  // Hopper the TMA loads (16-byte factor rows and none) next to the cp.async ones (R 3, R 2),
  // and the scaled copy of Q that prep writes for fp16 with a bias from 1024 keys on.
  for (const DeviceInfo& dev : family_devices())
  for (const char* text :
       {"b=1,h=2,nq=150,nk=97,d=72,r=3,mask=causal,qb=1n1r", "b=2,h=1,nq=97,nk=150,d=64,r=16,dtype=bf16,kb=bn1r",
        "b=1,h=1,n=130,d=128,r=0,mask=causal", "b=1,h=2,nq=65,nk=200,d=32,r=1,qb=1n1r,kb=1nhr",
        "b=1,h=1,n=70,d=256,r=128", "b=1,h=2,nq=400,nk=100,d=64,r=8,mask=causal",
        "b=1,h=1,nq=100,nk=400,d=128,r=2,mask=causal", "b=2,h=2,nq=129,nk=65,d=32,r=8,mask=causal,kb=1n1r",
        "b=1,h=2,nq=70,nk=1030,d=96,r=16,mask=causal"}) {
    Context ctx(ContextOptions{0, Policy::heuristic, true, !dev.arch.a && query_device(0).arch.a});
    DeviceProblem problem(parse_problem(text), fresh_seed());
    const BackwardCheck r = check_backward(
        problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
        [&](const BackwardArgs& a) { ctx.backward(a, nullptr); }, fresh_seed());
    INFO(text << " (" << dev.arch.name() << "):\n" << r.str());
    CHECK(r.pass);
  }
}

}  // namespace flashbias
