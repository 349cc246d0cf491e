// GPU correctness of the forward kernels (the sm90 family on Hopper, the portable sm80 family
// everywhere, both on Hopper) through the whole pipeline (generate -> NVRTC ->
// driver -> Context dispatch), against the fp64 CPU reference. Outputs are poisoned before every
// run and inputs are fresh random draws every run (the seed is printed on failure).
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <chrono>
#include <mutex>
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

// The matrix of the forward issue: D x R x causal x dtype, each combination on one shape drawn
// (deterministically, by rotation) from N in {1, 17, 113, 1000, 4096} with Nq != Nk variants and
// the four factor broadcast patterns, so every size and pattern meets every kernel class.
std::vector<Case> forward_matrix() {
  return test::rotation_matrix({32, 64, 72, 128, 256}, {0, 1, 2, 3, 8, 16, 32, 128},
                               {{1, 1, 2, 3}, {17, 17, 1, 2}, {113, 113, 2, 1}, {1000, 1000, 1, 2},
                                {4096, 4096, 1, 1}, {1000, 777, 1, 2}, {17, 4096, 1, 1}, {113, 17, 2, 2},
                                {1, 1000, 1, 1}, {777, 1000, 1, 2}},
                               /*kb_shift=*/0);
}

// Runs `cases` through one Context on `threads` host threads (test::run_parallel).
void run_cases(const std::vector<Case>& cases, unsigned threads, std::int64_t rows, bool portable = false) {
  ContextOptions opts;
  opts.device = 0;
  opts.portable = portable;
  activate_primary_context(0);
  Context ctx(opts);
  test::run_parallel(cases, threads, [&](const Case& c, std::uint64_t seed) {
    DeviceProblem problem(c.spec, seed);
    const CheckResult r = check_forward(problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); }, rows);
    return r.pass ? std::string() : r.str();
  });
}

unsigned worker_count() { return std::max(2u, std::min(16u, std::thread::hardware_concurrency())); }

}  // namespace

TEST_CASE("forward matches the fp64 reference over the D x R x mask x dtype matrix", "[gpu][forward]") {
  run_cases(forward_matrix(), worker_count(), 96);
}

TEST_CASE("the portable family matches the fp64 reference on Hopper too", "[gpu][forward][portable]") {
  if (!query_device(0).arch.a) {
    WARN("the device runs the portable family by default; the matrix above covered it");
    return;
  }
  run_cases(forward_matrix(), worker_count(), 96, /*portable=*/true);
}

TEST_CASE("the portable heuristic's long-row d32 tiles match the fp64 reference", "[gpu][forward][portable]") {
  // On Hopper the portable heuristic takes, for f16 d32 keys past 512 keys, the look-ahead tile
  // (with the tensor-core row sums on ranks 0, 16 and 32) and past 8192 keys without a mask the
  // 128x128 tile with the tensor-core row sums (generator/variants.cpp). The matrix above stops
  // at 4096 keys, so these reach the last one; ragged key ends, Nq != Nk, the scale both folded
  // (r > 0) and not (r = 0, a negative scale), broadcast factors.
  if (!query_device(0).arch.a) {
    WARN("the device runs the portable family by default; these tiles are Hopper's only");
    return;
  }
  std::vector<Case> cases;
  for (const char* s : {"b=1,h=2,nq=200,nk=9000,d=32,r=16", "b=2,h=1,nq=130,nk=8193,d=32,r=8,qb=1n1r,kb=bn1r",
                        "b=1,h=2,nq=150,nk=9001,d=32,r=0", "b=1,h=1,nq=100,nk=8500,d=32,r=0,scale=-0.5",
                        "b=1,h=2,nq=70,nk=8200,d=32,r=128", "b=1,h=2,nq=1000,nk=1200,d=32,r=32,mask=causal",
                        "b=1,h=2,nq=300,nk=5000,d=32,r=16"})
    cases.push_back(Case{parse_problem(s), s});
  run_cases(cases, worker_count(), 96, /*portable=*/true);
}

TEST_CASE("wide factors of narrow alignment match the fp64 reference in both families", "[gpu][forward][rank]") {
  // Factor rows of odd rank (2-byte) and of ranks 2 or 4 mod 8 (4- and 8-byte) past 32: the
  // portable family copies them in many passes per thread (a loop past eight), the Hopper
  // producer by cp.async past eight units per lane in a loop (ranks 50, 66) or through its lanes
  // (odd ranks). The main matrix's ranks (up to 32, and 128) take neither path.
  const std::vector<Case> cases = test::rotation_matrix(
      {32, 64, 128}, {33, 50, 66, 113}, {{113, 97, 1, 2}, {17, 300, 2, 1}, {1000, 777, 1, 1}, {1, 129, 2, 1}},
      /*kb_shift=*/1);
  run_cases(cases, worker_count(), 96);
  if (query_device(0).arch.a) run_cases(cases, worker_count(), 96, /*portable=*/true);
}

TEST_CASE("negative and zero softmax scales match the reference in both families", "[gpu][forward][scale]") {
  // A negative scale reverses the order of the scores. Folded into exp2 as is, a masked score
  // (-inf) would become +inf and the raw row max the smallest exponent, which overflows once
  // |scale| times the score range passes ~88 (scale -20 here); zero would give -inf * 0 = NaN
  // there, and must give uniform rows. Without a bias the kernels flip (or zero) Q in shared
  // memory and fold |scale|; with one they scale before the bias. Odd sizes, so the tiles past
  // the end are masked.
  std::vector<Case> cases;
  for (const char* s : {"b=1,h=2,nq=113,nk=77,d=64,r=0,mask=causal,scale=-0.3",
                        "b=2,h=2,n=300,d=64,r=0,scale=-20", "b=1,h=2,n=257,d=128,r=0,mask=causal,scale=-20,dtype=bf16",
                        "b=1,h=3,nq=17,nk=1000,d=32,r=0,scale=-1", "b=1,h=2,nq=17,nk=113,d=32,r=2,mask=causal,scale=-0.7",
                        "b=1,h=2,n=300,d=64,r=8,scale=-20", "b=1,h=2,n=129,d=64,r=0,scale=0",
                        "b=1,h=2,n=129,d=64,r=4,mask=causal,scale=0"})
    cases.push_back(Case{parse_problem(s), s});
  run_cases(cases, worker_count(), 300);
  if (query_device(0).arch.a) run_cases(cases, worker_count(), 300, /*portable=*/true);
}

TEST_CASE("scales in and out of the fold range match the reference in both families", "[gpu][forward][scale]") {
  // With a bias and |scale| in [2^-6, 1] (folds_scale_into_q) the kernels scale Q once in 16 bits
  // and run S = (scale Q) K^T + Qb Kb^T; other scales run the portable family on Hopper, which
  // scales the scores. The bounds themselves, non-power-of-two scales (the rounding of the
  // scaled Q is real), both dtypes.
  std::vector<Case> cases;
  for (const char* s : {"b=1,h=2,nq=113,nk=300,d=72,r=3,scale=1", "b=1,h=2,n=257,d=128,r=16,mask=causal,scale=0.015625",
                        "b=1,h=2,n=257,d=128,r=16,mask=causal,scale=0.0883883", "b=1,h=2,nq=300,nk=17,d=64,r=8,scale=-0.3",
                        "b=1,h=2,n=300,d=64,r=8,scale=1.5", "b=1,h=2,nq=17,nk=1000,d=72,r=2,scale=0.01,mask=causal",
                        "b=1,h=2,n=129,d=128,r=1,scale=-1.0001"})
    for (const char* dtype : {"f16", "bf16"}) {
      const std::string text = fmt::format("{},dtype={}", s, dtype);
      cases.push_back(Case{parse_problem(text), text});
    }
  run_cases(cases, worker_count(), 300);
  if (query_device(0).arch.a) run_cases(cases, worker_count(), 300, /*portable=*/true);
}

TEST_CASE("row maxima that climb over the key tiles match the reference in both families", "[gpu][forward][climb]") {
  // The portable forward keeps a row's max until a tile raises it by more than 2^8 and rescales O
  // only then (sm80/softmax.cuh, kLazyRescale). Random scores hardly move the max after the first
  // tiles, so here the bias makes them climb: Qb = (1, 0, ...), Kb = (slope * (Nk - 1 - j), 0, ...)
  // adds a ramp over the keys that rises towards key 0, the last tile the kernels visit. Slopes
  // from about one log2 unit per tile (several tiles kept, then a move) to many (a move per tile).
  // The heuristic's portable tiles rescale lazily at d72 and d128; d32 and d64 run the eager
  // rescale (and the sm90 family its own) on the same kind of inputs.
  struct Climb {
    const char* problem;
    double slope;
  };
  const Climb climbs[] = {{"b=1,h=2,n=1000,d=64,r=2", 0.05},
                          {"b=1,h=2,nq=300,nk=4096,d=128,r=2,mask=causal", 0.01},
                          {"b=2,h=1,nq=113,nk=1000,d=32,r=1", 0.12},
                          {"b=1,h=2,n=777,d=72,r=3,mask=causal", 0.02}};
  std::vector<bool> families{false};
  if (query_device(0).arch.a) families.push_back(true);  // portable as well
  ContextOptions base;
  base.device = 0;
  activate_primary_context(0);
  for (const bool portable : families) {
    ContextOptions opts = base;
    opts.portable = portable;
    Context ctx(opts);
    for (const Climb& c : climbs)
      for (const char* dtype : {"f16", "bf16"}) {
        const std::string text = fmt::format("{},dtype={}", c.problem, dtype);
        const ProblemSpec spec = parse_problem(text);
        DeviceProblem problem(spec, fresh_seed());
        AttentionInputs in = problem.inputs();
        for (std::int64_t b = 0; b < spec.batch; ++b)
          for (std::int64_t h = 0; h < spec.heads; ++h) {
            for (std::int64_t i = 0; i < spec.seqlen_q; ++i)
              for (std::int64_t x = 0; x < spec.rank; ++x) in.qb.set(b, i, h, x, x == 0 ? 1.0 : 0.0);
            for (std::int64_t j = 0; j < spec.seqlen_k; ++j)
              for (std::int64_t x = 0; x < spec.rank; ++x)
                in.kb.set(b, j, h, x, x == 0 ? c.slope * double(spec.seqlen_k - 1 - j) : 0.0);
          }
        AttentionInputs swapped = in;
        std::swap(swapped.q, swapped.qb);
        CHECK_THROWS_WITH(problem.set_inputs(swapped), Catch::Contains("set_inputs: q does not have"));
        problem.set_inputs(std::move(in));
        const CheckResult r = check_forward(problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); }, 300);
        INFO((portable ? "portable " : "") << text << " slope " << c.slope << ": " << r.str());
        CHECK(r.pass);
      }
  }
}

namespace {

/// Every legal tile of `problem` (both masks, the given dtypes), each loaded directly and checked
/// against fp64.
void check_every_tile(const char* problem_text, std::initializer_list<DType> dtypes) {
  for (const DeviceInfo& dev : family_devices())
  for (DType dt : dtypes)
    for (MaskKind m : {MaskKind::none, MaskKind::causal}) {
      ProblemSpec p = parse_problem(problem_text);
      p.dtype = dt;
      p.mask = m;
      DeviceProblem problem(p, fresh_seed());
      const ProblemKey key = validate_forward(problem.forward_args(), dev);
      // Compiled in parallel (NVRTC is thread-safe per program), checked one by one.
      const std::vector<TileConfig> tiles = enumerate_tiles(key, dev.max_smem_per_block_optin);
      std::vector<CompiledKernel> compiled(tiles.size());
      detail::parallel_for(std::int64_t(tiles.size()), 0, [&](std::int64_t i) {
        compiled[std::size_t(i)] = compile(generate(KernelSpec{key, tiles[std::size_t(i)]}));
      });
      for (std::size_t i = 0; i < tiles.size(); ++i) {
        const KernelSpec spec{key, tiles[i]};
        auto kernel = std::make_shared<const LoadedKernel>(compiled[i]);
        LaunchPlan plan(kernel, spec);
        const CheckResult r =
            check_forward(problem, [&](const ForwardArgs& a) { plan.launch_forward(a, nullptr); }, 300);
        INFO(spec.str() << ": " << r.str());
        CHECK(r.pass);
      }
    }
}

}  // namespace

TEST_CASE("every legal tile configuration computes the same function", "[gpu][forward][tiles]") {
  // Odd sizes and a rank that needs the k8 tail (narrow copies: 9 chunks per row of 72), masked.
  check_every_tile("b=1,h=2,nq=300,nk=259,d=72,r=3", {DType::f16, DType::bf16});
}

TEST_CASE("every legal d32 tile computes the same function", "[gpu][forward][tiles]") {
  // Whole-row copies (TileWalk's running pointers in every loop kind), key counts that end
  // inside a tile and on one, fewer query rows than keys, the folded scale (fp16).
  check_every_tile("b=2,h=3,nq=200,nk=333,d=32,r=16", {DType::f16});
  check_every_tile("b=1,h=2,nq=129,nk=256,d=32,r=8", {DType::f16});
}

TEST_CASE("the sm90 plan encodes TMA descriptors once per set of tensors", "[gpu][forward][tma]") {
  activate_primary_context(0);
  const DeviceInfo dev = query_device(0);
  ProblemSpec p = parse_problem("b=2,h=3,nq=300,nk=259,d=64,r=16,mask=causal");
  DeviceProblem first(p, fresh_seed());
  const ProblemKey key = validate_forward(first.forward_args(), dev);
  if (kernel_family(key) != "sm90") {
    WARN("no sm_90a device: the sm90 family does not run here");
    return;
  }
  const KernelSpec spec{key, heuristic_tile(key, ShapeInfo{6, 300, 259}, dev.max_smem_per_block_optin)};
  auto kernel = std::make_shared<const LoadedKernel>(compile(generate(spec)));
  LaunchPlan plan(kernel, spec);
  auto launch = [&](const ForwardArgs& a) { plan.launch_forward(a, nullptr); };
  CHECK(plan.tma_encodes() == 0);
  CheckResult r = check_forward(first, launch, 300);
  INFO(r.str());
  CHECK(r.pass);
  const std::uint64_t after_first = plan.tma_encodes();
  CHECK(after_first == 1);
  launch(first.forward_args());  // same tensors: the descriptors are reused
  CHECK(plan.tma_encodes() == after_first);
  // Other tensors of the same key: new descriptors, and the result follows the new tensors.
  DeviceProblem second(p, fresh_seed());
  r = check_forward(second, launch, 300);
  INFO(r.str());
  CHECK(r.pass);
  CHECK(plan.tma_encodes() == after_first + 1);
  r = check_forward(first, launch, 300);  // back to the first tensors
  INFO(r.str());
  CHECK(r.pass);
  CHECK(plan.tma_encodes() == after_first + 2);
}

TEST_CASE("unaligned strides and factors take the narrow-copy paths correctly", "[gpu][forward][align]") {
  // Views into wider buffers: row strides that are odd multiples of 2 bytes force the 2- and
  // 4-byte alignment classes. Built by hand since DeviceProblem uses dense layouts.
  //  - Q, K, V, O padded too (qkv_pad 1, 2, 4): the portable family's narrow loads.
  //  - Q, K, V, O rows kept 16-byte aligned (qkv_pad 8), only the factors narrow: on Hopper the
  //    sm90 family, whose factor rows of 2-byte alignment go through the producer's registers
  //    and those of 4- and 8-byte alignment through cp.async (rank 2, 4, 6 below).
  activate_primary_context(0);
  Context ctx(ContextOptions{0, Policy::heuristic, true});
  struct Case { std::int64_t d, r, pad, qkv_pad; };
  for (const Case cs : {Case{40, 5, 1, 1}, Case{40, 5, 2, 2}, Case{40, 5, 4, 4}, Case{32, 5, 1, 8}, Case{32, 2, 2, 8},
                        Case{32, 4, 2, 8}, Case{32, 4, 4, 8}, Case{64, 6, 2, 8}, Case{128, 2, 6, 8}}) {
    const std::int64_t B = 1, H = 2, N = 133, D = cs.d, R = cs.r, pad = cs.pad, qpad = cs.qkv_pad;
    ProblemSpec spec = parse_problem(fmt::format("b={},h={},n={},d={},r={}", B, H, N, D, R));
    DeviceProblem dense(spec, fresh_seed());
    // Re-lay the dense inputs into padded rows: [B, N, H, D + qkv_pad] and [B, N, H, R + pad].
    const AttentionInputs& in = dense.inputs();
    auto padded = [&](const HostTensor& t, std::int64_t x) {
      const std::int64_t w = x + (x == D ? qpad : pad);  // padded row width
      std::vector<std::uint16_t> buf(std::size_t(B * N * H * w), 0x7C00u);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = 0; n < N; ++n)
          for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t i = 0; i < x; ++i)
              buf[std::size_t(((b * N + n) * H + h) * w + i)] = t.bits()[std::size_t(t.offset(b, n, h, i))];
      return buf;
    };
    auto upload = [](const std::vector<std::uint16_t>& v) {
      DeviceBuffer d(v.size() * 2);
      d.upload(v.data(), v.size() * 2);
      return d;
    };
    DeviceBuffer q = upload(padded(in.q, D)), k = upload(padded(in.k, D)), v = upload(padded(in.v, D));
    DeviceBuffer qb = upload(padded(in.qb, R)), kb = upload(padded(in.kb, R));
    DeviceBuffer o(std::size_t(B * N * H * (D + qpad)) * 2);
    ForwardArgs a = dense.forward_args();
    const Strides sd{N * H * (D + qpad), H * (D + qpad), D + qpad}, sr{N * H * (R + pad), H * (R + pad), R + pad};
    a.q = q.get(); a.q_stride = sd;
    a.k = k.get(); a.k_stride = sd;
    a.v = v.get(); a.v_stride = sd;
    a.qb = qb.get(); a.qb_stride = sr;
    a.kb = kb.get(); a.kb_stride = sr;
    a.o = o.get(); a.o_stride = sd;
    a.lse = nullptr;
    ctx.forward(a, nullptr);
    std::vector<std::uint16_t> got(std::size_t(B * N * H * (D + qpad)));
    o.download(got.data(), got.size() * 2);
    HostTensor o_dense(spec.dtype, in.q.shape());
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t i = 0; i < D; ++i)
          o_dense.bits()[std::size_t(o_dense.offset(0, n, h, i))] = got[std::size_t((n * H + h) * (D + qpad) + i)];
    const ForwardResult ref = reference_forward(spec, in, all_rows(spec));
    const Comparison c = compare_rows(ref, o_dense);
    INFO("d " << D << " r " << R << " factor pad " << pad << " qkv pad " << qpad << ": " << c.str());
    CHECK(c.ok(2e-3));
  }
}

TEST_CASE("repeated runs on the same inputs are bitwise identical", "[gpu][forward][determinism]") {
  activate_primary_context(0);
  for (bool portable : {false, true})
  for (const char* text : {"b=2,h=3,nq=1000,nk=777,d=64,r=3,mask=causal", "b=1,h=2,n=2048,d=128,r=16,dtype=bf16"}) {
    Context ctx(ContextOptions{0, Policy::heuristic, true, portable});
    DeviceProblem problem(parse_problem(text), fresh_seed());
    HostTensor first, o;
    std::vector<float> first_lse, lse;
    for (int run = 0; run < 20; ++run) {
      problem.poison_outputs();
      ctx.forward(problem.forward_args(), nullptr);
      problem.download(o, lse);
      if (run == 0) {
        first = o;
        first_lse = lse;
        continue;
      }
      INFO(text << (portable ? " (portable)" : "") << " run " << run);
      REQUIRE(std::equal(o.bits().begin(), o.bits().end(), first.bits().begin()));
      REQUIRE(std::memcmp(lse.data(), first_lse.data(), lse.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("small problems for the memory and race checkers", "[gpu][sanitize]") {
  // Few, small launches that still cover every code path: k8 tails (D 72, R 3), 2-byte factor
  // copies, both pipelines, causal with fully masked rows, ragged tiles.
  std::vector<Case> cases;
  for (const char* text : {"b=1,h=2,nq=150,nk=97,d=72,r=3,mask=causal", "b=2,h=1,nq=97,nk=150,d=64,r=16,dtype=bf16",
                           "b=1,h=1,n=130,d=128,r=0,mask=causal", "b=1,h=2,nq=65,nk=200,d=32,r=1,qb=1n1r,kb=bn1r",
                           "b=1,h=1,n=70,d=256,r=128",
                           // Nq - Nk >= block_m: whole CTAs see no key and skip the main loop.
                           "b=1,h=2,nq=400,nk=100,d=64,r=8,mask=causal",
                           // The portable heuristic's look-ahead loop (d32 f16, Nk > 512, Nq > 64):
                           // an odd number of key tiles with a ragged last one, and causal.
                           "b=1,h=1,nq=80,nk=600,d=32,r=16", "b=1,h=1,nq=130,nk=700,d=32,r=2,mask=causal",
                           // The one-stage 128x128 tile of long d32 rows off the look-ahead keys
                           // (bf16): walked key loads inside the one-buffer loop, ragged end.
                           "b=1,h=1,nq=100,nk=600,d=32,r=8,dtype=bf16",
                           // Short d32 rows (the walked two-stage loop) with a rank-2 factor:
                           // 4-byte copies with zero-filled padding columns.
                           "b=1,h=2,nq=100,nk=300,d=32,r=2"})
    cases.push_back({parse_problem(text), text});
  run_cases(cases, 1, 200);
  if (query_device(0).arch.a) run_cases(cases, 1, 200, /*portable=*/true);
}

}  // namespace flashbias
