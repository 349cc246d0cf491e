// `flashbias cache stats|list|verify|clear|prune` on a temporary store (FLASHBIAS_CACHE_DIR),
// through the real binary: JSON output parsed back, exit codes, errors naming the flag.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "cache/store.h"
#include "cache_test_util.h"
#include "tuner/cli_util.h"

using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

void populate(const std::filesystem::path& db) {
  cache::Store s = cache::Store::open(db);
  cache::KernelRecord k;
  k.key = std::string(64, 'a');
  k.spec = "sm_80/f16/d64/r8/none/fwd/b0/a16.16/bm128_bn64_w4_s1";
  k.arch = "sm_80";
  k.nvrtc_version = cache::cuda_version(13, 0);
  k.templates_hash = std::string(64, 'b');
  k.entry = "flashbias_fwd";
  k.threads = 128;
  k.smem_bytes = 49152;
  k.registers = 168;
  k.spill_store_bytes = 0;
  k.spill_load_bytes = 0;
  k.compile_ms = 2100;
  k.cubin = {0x7f, 'E', 'L', 'F', 2, 1, 1, 0};
  s.put_kernel(k);
  cache::TuningRun run;
  run.device = cache::DeviceFingerprint{"NVIDIA H100 80GB HBM3", 132, 9, 0, cache::cuda_version(13, 0)};
  run.problem_key = "sm_90a/f16/d64/r8/none/fwd/b0/a16.16";
  run.arch = "sm_90a";
  run.bucket = "bh32.nq1024.nk1024";
  run.strategy = "halving";
  run.templates_hash = std::string(64, 'b');
  run.nvrtc_version = cache::cuda_version(13, 0);
  cache::TuningCandidate win{"bm128_bn64_w4_s2", cache::Outcome::passed, "", 0.41, 0.40, 0.44, 27, 2000.0, 1e-4};
  cache::TuningCandidate wrong{"bm64_bn64_w2_s1", cache::Outcome::incorrect, "O: rel_l2 0.3", {}, {}, {}, 0, 1900.0, 0.3};
  run.candidates = {win, wrong};
  run.winner_tile = "bm128_bn64_w4_s2";
  run.tuning_seconds = 41;
  s.put_tuning_run(run);
}

}  // namespace

TEST_CASE("flashbias cache on a temporary store", "[cpu][cache][cli]") {
  using test::run_cli;
  cache::test::TempDir dir;
  populate(dir / "flashbias.db");
  const std::string env = "FLASHBIAS_CACHE_DIR='" + dir.path().string() + "'";

  auto r = run_cli(env, "cache --json stats", true);
  REQUIRE(r.status == 0);
  nlohmann::json j = nlohmann::json::parse(r.output);
  CHECK(j["kernel_count"] == 1);
  CHECK(j["tuning_runs"] == 1);
  CHECK(j["winners"] == 1);

  r = run_cli(env, "cache stats");
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Contains("kernels    1") && Contains("NVIDIA H100 80GB HBM3"));

  r = run_cli(env, "cache --json list", true);
  REQUIRE(r.status == 0);
  j = nlohmann::json::parse(r.output);
  CHECK(j["kernels"].size() == 1);
  REQUIRE(j["winners"].size() == 1);
  CHECK(j["winners"][0]["bucket"] == "bh32.nq1024.nk1024");
  r = run_cli(env, "cache list --winners");
  CHECK_THAT(r.output, Contains("bm128_bn64_w4_s2") && Contains("1 of 2 passed"));

  r = run_cli(env, "cache verify");
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Contains("1 kernels checked, 0 bad") && Contains("OK"));

  using test::check_refused;
  check_refused(env, "cache prune", {"prune needs a rule"});
  check_refused(env, "cache prune --max-size lots", {"--max-size 'lots' is not a size"});
  // NaN passed the range test once and became an undefined cast; a mistyped arch cleared nothing
  // and said so quietly. Both are refused, and the store is untouched.
  check_refused(env, "cache prune --older-than nan", {"--older-than nan must be in [0, 36500] days"});
  check_refused(env, "cache clear --arch sm_9oa", {"arch 'sm_9oa' is not of the form"});
  r = run_cli(env, "cache --json prune --max-size 0 --dry-run", true);
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(r.output)["kernels"] == 1);

  r = run_cli(env, "cache --json clear --arch SM80", true);  // spelled as Arch::parse takes it
  REQUIRE(r.status == 0);
  CHECK(nlohmann::json::parse(r.output)["kernels"] == 1);
  r = run_cli(env, "cache --json stats", true);
  j = nlohmann::json::parse(r.output);
  CHECK(j["kernel_count"] == 0);
  CHECK(j["tuning_runs"] == 1);
  r = run_cli(env, "cache clear");
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Contains("1 tuning runs"));

  // A directory others may write to is refused, not silently replaced by memory.
  cache::test::TempDir open_dir;
  std::filesystem::permissions(open_dir.path(), std::filesystem::perms::all);
  r = run_cli("FLASHBIAS_CACHE_DIR='" + open_dir.path().string() + "'", "cache stats");
  CHECK(r.status == 2);
}
