#include "tuner/replay.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "flashbias/flashbias.hpp"

namespace flashbias::tuner {

ReplaySource::ReplaySource(std::vector<ReplayRow> rows, std::uint64_t seed, ReplayCosts costs, std::size_t parallelism)
    : rows_(std::move(rows)),
      prepared_(rows_.size(), false),
      costs_(costs),
      parallelism_(std::max<std::size_t>(1, parallelism)),
      rng_(seed) {}

std::vector<ReplayRow> ReplaySource::rows_from_run(const cache::TuningRun& run) {
  std::vector<ReplayRow> rows;
  for (const cache::TuningCandidate& c : run.candidates) {
    ReplayRow r;
    r.name = c.tile;
    r.verdict = Verdict{c.outcome, c.reason, c.compile_ms, c.max_error};
    if (c.outcome == Outcome::passed && !c.median_ms) {
      // A passed candidate the original run never timed (its budget ran out): replaying it as
      // timed would invent a number, so it is replayed as not measurable.
      r.verdict = Verdict{Outcome::not_supported, "not timed in the recorded run", c.compile_ms, c.max_error};
    }
    r.true_ms = c.median_ms.value_or(0);
    if (c.median_ms && c.min_ms && c.max_ms && *c.median_ms > 0)
      r.noise = std::max(1e-4, (*c.max_ms - *c.min_ms) / *c.median_ms / 4.0);
    rows.push_back(std::move(r));
  }
  return rows;
}

std::vector<Verdict> ReplaySource::prepare(const std::vector<std::size_t>& candidates) {
  std::vector<Verdict> out;
  std::size_t fresh = 0;
  for (std::size_t i : candidates) {
    const ReplayRow& r = rows_.at(i);
    if (!prepared_[i]) {
      prepared_[i] = true;
      ++fresh;
    }
    out.push_back(r.verdict);
  }
  // Compiles run `parallelism` at a time; checks run one after another on the one GPU.
  const double waves = std::ceil(double(fresh) / double(parallelism_));
  clock_ += waves * costs_.compile_seconds + double(fresh) * costs_.check_seconds;
  return out;
}

std::optional<double> ReplaySource::estimate_seconds(std::size_t i, int repeats) const {
  // What time() will charge the clock, noise aside: the source knows its table.
  return rows_.at(i).true_ms * double(repeats + costs_.warmup) / 1000.0 + costs_.per_timing_seconds;
}

Timing ReplaySource::time(std::size_t i, int repeats) {
  const ReplayRow& r = rows_.at(i);
  if (!prepared_.at(i) || r.verdict.outcome != Outcome::passed) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("replay: candidate {} ({}) cannot be timed: {}", i, r.name,
                            prepared_[i] ? cache::to_string(r.verdict.outcome) : "not prepared"));
  }
  if (repeats < 1) throw Error(ErrorCode::invalid_argument, fmt::format("replay: repeats = {} < 1", repeats));
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<double> ms(static_cast<std::size_t>(repeats));
  for (double& m : ms) {
    double v = r.true_ms * (1.0 + r.noise * gauss(rng_));
    if (uni(rng_) < r.outlier_rate) v *= 1.0 + r.outlier_factor;
    m = std::max(v, r.true_ms * 0.5);  // a run is never twice as fast as the kernel can be
  }
  std::sort(ms.begin(), ms.end());
  ++timings_;
  timed_runs_ += std::size_t(repeats);
  clock_ += *estimate_seconds(i, repeats);
  return Timing{ms[ms.size() / 2], ms.front(), ms.back(), repeats};
}

}  // namespace flashbias::tuner
