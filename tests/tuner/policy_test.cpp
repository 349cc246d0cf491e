// Runtime policies without a GPU: the tile decision and the kernel acquisition of a dispatch miss
// driven by fake hooks, then the real store hooks over an in-memory store (winner lookup by
// device and bucket, kernels round-tripped, cache-only never compiling), and shape buckets.
#include <catch2/catch.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cache/store.h"
#include "generator/kernel_source.h"
#include "generator/shape_bucket.h"
#include "generator/variants.h"
#include "runtime/context_impl.h"
#include "tuner/default_hooks.h"
#include "tuner/gpu_source.h"
#include "tuner/store_records.h"
#include "tuner/tune.h"

using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

DeviceInfo fake_device() {
  DeviceInfo d;
  d.name = "Fake GPU 80GB";
  d.arch = Arch{80, false};
  d.sm_count = 108;
  d.max_smem_per_block_optin = 163 * 1024;
  d.driver_version = 12040;
  return d;
}

ProblemKey sample_key() {
  ProblemKey k = default_variants(Arch{80, false}).front().key;
  return k;
}

const ShapeInfo kShape{32, 1000, 1000};

CompiledKernel fake_compiled(const KernelSource& s) {
  CompiledKernel k;
  k.spec = s.spec;
  k.entry = s.entry;
  k.cubin = {'\x7f', 'E', 'L', 'F', 1, 2, 3, 4};
  k.threads = s.threads;
  k.smem_bytes = s.smem_bytes;
  k.resources.registers = 128;
  k.resources.spill_store_bytes = 0;
  k.resources.spill_load_bytes = 0;
  k.resources.stack_frame_bytes = 0;
  k.resources.static_smem_bytes = 0;
  k.compile_ms = 1234.5;
  k.nvrtc_version = "13.0";
  return k;
}

// A tile different from the heuristic's, to tell the sources apart.
TileConfig other_tile(const ProblemKey& key, const DeviceInfo& dev) {
  const TileConfig h = heuristic_tile(key, kShape, dev.max_smem_per_block_optin);
  for (const TileConfig& t : enumerate_tiles(key, dev.max_smem_per_block_optin))
    if (!(t == h)) return t;
  FAIL("the variant table has a single tile");
  return h;
}

cache::TuningRun winner_run(const DeviceInfo& dev, const ProblemKey& key, const std::string& bucket,
                            const std::string& tile) {
  cache::TuningRun run;
  run.device = tuner::fingerprint(dev);
  run.problem_key = key.str();
  run.arch = key.arch.name();
  run.bucket = bucket;
  run.strategy = "exhaustive";
  run.templates_hash = templates_hash();
  run.nvrtc_version = cache::cuda_version(13, 0);
  cache::TuningCandidate c;
  c.tile = tile;
  c.median_ms = 0.5;
  c.min_ms = 0.49;
  c.max_ms = 0.52;
  c.repeats = 20;
  run.candidates.push_back(c);
  run.winner_tile = tile;
  return run;
}

}  // namespace

TEST_CASE("tile decision: stored winner, tune now, heuristic", "[cpu][policy]") {
  const DeviceInfo dev = fake_device();
  const ProblemKey key = sample_key();
  const TileConfig heuristic = heuristic_tile(key, kShape, dev.max_smem_per_block_optin);
  const TileConfig stored = other_tile(key, dev);
  int tune_calls = 0;

  ContextHooks hooks;
  hooks.tune = [&](const ProblemKey&, const ShapeInfo&, const DeviceInfo&) -> std::optional<TileConfig> {
    ++tune_calls;
    return stored;
  };
  SECTION("a stored winner serves every policy and never tunes") {
    hooks.find_tile = [&](const ProblemKey&, const ShapeInfo&, const DeviceInfo&) { return std::optional(stored); };
    for (Policy p : {Policy::heuristic, Policy::tune, Policy::cache_only}) {
      const TileDecision d = decide_tile(hooks, p, key, kShape, dev);
      CHECK(d.tile == stored);
      CHECK(d.source == TileSource::stored);
    }
    CHECK(tune_calls == 0);
  }
  SECTION("a miss under heuristic or cache-only uses the heuristic, never the tuner") {
    hooks.find_tile = [](const ProblemKey&, const ShapeInfo&, const DeviceInfo&) { return std::optional<TileConfig>(); };
    for (Policy p : {Policy::heuristic, Policy::cache_only}) {
      const TileDecision d = decide_tile(hooks, p, key, kShape, dev);
      CHECK(d.tile == heuristic);
      CHECK(d.source == TileSource::heuristic);
    }
    CHECK(tune_calls == 0);
  }
  SECTION("a miss under tune tunes now") {
    const TileDecision d = decide_tile(hooks, Policy::tune, key, kShape, dev);
    CHECK(d.tile == stored);
    CHECK(d.source == TileSource::tuned);
    CHECK(tune_calls == 1);
  }
  SECTION("a tuning run without a winner falls back to the heuristic") {
    hooks.tune = [](const ProblemKey&, const ShapeInfo&, const DeviceInfo&) { return std::optional<TileConfig>(); };
    const TileDecision d = decide_tile(hooks, Policy::tune, key, kShape, dev);
    CHECK(d.tile == heuristic);
    CHECK(d.source == TileSource::heuristic);
  }
  SECTION("no hooks at all: heuristic under every policy") {
    for (Policy p : {Policy::heuristic, Policy::tune, Policy::cache_only})
      CHECK(decide_tile(ContextHooks{}, p, key, kShape, dev).tile == heuristic);
  }
  SECTION("a hook's foreign exception becomes Error(internal) naming the hook") {
    hooks.find_tile = [](const ProblemKey&, const ShapeInfo&, const DeviceInfo&) -> std::optional<TileConfig> {
      throw std::runtime_error("disk on fire");
    };
    try {
      decide_tile(hooks, Policy::heuristic, key, kShape, dev);
      FAIL("no exception");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::internal);
      CHECK_THAT(e.what(), Contains("find_tile") && Contains("disk on fire"));
    }
  }
}

TEST_CASE("kernel acquisition: store, reject, compile, cache-only", "[cpu][policy]") {
  const ProblemKey key = sample_key();
  const KernelSource source = generate(KernelSpec{key, heuristic_tile(key, kShape, 163 * 1024)});
  int compiles = 0, loads = 0, stores = 0, rejects = 0;
  std::vector<std::string> loaded;
  auto compile_fn = [&](const KernelSource& s) {
    ++compiles;
    CompiledKernel k = fake_compiled(s);
    k.entry = "compiled";
    return k;
  };
  auto load = [&](const CompiledKernel& k) {
    ++loads;
    loaded.push_back(k.entry);
  };
  ContextHooks hooks;
  hooks.store_kernel = [&](const KernelSource&, const CompiledKernel&) { ++stores; };
  hooks.reject_kernel = [&](const KernelSource&, const Error&) { ++rejects; };

  SECTION("a stored kernel is loaded; nothing compiles") {
    hooks.find_kernel = [&](const KernelSource& s) {
      CompiledKernel k = fake_compiled(s);
      k.entry = "stored";
      return std::optional(k);
    };
    for (Policy p : {Policy::heuristic, Policy::cache_only}) {
      const KernelAcquisition a = acquire_kernel(hooks, p, source, load, compile_fn);
      CHECK(a.origin == KernelOrigin::store);
    }
    CHECK(compiles == 0);
    CHECK(loaded == std::vector<std::string>{"stored", "stored"});
  }
  SECTION("a stored kernel the driver refuses is rejected, then compiled and stored again") {
    hooks.find_kernel = [&](const KernelSource& s) { return std::optional(fake_compiled(s)); };
    auto picky_load = [&](const CompiledKernel& k) {
      if (k.entry != "compiled") throw Error(ErrorCode::driver_error, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION");
      load(k);
    };
    const KernelAcquisition a = acquire_kernel(hooks, Policy::heuristic, source, picky_load, compile_fn);
    CHECK(a.origin == KernelOrigin::compiled);
    CHECK(a.compile_ms == 1234.5);
    CHECK(rejects == 1);
    CHECK(compiles == 1);
    CHECK(stores == 1);
    CHECK(loaded == std::vector<std::string>{"compiled"});
  }
  SECTION("a miss compiles and stores, unless cache-only, which names the spec and never compiles") {
    hooks.find_kernel = [](const KernelSource&) { return std::optional<CompiledKernel>(); };
    CHECK(acquire_kernel(hooks, Policy::heuristic, source, load, compile_fn).origin == KernelOrigin::compiled);
    CHECK(stores == 1);
    try {
      acquire_kernel(hooks, Policy::cache_only, source, load, compile_fn);
      FAIL("no exception");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::not_found);
      CHECK_THAT(e.what(), Contains(source.spec.str()) && Contains("cache-only"));
    }
    CHECK(compiles == 1);
  }
  SECTION("a failing store costs nothing but a warning") {
    hooks.store_kernel = [](const KernelSource&, const CompiledKernel&) {
      throw Error(ErrorCode::cache_error, "disk full");
    };
    CHECK(acquire_kernel(hooks, Policy::tune, source, load, compile_fn).origin == KernelOrigin::compiled);
    CHECK(loads == 1);
  }
  SECTION("a load error other than the driver's is not swallowed") {
    hooks.find_kernel = [&](const KernelSource& s) { return std::optional(fake_compiled(s)); };
    auto bad_load = [](const CompiledKernel&) { throw Error(ErrorCode::invalid_argument, "bad"); };
    CHECK_THROWS_WITH(acquire_kernel(hooks, Policy::heuristic, source, bad_load, compile_fn), Contains("bad"));
    CHECK(rejects == 0);
  }
}

TEST_CASE("store hooks: winners by device and bucket, kernels round-trip", "[cpu][policy]") {
  const DeviceInfo dev = fake_device();
  const ProblemKey key = sample_key();
  const TileConfig tuned = other_tile(key, dev);
  auto store = std::make_shared<cache::Store>(cache::Store::open_memory());
  const std::string bucket = shape_bucket(kShape).str();
  store->put_tuning_run(winner_run(dev, key, bucket, tuned.str()));

  const ContextHooks h = tuner::make_store_hooks(store, dev, tuner::StoreHookOptions{});
  REQUIRE(h.find_tile);
  CHECK_FALSE(h.tune);  // only the tune policy tunes
  // Same bucket: 513..1024 rows, 17..32 batch*heads.
  CHECK(h.find_tile(key, ShapeInfo{17, 513, 1024}, dev) == std::optional(tuned));
  CHECK(h.find_tile(key, kShape, dev) == std::optional(tuned));
  // Another bucket, another device, another key: misses.
  CHECK_FALSE(h.find_tile(key, ShapeInfo{32, 1025, 1000}, dev));
  DeviceInfo other = dev;
  other.sm_count = 132;
  CHECK_FALSE(tuner::make_store_hooks(store, other, {}).find_tile(key, kShape, other));
  ProblemKey causal = key;
  causal.mask = key.mask == MaskKind::causal ? MaskKind::none : MaskKind::causal;
  CHECK_FALSE(h.find_tile(causal, kShape, dev));

  // A winner written by a build with other knobs is ignored, not an error.
  store->put_tuning_run(winner_run(dev, key, "bh1.nq64.nk64", "bm=128,bn=64,w=4,s=1,bogus=3"));
  CHECK_FALSE(h.find_tile(key, ShapeInfo{1, 10, 10}, dev));

  // Kernels: stored after a compile, found again by spec without NVRTC.
  const KernelSource source = generate(KernelSpec{key, tuned});
  CHECK_FALSE(h.find_kernel(source));
  const CompiledKernel compiled = fake_compiled(source);
  h.store_kernel(source, compiled);
  const auto back = h.find_kernel(source);
  REQUIRE(back);
  CHECK(back->cubin == compiled.cubin);
  CHECK(back->entry == compiled.entry);
  CHECK(back->threads == compiled.threads);
  CHECK(back->smem_bytes == compiled.smem_bytes);
  CHECK(back->nvrtc_version == "13.0");
  CHECK(store->list_kernels().front().key == cache::kernel_key(source, cache::cuda_version(13, 0)));
  // A rejected kernel is erased.
  h.reject_kernel(source, Error(ErrorCode::driver_error, "refused"));
  CHECK_FALSE(h.find_kernel(source));

  // Cache-only never stores (nothing compiles) and never tunes; tune gets a tuner.
  tuner::StoreHookOptions cache_only;
  cache_only.policy = Policy::cache_only;
  const ContextHooks c = tuner::make_store_hooks(store, dev, cache_only);
  CHECK_FALSE(c.store_kernel);
  CHECK_FALSE(c.tune);
  tuner::StoreHookOptions tune;
  tune.policy = Policy::tune;
  CHECK(tuner::make_store_hooks(store, dev, tune).tune);
}

TEST_CASE("policy names and environment values", "[cpu][policy]") {
  CHECK(parse_policy("heuristic", "x") == Policy::heuristic);
  CHECK(parse_policy("tune", "x") == Policy::tune);
  CHECK(parse_policy("cache-only", "x") == Policy::cache_only);
  CHECK(parse_policy("cache_only", "x") == Policy::cache_only);
  CHECK_THROWS_WITH(parse_policy("fast", "FLASHBIAS_POLICY"),
                    Contains("FLASHBIAS_POLICY = 'fast' is not a policy") && Contains("cache-only"));
  for (Policy p : {Policy::heuristic, Policy::tune, Policy::cache_only}) CHECK(parse_policy(to_string(p), "x") == p);

  ::setenv("FLASHBIAS_TUNE_BUDGET", "12.5", 1);
  CHECK(tuner::hook_options_from_env(Policy::tune).tune_budget_seconds == 12.5);
  ::setenv("FLASHBIAS_TUNE_BUDGET", "-1", 1);
  CHECK_THROWS_WITH(tuner::hook_options_from_env(Policy::tune), Contains("FLASHBIAS_TUNE_BUDGET = '-1'"));
  ::unsetenv("FLASHBIAS_TUNE_BUDGET");

  ::setenv("FLASHBIAS_CACHE", "off", 1);
  CHECK(tuner::default_store() == nullptr);
  ::setenv("FLASHBIAS_CACHE", "maybe", 1);
  CHECK_THROWS_WITH(tuner::default_store(), Contains("FLASHBIAS_CACHE = 'maybe'"));
  ::unsetenv("FLASHBIAS_CACHE");
}

TEST_CASE("shape buckets: powers of two, 64-row floor, stable text", "[cpu][policy]") {
  CHECK(shape_bucket(ShapeInfo{1, 1, 1}).str() == "bh1.nq64.nk64");
  CHECK(shape_bucket(ShapeInfo{1, 64, 64}).str() == "bh1.nq64.nk64");
  CHECK(shape_bucket(ShapeInfo{1, 65, 64}).str() == "bh1.nq128.nk64");
  CHECK(shape_bucket(ShapeInfo{17, 1000, 1024}).str() == "bh32.nq1024.nk1024");
  CHECK(shape_bucket(ShapeInfo{32, 1025, 4096}).str() == "bh32.nq2048.nk4096");
  CHECK(shape_bucket(ShapeInfo{0, -5, 0}) == shape_bucket(ShapeInfo{1, 1, 1}));
  for (const ShapeInfo& s : {ShapeInfo{3, 239, 113}, ShapeInfo{4096, 1 << 20, 17}, ShapeInfo{1, 1, 1}}) {
    const ShapeBucket b = shape_bucket(s);
    CHECK(ShapeBucket::parse(b.str()) == b);
    // The bucket's upper shape lies in the bucket itself.
    CHECK(shape_bucket(b.upper()) == b);
  }
  CHECK_THROWS_WITH(ShapeBucket::parse("bh3.nq64.nk64"), Contains("bh3 is not a power of two"));
  CHECK_THROWS_WITH(ShapeBucket::parse("bh4.nq32.nk64"), Contains("below the smallest bucket"));
  CHECK_THROWS_WITH(ShapeBucket::parse("bh4.nq64"), Contains("missing '.nk'"));
  CHECK_THROWS_WITH(ShapeBucket::parse("bh4.nq64.nk64x"), Contains("trailing 'x'"));
}

TEST_CASE("tuning records keep every prepared candidate; the problem of a key", "[cpu][policy]") {
  tuner::StrategyResult r;
  r.candidates.resize(4);
  r.candidates[0].verdict = tuner::Verdict{cache::Outcome::passed, "", 900.0, 1e-4};
  r.candidates[0].timing = tuner::Timing{0.5, 0.45, 0.6, 27};
  r.candidates[1].verdict = tuner::Verdict{cache::Outcome::incorrect, "O: rel_l2 0.3", 800.0, 0.3};
  r.candidates[2].verdict = tuner::Verdict{cache::Outcome::not_supported, "spills", 700.0, std::nullopt};
  r.winner = 0;
  tuner::OutcomeCounts counts;
  const cache::TuningRun run = tuner::make_run_record(r, {"a", "b", "c", "d"}, &counts);
  REQUIRE(run.candidates.size() == 3);
  CHECK(run.winner_tile == std::optional<std::string>("a"));
  CHECK(run.candidates[0].median_ms == std::optional(0.5));
  CHECK(run.candidates[0].repeats == 27);
  CHECK(run.candidates[1].reason == "O: rel_l2 0.3");
  CHECK_FALSE(run.candidates[1].median_ms);
  CHECK(counts.passed == 1);
  CHECK(counts.incorrect == 1);
  CHECK(counts.not_supported == 1);
  CHECK(counts.skipped == 1);

  ProblemKey key = sample_key();
  key.broadcast = kQbBatch | kKbHead;
  const ProblemSpec p = tuner::problem_for(key, ShapeInfo{24, 300, 777});
  CHECK(p.heads == 24);
  CHECK(p.seqlen_q == 300);
  CHECK(p.seqlen_k == 777);
  CHECK(p.head_dim == key.head_dim);
  CHECK(p.rank == key.rank);
  CHECK(p.broadcast_bits() == key.broadcast);
}

TEST_CASE("static pruning: spilling candidates out, the heuristic's own tile kept", "[cpu][policy]") {
  // tune() compares its winner with the heuristic's tile side by side and stores the faster, so a
  // tuned key is never slower than an untuned one. Some heuristic tiles park a few bytes on the
  // stack (the backward's at 250-255 registers); were they pruned like any spilling candidate,
  // that comparison would have nothing to time.
  KernelResources clean;
  clean.registers = 255;
  clean.spill_store_bytes = 0;
  clean.spill_load_bytes = 0;
  KernelResources parked = clean;
  parked.spill_store_bytes = 8;
  parked.spill_load_bytes = 8;
  KernelResources load_only = clean;
  load_only.spill_load_bytes = 4;
  CHECK_FALSE(tuner::spill_pruned(clean, false));
  CHECK_FALSE(tuner::spill_pruned(clean, true));
  CHECK(tuner::spill_pruned(parked, false));
  CHECK(tuner::spill_pruned(load_only, false));
  CHECK_FALSE(tuner::spill_pruned(parked, true));
}
