// Persistent tuning end to end on a GPU: one process tunes a small key into a fresh store, and a
// second process serves the same shape class from it with no compile: the stored winner's tile
// and the stored cubin (Context stats from the first-call probe, and the info log's cache hit).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "cache/cache_test_util.h"
#include "cache/store.h"
#include "tuner/cli_util.h"

using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

/// `flashbias tune <flags> --json --strategy halving --budget 40 -p <problem>` into the store
/// `env` names; its one report, checked to carry a stored winner that passed.
nlohmann::json tune_one(const std::string& env, const std::string& flags, const std::string& problem) {
  auto tuned = test::run_cli(env, "tune " + flags + " --json --strategy halving --budget 40 -p " + problem, true);
  INFO(tuned.output);
  REQUIRE(tuned.status == 0);
  nlohmann::json report = nlohmann::json::parse(tuned.output).at(0);
  REQUIRE(report["winner"].is_string());
  CHECK(report["stored"] == true);
  CHECK(report["counts"]["passed"].get<int>() >= 1);
  return report;
}

}  // namespace

TEST_CASE("a tuned winner is used by the next process without compiling", "[gpu][tuner]") {
  using test::run_cli;
  cache::test::TempDir dir;
  const std::string env = "FLASHBIAS_CACHE_DIR='" + dir.path().string() + "'";
  const std::string problem = "b=1,h=2,n=256,d=64,r=8";

  const nlohmann::json report = tune_one(env, "", problem);
  // Every prepared candidate is in the stored run, not just the winner.
  CHECK(report["run"]["candidates"].size() >= std::size_t(report["counts"]["passed"].get<int>()));

  // Another shape of the same bucket (nq, nk in 129..256, batch*heads 2).
  auto probe = run_cli(env + " FLASHBIAS_LOG=info", "bench-runtime --probe b=1,h=2,n=200,d=64,r=8");
  INFO(probe.output);
  REQUIRE(probe.status == 0);
  CHECK_THAT(probe.output, Contains("tuning hit") && Contains("kernel store hit"));
  const std::string json_line = probe.output.substr(probe.output.rfind('{'));
  const nlohmann::json j = nlohmann::json::parse(json_line);
  CHECK(j["compiles"] == 0);
  CHECK(j["store_hits"] == 1);
  CHECK(j["tiles_stored"] == 1);
  CHECK_THAT(probe.output, Contains(report["winner"].get<std::string>()));

  // Policy cache-only serves it too, and a key with nothing stored is an error naming the key.
  auto cache_only = run_cli(env + " FLASHBIAS_POLICY=cache-only", "bench-runtime --probe b=1,h=2,n=256,d=64,r=8", true);
  CHECK(cache_only.status == 0);
  auto miss = run_cli(env + " FLASHBIAS_POLICY=cache-only", "bench-runtime --probe b=1,h=2,n=256,d=128,r=8");
  CHECK(miss.status != 0);
  CHECK_THAT(miss.output, Contains("cache-only") && Contains("d128"));
}

TEST_CASE("tune --portable tunes the portable family, and check --portable uses its winner", "[gpu][tuner][portable]") {
  using test::run_cli;
  cache::test::TempDir dir;
  const std::string env = "FLASHBIAS_CACHE_DIR='" + dir.path().string() + "'";
  const std::string problem = "b=1,h=2,n=256,d=32,r=8";

  const nlohmann::json report = tune_one(env, "--portable", problem);
  // A portable key names the plain arch (sm_90, never sm_90a): the sm80 family's tiles.
  const std::string key = report["key"].get<std::string>();
  CHECK(key.find("a_fwd_") == std::string::npos);

  // The log (stderr) names the tuning hit; the check's line (stdout) its verdict.
  auto checked = run_cli(env + " FLASHBIAS_LOG=info", "check --portable -p " + problem);
  INFO(checked.output);
  CHECK(checked.status == 0);
  CHECK_THAT(checked.output, Contains("tuning hit " + key) && Contains(report["winner"].get<std::string>()) &&
                                 Contains("PASS"));
}

TEST_CASE("the backward is tuned by the same tuner and its winner serves the next process", "[gpu][tuner][backward]") {
  using test::run_cli;
  cache::test::TempDir dir;
  const std::string env = "FLASHBIAS_CACHE_DIR='" + dir.path().string() + "'";
  const std::string problem = "b=1,h=4,n=512,d=64,r=8,mask=causal,qb=1n1r";

  const nlohmann::json report = tune_one(env, "--backward", problem);
  CHECK_THAT(report["key"].get<std::string>(), Contains("_bwd_"));
  CHECK(report["counts"]["incorrect"].get<int>() == 0);

  // The next process checks the backward with the stored winner (decide_tile logs its source).
  auto check = run_cli(env + " FLASHBIAS_LOG=info", "check --backward -p " + problem);
  INFO(check.output);
  CHECK(check.status == 0);
  CHECK_THAT(check.output, Contains("tile " + report["winner"].get<std::string>()) && Contains("stored winner"));
}
