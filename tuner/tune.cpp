#include "tuner/tune.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "cache/store.h"
#include "generator/kernel_source.h"
#include "generator/variants.h"
#include "runtime/log.h"
#include "runtime/nvrtc_api.h"
#include "tuner/store_records.h"

namespace flashbias::tuner {

cache::TuningRun make_run_record(const StrategyResult& result, const std::vector<std::string>& names,
                                 OutcomeCounts* counts) {
  cache::TuningRun run;
  OutcomeCounts c;
  for (std::size_t i = 0; i < result.candidates.size(); ++i) {
    const CandidateResult& r = result.candidates[i];
    if (!r.verdict) {
      ++c.skipped;
      continue;
    }
    cache::TuningCandidate t;
    t.tile = names.at(i);
    t.outcome = r.verdict->outcome;
    t.reason = r.verdict->reason;
    t.compile_ms = r.verdict->compile_ms;
    t.max_error = r.verdict->max_error;
    if (r.timing && r.verdict->outcome == Outcome::passed) {
      t.median_ms = r.timing->median_ms;
      t.min_ms = r.timing->min_ms;
      t.max_ms = r.timing->max_ms;
      t.repeats = r.timing->repeats;
    }
    switch (t.outcome) {
      case Outcome::passed: ++c.passed; break;
      case Outcome::incorrect: ++c.incorrect; break;
      case Outcome::compile_failed: ++c.compile_failed; break;
      case Outcome::launch_failed: ++c.launch_failed; break;
      case Outcome::not_supported: ++c.not_supported; break;
    }
    run.candidates.push_back(std::move(t));
  }
  if (result.winner) run.winner_tile = names.at(*result.winner);
  if (counts) *counts = c;
  return run;
}

ProblemSpec problem_for(const ProblemKey& key, const ShapeInfo& shape) {
  ProblemSpec p;
  p.dtype = key.dtype;
  p.batch = 1;
  p.heads = std::max<std::int64_t>(1, shape.batch_heads);
  p.seqlen_q = std::max<std::int64_t>(1, shape.seqlen_q);
  p.seqlen_k = std::max<std::int64_t>(1, shape.seqlen_k);
  p.head_dim = key.head_dim;
  p.rank = key.rank;
  p.mask = key.mask;
  if (key.rank > 0) {
    p.qb_layout = FactorLayout{(key.broadcast & kQbBatch) != 0, (key.broadcast & kQbHead) != 0};
    p.kb_layout = FactorLayout{(key.broadcast & kKbBatch) != 0, (key.broadcast & kKbHead) != 0};
  }
  validate(p);
  return p;
}

TuneReport tune(const ProblemSpec& problem, const DeviceInfo& device, cache::Store* store, const TuneOptions& options,
                const ProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  auto strategy = make_strategy(options.strategy);
  const StrategyOptions strategy_options = resolve_options(*strategy, options.strategy_options);

  TuneReport report;
  report.problem = problem;
  const ShapeInfo shape{problem.batch * problem.heads, problem.seqlen_q, problem.seqlen_k};
  report.bucket = shape_bucket(shape);
  report.device = fingerprint(device).str();

  // The key depends on the buffers' alignment, so the source (which owns the buffers) derives it;
  // the search space is then the variant table's for that key, ignoring shared memory: candidates
  // over the device's limit are recorded as not_supported with the figure, not silently absent.
  auto source = std::make_unique<GpuSource>(device, problem, std::vector<TileConfig>{}, options.key, options.source);
  std::vector<TileConfig> tiles = enumerate_tiles(source->key(), std::numeric_limits<std::size_t>::max());
  if (tiles.empty()) {
    throw Error(ErrorCode::unsupported,
                fmt::format("no tile configuration in the variant table covers {}", source->key().str()));
  }
  report.key = source->key();
  report.heuristic = heuristic_tile(report.key, shape, device.max_smem_per_block_optin);
  // The heuristic's tile first, then its neighbours by the number of knobs that differ: a budget
  // that runs out while candidates are still being compiled has then checked the tile an untuned
  // call would run and the tiles around it, not one corner of the knob product.
  tiles = nearest_first(report.key, std::move(tiles), report.heuristic);
  source->set_tiles(tiles);
  log(LogLevel::info, "tuning {} bucket {} on {}: {} candidates, strategy {}", report.key.str(), report.bucket.str(),
      device.name, tiles.size(), strategy->name());

  const StrategyResult result = strategy->run(*source, strategy_options, progress);
  report.budget_exhausted = result.budget_exhausted;

  std::vector<std::string> names;
  for (const TileConfig& t : tiles) names.push_back(t.str());
  report.run = make_run_record(result, names, &report.counts);
  report.run.device = fingerprint(device);
  report.run.problem_key = report.key.str();
  report.run.arch = report.key.arch.name();
  report.run.bucket = report.bucket.str();
  report.run.strategy = std::string(strategy->name());
  report.run.templates_hash = templates_hash();
  report.run.nvrtc_version = nvrtc_version_number(nvrtc::api().version());

  if (result.winner) {
    report.winner = tiles[*result.winner];
    report.winner_ms = result.candidates[*result.winner].timing->median_ms;
  }

  // Side by side with the heuristic, on the same inputs and flush, so the speed-up column compares
  // like with like (the strategy's numbers come from different rungs and moments).
  const auto h = std::find(tiles.begin(), tiles.end(), report.heuristic);
  bool compared = false;  // winner and heuristic timed side by side (not just in different rungs)
  if (h == tiles.end()) {
    report.heuristic_note = "not in the variant table";
  } else {
    const std::size_t hi = std::size_t(h - tiles.begin());
    const Verdict hv = source->prepare({hi}).front();
    if (hv.outcome != Outcome::passed) {
      report.heuristic_note = fmt::format("{}: {}", cache::to_string(hv.outcome), hv.reason);
    } else if (options.compare_repeats > 0 && report.winner && *report.winner == report.heuristic) {
      report.heuristic_ms = report.winner_ms;  // one kernel: timing it twice would only show drift
    } else if (options.compare_repeats > 0) {
      // Alternate the two in rounds so that clock drift falls on both alike; median of rounds.
      constexpr int kRounds = 5;
      const int per_round = std::max(1, options.compare_repeats / kRounds);
      std::vector<double> w_ms, h_ms;
      try {
        for (int round = 0; round < kRounds; ++round) {
          if (report.winner) w_ms.push_back(source->time(*result.winner, per_round).median_ms);
          h_ms.push_back(source->time(hi, per_round).median_ms);
        }
        auto median = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        if (!w_ms.empty()) report.winner_ms = median(w_ms);
        report.heuristic_ms = median(h_ms);
        compared = true;
      } catch (const Error& e) {
        report.heuristic_note = fmt::format("comparison failed: {}", e.what());
      }
    } else if (result.candidates[hi].timing) {
      report.heuristic_ms = result.candidates[hi].timing->median_ms;
    }
  }

  // Tuning must never leave a key slower than untuned: when the side-by-side comparison finds the
  // heuristic's tile faster than the strategy's pick (two tiles within the strategy's noise, or a
  // budget that stopped before the heuristic's tile was timed), the heuristic's tile is stored.
  std::optional<std::size_t> winner_index = result.winner;
  if (compared && h != tiles.end() && report.heuristic_ms &&
      (!report.winner_ms || (*report.heuristic_ms < *report.winner_ms && !(*report.winner == report.heuristic)))) {
    const std::size_t hi = std::size_t(h - tiles.begin());
    log(LogLevel::info, "side by side, the heuristic's {} ({:.4f} ms) beats {}: storing it as the winner",
        report.heuristic.str(), *report.heuristic_ms,
        report.winner ? fmt::format("{} ({:.4f} ms)", report.winner->str(), *report.winner_ms) : "no timed candidate");
    winner_index = hi;
    report.winner = report.heuristic;
    report.winner_ms = report.heuristic_ms;
    report.heuristic_won = true;
    report.run.winner_tile = report.heuristic.str();
    for (cache::TuningCandidate& c : report.run.candidates) {
      if (c.tile != report.heuristic.str() || c.median_ms) continue;
      // Never timed by the strategy: its record gets the comparison's figure, so the stored winner
      // names a passed, timed candidate.
      c.median_ms = c.min_ms = c.max_ms = *report.heuristic_ms;
      c.repeats = std::max(1, options.compare_repeats / 5) * 5;
    }
    if (std::none_of(report.run.candidates.begin(), report.run.candidates.end(),
                     [&](const cache::TuningCandidate& c) { return c.tile == report.heuristic.str(); })) {
      const Verdict hv = source->prepare({hi}).front();
      cache::TuningCandidate c;
      c.tile = report.heuristic.str();
      c.outcome = hv.outcome;
      c.compile_ms = hv.compile_ms;
      c.max_error = hv.max_error;
      c.median_ms = c.min_ms = c.max_ms = *report.heuristic_ms;
      c.repeats = std::max(1, options.compare_repeats / 5) * 5;
      report.run.candidates.push_back(c);
      if (report.counts.skipped > 0) --report.counts.skipped;
      ++report.counts.passed;
    }
  }

  report.run.tuning_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (store != nullptr) {
    try {
      report.run.id = store->put_tuning_run(report.run);
      if (winner_index) {
        const std::size_t w = *winner_index;
        store->put_kernel(kernel_record(*source->source(w), *source->compiled(w), device.driver_version));
      }
      report.stored = true;
    } catch (const Error& e) {
      report.store_warning = e.what();
      log(LogLevel::warn, "tuning results for {} not stored: {}", report.key.str(), e.what());
    }
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace flashbias::tuner
