// The measurement source: what a search strategy may ask about the candidates of one tuning run.
// Strategies see only this interface, so they are unit-tested on machines without a GPU against a
// replayed table (tuner/replay.h) and run unchanged against the GPU (tuner/gpu_source.h).
//
//   prepare(candidates) -> one Verdict each (static pruning, compile, numerical check)
//   time(i, repeats)    -> Timing (only for a candidate whose verdict is `passed`)
//   elapsed_seconds()   -> the run's clock (a fake one in tests), for budgets and ETAs
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "cache/records.h"

namespace flashbias::tuner {

using cache::Outcome;

/// Median and spread of `repeats` timed runs of one candidate.
struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  double max_ms = 0;
  int repeats = 0;
};

/// What happened to a candidate before timing: only `passed` candidates may be timed or win.
struct Verdict {
  Outcome outcome = Outcome::not_supported;
  std::string reason;                ///< empty for passed; else names the rule, log line or error
  std::optional<double> compile_ms;  ///< absent when it never reached the compiler
  std::optional<double> max_error;   ///< largest relative error against the reference, when checked
};

class MeasurementSource {
 public:
  virtual ~MeasurementSource() = default;

  /// Number of candidates; they are addressed by index in [0, size()).
  virtual std::size_t size() const = 0;
  /// The candidate's name (TileConfig::str()), for progress lines and records.
  virtual std::string name(std::size_t i) const = 0;

  /// Prune, compile and check the given candidates (a source may compile them in parallel).
  /// Returns one verdict per index, in the same order. Preparing an index twice returns the
  /// first verdict again without repeating the work.
  virtual std::vector<Verdict> prepare(const std::vector<std::size_t>& candidates) = 0;

  /// Time a prepared, passed candidate over `repeats` runs (warm-up excluded). Throws
  /// Error(invalid_argument) for a candidate that did not pass, Error(launch_failed) if a run fails.
  virtual Timing time(std::size_t i, int repeats) = 0;

  /// Seconds since the source was created, on the clock the budget is measured with.
  virtual double elapsed_seconds() const = 0;

  /// Expected wall seconds of time(i, repeats) for a prepared, passed candidate, if the source
  /// can tell (the GPU source times the kernel during its checks; a replay knows its table).
  /// Budgets use it so that even the first timing of a slow kernel cannot overshoot.
  virtual std::optional<double> estimate_seconds(std::size_t i, int repeats) const {
    (void)i;
    (void)repeats;
    return std::nullopt;
  }

  /// How many candidates one prepare() call can work on at once (its compile pool's size), so a
  /// strategy hands them out in batches that keep the pool busy yet report progress often.
  virtual std::size_t parallelism() const { return 1; }
};

}  // namespace flashbias::tuner
