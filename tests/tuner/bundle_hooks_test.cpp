// The bundle hook layer (issue 7) without a GPU: lookup order cache -> bundle -> policy, cache-only
// with NVRTC forbidden, FLASHBIAS_BUNDLE, and bad bundles refused before any use.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "cache/bundle.h"
#include "cache/store.h"
#include "generator/kernel_source.h"
#include "generator/shape_bucket.h"
#include "generator/variants.h"
#include "runtime/context_impl.h"
#include "tuner/bundle_hooks.h"
#include "tuner/default_hooks.h"
#include "tuner/store_records.h"

namespace fs = std::filesystem;
using namespace flashbias;

namespace {

DeviceInfo device_90a() {
  DeviceInfo d;
  d.name = "Fake H100";
  d.arch = Arch::parse("sm_90a");
  d.sm_count = 132;
  d.max_smem_per_block_optin = 227 * 1024;
  d.driver_version = 13000;
  return d;
}

CompiledKernel fake_compiled(const KernelSource& s) {
  CompiledKernel k;
  k.spec = s.spec;
  k.entry = s.entry;
  k.cubin = {'\x7f', 'E', 'L', 'F', 9, 8, 7, 6, 5};
  k.threads = s.threads;
  k.smem_bytes = s.smem_bytes;
  k.resources.registers = 128;
  k.compile_ms = 1000;
  k.nvrtc_version = "13.0";
  return k;
}

struct Fixture {
  fs::path dir;
  DeviceInfo dev = device_90a();
  ProblemKey key;
  const ShapeInfo shape{8, 1024, 1024};
  KernelSpec spec;
  fs::path bundle;

  Fixture() {
    char templ[] = "/tmp/flashbias-bundle-hooks-XXXXXX";
    dir = ::mkdtemp(templ);
    key = default_variants(dev.arch).front().key;
    spec = KernelSpec{key, heuristic_tile(key, shape, default_smem_limit(dev.arch))};
    cache::Store staging = cache::Store::open_memory();
    staging.put_kernel(tuner::kernel_record(generate(spec), fake_compiled(generate(spec)), 0));
    bundle = dir / "b.fbbundle";
    cache::write_bundle(staging, bundle, cache::bundle_meta({"sm_80", "sm_90a"}, "13.0", templates_hash()));
  }
  ~Fixture() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("bundle hooks: cache-only runs a bundled kernel without compiling and names a missing one",
          "[cpu][bundle]") {
  Fixture fx;
  auto bundles = tuner::open_bundles_for(fx.dev, {fx.bundle}, false, false);
  REQUIRE(bundles.size() == 1);
  // An empty writable cache first, as in a fresh deployment.
  auto store = std::make_shared<cache::Store>(cache::Store::open_memory());
  ContextHooks h = tuner::layer_bundle_hooks(
      tuner::make_store_hooks(store, fx.dev, tuner::StoreHookOptions{Policy::cache_only}), bundles, fx.dev);

  const TileDecision d = decide_tile(h, Policy::cache_only, fx.key, fx.shape, fx.dev);
  CHECK(d.tile == fx.spec.tile);  // no winner anywhere: the heuristic, which the bundle was built for
  int loads = 0;
  auto no_compile = [](const KernelSource& s) -> CompiledKernel {
    FAIL("compile called for " << s.spec.str());
    return {};
  };
  const KernelAcquisition a = acquire_kernel(
      h, Policy::cache_only, generate(fx.spec), [&](const CompiledKernel& k) {
        ++loads;
        CHECK(k.cubin.size() == 9);
      },
      no_compile);
  CHECK(a.origin == KernelOrigin::store);
  CHECK(loads == 1);

  // Another head dim: in no bundle -> not_found naming the spec, never a compile.
  ProblemKey other = fx.key;
  other.head_dim = fx.key.head_dim == 64 ? 128 : 64;
  const KernelSpec missing{other, heuristic_tile(other, fx.shape, default_smem_limit(fx.dev.arch))};
  try {
    acquire_kernel(h, Policy::cache_only, generate(missing), [](const CompiledKernel&) {}, no_compile);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::not_found);
    CHECK_THAT(e.what(), Catch::Matchers::Contains(missing.str()));
  }

  // The cache comes first: a kernel stored there wins over the bundle's.
  CompiledKernel mine = fake_compiled(generate(fx.spec));
  mine.cubin.push_back(42);
  store->put_kernel(tuner::kernel_record(generate(fx.spec), mine, 0));
  acquire_kernel(h, Policy::cache_only, generate(fx.spec), [&](const CompiledKernel& k) { CHECK(k.cubin.size() == 10); },
                 no_compile);
}

TEST_CASE("bundle hooks: a tuned winner in a bundle is used for its device only", "[cpu][bundle]") {
  Fixture fx;
  cache::Store staging = cache::Store::open_memory();
  const TileConfig tuned = enumerate_tiles(fx.key, fx.dev.max_smem_per_block_optin).back();
  REQUIRE_FALSE(tuned == fx.spec.tile);
  cache::TuningRun run;
  run.device = tuner::fingerprint(fx.dev);
  run.problem_key = fx.key.str();
  run.arch = "sm_90a";
  run.bucket = shape_bucket(fx.shape).str();
  run.strategy = "exhaustive";
  run.templates_hash = templates_hash();
  run.nvrtc_version = 13000;
  cache::TuningCandidate c;
  c.tile = tuned.str();
  c.median_ms = 0.1;
  c.repeats = 3;
  run.candidates = {c};
  run.winner_tile = tuned.str();
  staging.put_tuning_run(run);
  const fs::path p = fx.dir / "tuned.fbbundle";
  cache::write_bundle(staging, p, cache::bundle_meta({"sm_90a"}, "13.0", templates_hash()));
  auto bundles = tuner::open_bundles_for(fx.dev, {p}, false, false);
  ContextHooks h = tuner::layer_bundle_hooks({}, bundles, fx.dev);
  CHECK(decide_tile(h, Policy::cache_only, fx.key, fx.shape, fx.dev).tile == tuned);
  DeviceInfo other = fx.dev;
  other.sm_count = 114;  // another H100 model: another fingerprint
  ContextHooks h_other = tuner::layer_bundle_hooks({}, bundles, other);  // hooks are per device
  CHECK(decide_tile(h_other, Policy::cache_only, fx.key, fx.shape, other).tile == fx.spec.tile);
}

TEST_CASE("bundle hooks: FLASHBIAS_BUNDLE, wrong arch and damaged bundles", "[cpu][bundle]") {
  Fixture fx;
  ::setenv("FLASHBIAS_BUNDLE", (":" + fx.bundle.string() + "::").c_str(), 1);
  CHECK(tuner::bundle_paths_from_env() == std::vector<fs::path>{fx.bundle});
  CHECK(tuner::open_bundles_for(fx.dev, {}, true, false).size() == 1);
  ::unsetenv("FLASHBIAS_BUNDLE");

  DeviceInfo ampere = fx.dev;
  ampere.arch = Arch::parse("sm_86");
  const std::string wrong = error_of([&] { tuner::open_bundles_for(ampere, {fx.bundle}, false, false); });
  CHECK_THAT(wrong, Catch::Matchers::Contains("sm_86"));
  CHECK_THAT(wrong, Catch::Matchers::Contains(fx.bundle.string()));

  // Damage a copy (a new path: opened bundles are shared per path and arch).
  const fs::path bad = fx.dir / "bad.fbbundle";
  fs::copy_file(fx.bundle, bad);
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), {});
    const std::size_t elf = bytes.find(std::string("\x7f" "ELF\x09\x08", 6));
    REQUIRE(elf != std::string::npos);
    f.seekp(std::streamoff(elf + 5));
    f.put('\x00');
  }
  const std::string damaged = error_of([&] { tuner::open_bundles_for(fx.dev, {bad}, false, false); });
  CHECK_THAT(damaged, Catch::Matchers::Contains("not loaded"));
  CHECK_THAT(damaged, Catch::Matchers::Contains(bad.string()));
  CHECK_THAT(error_of([&] { tuner::open_bundles_for(fx.dev, {fx.dir / "none.fbbundle"}, false, false); }),
             Catch::Matchers::Contains("no such file"));
}
