// `flashbias tune` option handling, without a GPU: the request is resolved and checked before any
// device is touched, so every mistake fails fast with the flag named.
#include <catch2/catch.hpp>

#include <fstream>

#include "cache/cache_test_util.h"
#include "flashbias/flashbias.hpp"
#include "tuner/cli_util.h"
#include "tuner/tune_request.h"

using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

void check_refused(const std::string& args, std::initializer_list<const char*> what) {
  test::check_refused("", args, what);
}

}  // namespace

TEST_CASE("tune request: problems, presets, files, strategy options, budget", "[cpu][tuner][cli]") {
  tuner::TuneArgs a;
  a.problems = {"b=2,h=4,n=1000,d=64,r=8", "n=4096,d=128,r=16,mask=causal"};
  tuner::TuneRequest r = tuner::resolve_tune_args(a);
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[1].spec.mask == MaskKind::causal);
  CHECK(r.strategy == "halving");
  CHECK(r.budget_seconds == tuner::kDefaultBudgetSeconds);
  CHECK(r.strategy_options.at("budget") == "60");

  a.strategy = "exhaustive";
  a.budget = 0.0;
  a.strategy_options = {"repeats=7"};
  r = tuner::resolve_tune_args(a);
  CHECK(r.budget_seconds == 0);
  CHECK(r.strategy_options.at("repeats") == "7");

  tuner::TuneArgs p;
  p.preset = "bench";
  CHECK(tuner::resolve_tune_args(p).problems.size() == bench_presets().size());
  p.preset = bench_presets().front().name;
  CHECK(tuner::resolve_tune_args(p).problems.size() == 1);

  cache::test::TempDir dir;
  {
    std::ofstream f(dir / "problems.txt");
    f << "# cases to tune\n\nb=1,h=8,n=512,d=64,r=4   # short\n  n=2048,d=32,r=2,mask=causal\n";
  }
  tuner::TuneArgs fa;
  fa.file = (dir / "problems.txt").string();
  r = tuner::resolve_tune_args(fa);
  REQUIRE(r.problems.size() == 2);
  CHECK(r.problems[0].name == "problems.txt:3");
  CHECK(r.problems[1].spec.head_dim == 32);
  {
    std::ofstream f(dir / "bad.txt");
    f << "n=128,d=64\nn=128,d=65\n";
  }
  fa.file = (dir / "bad.txt").string();
  CHECK_THROWS_WITH(tuner::resolve_tune_args(fa), Contains("bad.txt line 2") && Contains("d"));
}

TEST_CASE("tune request errors name the flag", "[cpu][tuner][cli]") {
  auto err = [](tuner::TuneArgs a) {
    try {
      tuner::resolve_tune_args(a);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  tuner::TuneArgs a;
  CHECK_THAT(err(a), Contains("say what to tune"));
  a.problems = {"n=128,d=64"};
  a.preset = "bench";
  CHECK_THAT(err(a), Contains("alternatives"));
  a.preset.clear();
  a.strategy = "random";
  CHECK_THAT(err(a), Contains("unknown tuning strategy 'random'"));
  a.strategy = "halving";
  a.strategy_options = {"eta=1"};
  CHECK_THAT(err(a), Contains("'eta' = 1 is outside"));
  a.strategy_options = {"repeats=3"};
  CHECK_THAT(err(a), Contains("has no option 'repeats'"));
  a.strategy_options = {"budget=5"};
  a.budget = 10.0;
  CHECK_THAT(err(a), Contains("budget is given twice"));
  a.strategy_options.clear();
  a.budget = -1.0;
  CHECK_THAT(err(a), Contains("--budget -1 is outside [0, 86400]"));
  a.budget.reset();
  a.problems = {"n=128,d=64", "n=128,d=7"};
  CHECK_THAT(err(a), Contains("--problem #2 'n=128,d=7'"));
  tuner::TuneArgs p;
  p.preset = "nope";
  CHECK_THAT(err(p), Contains("--preset 'nope' is unknown") && Contains("bench, demo"));
  tuner::TuneArgs f;
  f.file = "/nonexistent/problems.txt";
  CHECK_THAT(err(f), Contains("cannot be opened"));
}

TEST_CASE("flashbias tune rejects bad options before touching a GPU", "[cpu][tuner][cli]") {
  check_refused("tune --strategy bogus -p n=128,d=64", {"unknown tuning strategy 'bogus'"});
  check_refused("tune", {"say what to tune"});
  check_refused("tune -p n=128,d=64 --strategy exhaustive --strategy-option eta=3",
                {"strategy 'exhaustive' has no option 'eta'"});
  check_refused("tune -p n=128,d=64 --budget 100000", {"--budget 100000 is outside"});
  const test::CliResult r = test::run_cli("", "tune --help");
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Contains("--strategy") && Contains("--budget") && Contains("--json") && Contains("--file") &&
                           Contains("--portable"));
}

TEST_CASE("flashbias check --flush-l2 needs a timing, and says so before touching a GPU", "[cpu][tuner][cli]") {
  using test::run_cli;
  auto r = run_cli("", "check -p n=128,d=64 --flush-l2");
  CHECK(r.status == 2);
  CHECK_THAT(r.output, Contains("--flush-l2 applies to timings"));
  r = run_cli("", "check --help");
  CHECK(r.status == 0);
  CHECK_THAT(r.output, Contains("--flush-l2") && Contains("twice the L2"));
}

TEST_CASE("flashbias check reads its problems, config and counts before touching a GPU", "[cpu][tuner][cli]") {
  // Without a GPU these would otherwise all end in the no-GPU error; with one, the first problems
  // would run before the bad one is found.
  check_refused("check -p n=128,d=64 -p n=128,d=31", {"--problem #2 'n=128,d=31'", "head dim must be a multiple of 8"});
  check_refused("check -p garbage", {"--problem #1 'garbage'", "has no '='"});
  check_refused("check -p n=128,d=64 --config bm=x", {"'bm' must be a positive integer"});
  check_refused("check -p n=128,d=64 --repeat 0", {"--repeat 0 must be at least 1"});
  check_refused("check -p n=128,d=64 --rows -3", {"--rows -3 must be at least 1"});
}

TEST_CASE("flashbias gen names the rule a key breaks", "[cpu][tuner][cli]") {
  check_refused("gen --arch sm_90a -d 33", {"head_dim must be a multiple of 8", "got kHeadDim = 33"});
  check_refused("gen --arch sm_80 -d 32 -r 3 --bias-align 16 --direction bwd",
                {"bias_align must divide a row of rank elements"});
}

TEST_CASE("row counts of zero, which would check nothing and pass, are refused before touching a GPU",
          "[cpu][tuner][cli]") {
  check_refused("tune -p n=64,d=32 --check-rows 0", {"--check-rows 0 must be at least 1"});
  check_refused("demo --rows 0", {"--rows 0 must be at least 1"});
  // bench-runtime reads its overhead problem and its --out path before minutes of GPU work.
  check_refused("bench-runtime --overhead-problem garbage", {"--overhead-problem 'garbage'"});
  check_refused("bench-runtime --out /nonexistent-dir-of-flashbias/report.md", {"does not exist or is not writable"});
}
