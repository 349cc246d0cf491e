// Search strategies against replayed measurements (no GPU): the exhaustive search finds the true
// best, successive halving lands within 3 % of it, budgets are honoured, incorrect or failed
// candidates never win, and option tables reject what they do not declare.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "flashbias/flashbias.hpp"
#include "tuner/replay.h"
#include "tuner/strategy.h"

using namespace flashbias;
using namespace flashbias::tuner;
using Catch::Matchers::Contains;

namespace {

Verdict passed() { return Verdict{Outcome::passed, "", 100.0, 1e-4}; }

// A table shaped like a real sm80 forward key: 24 candidates, a handful within 10 % of the best,
// a long tail, and some that fail before timing.
std::vector<ReplayRow> realistic_table() {
  std::vector<ReplayRow> rows;
  const double times[] = {1.92, 1.41, 1.37, 2.80, 1.00, 1.05, 1.08, 3.10, 1.62, 1.15, 1.30, 2.20,
                          1.74, 1.12, 1.26, 4.00, 1.50, 1.03, 1.90, 2.60, 1.22, 1.33, 1.47, 1.09};
  int i = 0;
  for (double t : times) {
    ReplayRow r;
    r.name = fmt::format("cand{}", i++);
    r.verdict = passed();
    r.true_ms = t;
    r.noise = 0.01;
    rows.push_back(r);
  }
  rows.push_back({"spills", Verdict{Outcome::not_supported, "spills 64 bytes", 90.0, std::nullopt}, 0.0});
  rows.push_back({"bad_src", Verdict{Outcome::compile_failed, "error: static_assert", 10.0, std::nullopt}, 0.0});
  return rows;
}

std::size_t true_best(const std::vector<ReplayRow>& rows) {
  std::size_t best = rows.size();
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (rows[i].verdict.outcome == Outcome::passed && (best == rows.size() || rows[i].true_ms < rows[best].true_ms))
      best = i;
  return best;
}

StrategyResult run(const std::string& strategy, ReplaySource& source, std::map<std::string, std::string> opts = {},
                   std::vector<Progress>* progress = nullptr) {
  auto s = make_strategy(strategy);
  ProgressFn fn;
  if (progress) fn = [progress](const Progress& p) { progress->push_back(p); };
  return s->run(source, resolve_options(*s, opts), fn);
}

}  // namespace

TEST_CASE("exhaustive finds the true best on a replayed table", "[cpu][tuner]") {
  const auto rows = realistic_table();
  for (std::uint64_t seed = 1; seed <= 10; ++seed) {
    ReplaySource src(rows, seed);
    const StrategyResult r = run("exhaustive", src);
    REQUIRE(r.winner);
    CHECK(*r.winner == true_best(rows));
    CHECK_FALSE(r.budget_exhausted);
    // Every passed candidate was timed with the declared default repeats; failed ones never.
    for (std::size_t i = 0; i < rows.size(); ++i) {
      REQUIRE(r.candidates[i].verdict);
      if (rows[i].verdict.outcome == Outcome::passed) {
        REQUIRE(r.candidates[i].timing);
        CHECK(r.candidates[i].timing->repeats == 20);
      } else {
        CHECK_FALSE(r.candidates[i].timing);
      }
    }
  }
}

TEST_CASE("halving finds a candidate within 3% of the best with fewer timed runs", "[cpu][tuner]") {
  const auto rows = realistic_table();
  const double best = rows[true_best(rows)].true_ms;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    ReplaySource halving_src(rows, seed);
    const StrategyResult h = run("halving", halving_src);
    REQUIRE(h.winner);
    CHECK(rows[*h.winner].true_ms <= best * 1.03);

    ReplaySource exhaustive_src(rows, seed);
    run("exhaustive", exhaustive_src, {{"repeats", "27"}});
    CHECK(halving_src.timed_runs() * 2 < exhaustive_src.timed_runs());
  }
}

TEST_CASE("halving replays a stored run's candidates", "[cpu][tuner]") {
  cache::TuningRun run_record;
  const double times[] = {0.31, 0.27, 0.29, 0.45, 0.262, 0.38};
  int i = 0;
  for (double t : times) {
    cache::TuningCandidate c;
    c.tile = fmt::format("t{}", i++);
    c.median_ms = t;
    c.min_ms = t * 0.99;
    c.max_ms = t * 1.02;
    c.repeats = 27;
    run_record.candidates.push_back(c);
  }
  cache::TuningCandidate wrong;
  wrong.tile = "racy";
  wrong.outcome = Outcome::incorrect;
  wrong.reason = "O: rel_l2 3e-1";
  run_record.candidates.push_back(wrong);
  const auto rows = ReplaySource::rows_from_run(run_record);
  REQUIRE(rows.size() == 7);
  CHECK(rows[6].verdict.outcome == Outcome::incorrect);
  ReplaySource src(rows, 7);
  const StrategyResult r = run("halving", src);
  REQUIRE(r.winner);
  CHECK(rows[*r.winner].true_ms <= 0.262 * 1.03);
}

TEST_CASE("an incorrect or failing candidate never wins, however fast", "[cpu][tuner]") {
  auto rows = realistic_table();
  // The fastest kernels are the wrong ones: a race that computes garbage quickly.
  rows.push_back({"racy", Verdict{Outcome::incorrect, "O: rel_l2 4e-1", 100.0, 0.4}, 0.01});
  rows.push_back({"no_launch", Verdict{Outcome::launch_failed, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 90.0, {}}, 0.02});
  rows.push_back({"too_big", Verdict{Outcome::not_supported, "smem 240 KiB > 227 KiB", {}, {}}, 0.03});
  for (const char* strategy : {"exhaustive", "halving"}) {
    ReplaySource src(rows, 3);
    const StrategyResult r = run(strategy, src);
    REQUIRE(r.winner);
    CHECK(*r.winner == true_best(rows));
    CHECK(rows[*r.winner].verdict.outcome == Outcome::passed);
  }
  // Nothing passes: no winner rather than a failed one.
  std::vector<ReplayRow> all_bad{{"a", Verdict{Outcome::incorrect, "wrong", 1.0, 1.0}, 0.1},
                                 {"b", Verdict{Outcome::compile_failed, "error", 1.0, {}}, 0.1}};
  for (const char* strategy : {"exhaustive", "halving"}) {
    ReplaySource src(all_bad, 1);
    const StrategyResult r = run(strategy, src);
    CHECK_FALSE(r.winner);
    CHECK(r.measurements == 0);
  }
  // pick_winner itself refuses untimed or non-passed entries.
  std::vector<CandidateResult> results(2);
  results[0].verdict = Verdict{Outcome::incorrect, "x", {}, {}};
  results[0].timing = Timing{0.001, 0.001, 0.001, 5};
  results[0].rung = 3;
  results[1].verdict = passed();
  CHECK_FALSE(pick_winner(results));
  results[1].timing = Timing{1.0, 1.0, 1.0, 5};
  results[1].rung = 0;
  CHECK(pick_winner(results) == std::optional<std::size_t>(1));
}

TEST_CASE("budgets are honoured on the simulated clock", "[cpu][tuner]") {
  // Slow kernels so that timing, not compilation, eats the budget: 24 candidates x 27 repeats of
  // ~100 ms would take over a minute.
  auto rows = realistic_table();
  for (auto& r : rows) r.true_ms *= 100.0;
  ReplayCosts costs;
  costs.compile_seconds = 2.0;
  for (double budget : {15.0, 25.0, 40.0}) {
    for (const char* strategy : {"exhaustive", "halving"}) {
      ReplaySource src(rows, 11, costs, 8);
      const StrategyResult r = run(strategy, src, {{"budget", fmt::format("{}", budget)}});
      INFO(strategy << " budget " << budget << " used " << src.elapsed_seconds());
      CHECK(src.elapsed_seconds() <= budget);
      // A cut run still returns the best of what it measured, never nothing, once anything ran.
      if (r.measurements > 0) CHECK(r.winner);
      if (r.budget_exhausted) CHECK(src.elapsed_seconds() > budget * 0.5);
    }
  }
  // Unlimited: the full plan runs.
  ReplaySource src(rows, 11, costs, 8);
  const StrategyResult r = run("exhaustive", src);
  CHECK_FALSE(r.budget_exhausted);
  CHECK(src.elapsed_seconds() > 40.0);
}

TEST_CASE("a space that takes longer to compile than the budget still gets timed", "[cpu][tuner]") {
  // Fast kernels, slow compiles: 24 candidates in batches of 4 at 8 s + 0.5 s each would take 60
  // s; with 30 s the run compiles what leaves time to time it, then times it (it used to compile
  // until the budget was gone and time nothing).
  const auto rows = realistic_table();
  ReplayCosts costs;
  costs.compile_seconds = 8.0;
  for (const char* strategy : {"exhaustive", "halving"}) {
    ReplaySource src(rows, 5, costs, 4);
    const StrategyResult r = run(strategy, src, {{"budget", "30"}});
    INFO(strategy << " used " << src.elapsed_seconds() << " s, " << r.measurements << " timings");
    CHECK(r.budget_exhausted);
    CHECK(src.elapsed_seconds() <= 30.0);
    CHECK(r.measurements > 0);
    REQUIRE(r.winner);
    CHECK(r.candidates[*r.winner].timing);
  }
}

TEST_CASE("progress counts up to the total and reports the best so far", "[cpu][tuner]") {
  const auto rows = realistic_table();
  for (const char* strategy : {"exhaustive", "halving"}) {
    ReplaySource src(rows, 5);
    std::vector<Progress> progress;
    const StrategyResult r = run(strategy, src, {}, &progress);
    REQUIRE(!progress.empty());
    for (std::size_t i = 1; i < progress.size(); ++i) {
      CHECK(progress[i].done >= progress[i - 1].done);
      CHECK(progress[i].done <= progress[i].total);
    }
    CHECK(progress.back().done == progress.back().total);
    REQUIRE(progress.back().best);
    CHECK(*progress.back().best == *r.winner);
    CHECK(progress.back().eta_seconds == std::optional<double>(0.0));
  }
}

TEST_CASE("strategy options are declared and checked", "[cpu][tuner]") {
  const auto names = strategy_names();
  CHECK(std::count(names.begin(), names.end(), "exhaustive") == 1);
  CHECK(std::count(names.begin(), names.end(), "halving") == 1);
  auto halving = make_strategy("halving");
  const StrategyOptions defaults = resolve_options(*halving, {});
  CHECK(defaults.integer("eta") == 3);
  CHECK(defaults.number("budget") == 0.0);
  CHECK(resolve_options(*halving, {{"eta", "4"}, {"budget", "12.5"}}).number("budget") == 12.5);

  CHECK_THROWS_WITH(resolve_options(*halving, {{"repeats", "5"}}),
                    Contains("strategy 'halving' has no option 'repeats'") && Contains("eta, min_repeats"));
  CHECK_THROWS_WITH(resolve_options(*halving, {{"eta", "1"}}), Contains("'eta' = 1 is outside [2, 16]"));
  CHECK_THROWS_WITH(resolve_options(*halving, {{"eta", "2.5"}}), Contains("must be a whole number"));
  CHECK_THROWS_WITH(resolve_options(*halving, {{"budget", "soon"}}), Contains("'budget' = 'soon' is not a number"));
  CHECK_THROWS_WITH(make_strategy("random"), Contains("unknown tuning strategy 'random'") && Contains("halving"));

  auto halving2 = make_strategy("halving");
  ReplaySource src(realistic_table(), 1);
  CHECK_THROWS_WITH(halving2->run(src, resolve_options(*halving2, {{"min_repeats", "50"}, {"max_repeats", "10"}}), {}),
                    Contains("min_repeats = 50 exceeds max_repeats = 10"));

  CHECK(parse_option_list("eta=4, budget = 30") == std::map<std::string, std::string>{{"budget", "30"}, {"eta", "4"}});
  CHECK_THROWS_WITH(parse_option_list("eta"), Contains("'eta' is not of the form name=value"));
  CHECK_THROWS_WITH(parse_option_list("eta=3,eta=4"), Contains("'eta' is given twice"));
}

TEST_CASE("plug-in strategies register by name", "[cpu][tuner]") {
  // A trivial plug-in: time only the first passed candidate.
  struct FirstPassed final : Strategy {
    std::string_view name() const override { return "first-passed"; }
    std::string_view description() const override { return "test plug-in"; }
    const std::vector<OptionSpec>& options() const override {
      static const std::vector<OptionSpec> t{{"budget", "seconds", 0, 0, 10, false}};
      return t;
    }
    StrategyResult run(MeasurementSource& s, const StrategyOptions&, const ProgressFn&) const override {
      StrategyResult r;
      r.candidates.resize(s.size());
      for (std::size_t i = 0; i < s.size(); ++i) {
        r.candidates[i].verdict = s.prepare({i}).front();
        if (r.candidates[i].verdict->outcome != Outcome::passed) continue;
        r.candidates[i].timing = s.time(i, 1);
        r.candidates[i].rung = 0;
        break;
      }
      r.winner = pick_winner(r.candidates);
      return r;
    }
  };
  register_strategy("first-passed", [] { return std::unique_ptr<Strategy>(std::make_unique<FirstPassed>()); });
  auto s = make_strategy("first-passed");
  ReplaySource src(realistic_table(), 1);
  CHECK(s->run(src, resolve_options(*s, {}), {}).winner == std::optional<std::size_t>(0));
}
