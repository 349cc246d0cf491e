// ReplaySource: a MeasurementSource that replays a table of candidates (verdict, true time, noise)
// on a simulated clock, so strategies are tested and compared without a GPU (Kernel Tuner's
// runners/simulation.py). A table can come from a stored tuning run (the store keeps every
// candidate's median and spread), which replays a real GPU's measurements on any machine.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cache/records.h"
#include "tuner/measurement.h"

namespace flashbias::tuner {

struct ReplayRow {
  std::string name;            ///< TileConfig::str() or any label
  Verdict verdict;             ///< what prepare() answers
  double true_ms = 0;          ///< the noise-free time of one run
  double noise = 0.01;         ///< relative standard deviation of one timed run
  double outlier_rate = 0.02;  ///< chance that one run is slowed down (a clock dip, a context switch)
  double outlier_factor = 0.5; ///< how much slower an outlier run is (0.5: 50 % slower)
};

struct ReplayCosts {
  double compile_seconds = 8.0;    ///< NVRTC time per candidate (prepared `parallelism` at a time)
  double check_seconds = 0.5;      ///< numerical check per candidate (serial, after the compiles)
  int warmup = 3;                  ///< untimed runs before each timing
  double per_timing_seconds = 0.01;  ///< host overhead of one time() call (events, sync)
};

class ReplaySource final : public MeasurementSource {
 public:
  ReplaySource(std::vector<ReplayRow> rows, std::uint64_t seed, ReplayCosts costs = {}, std::size_t parallelism = 4);

  /// Rows from a stored run: verdicts from outcomes, true time from the median, noise from the
  /// spread (max - min over n repeats spans about 4 standard deviations for n around 20-30).
  static std::vector<ReplayRow> rows_from_run(const cache::TuningRun& run);

  std::size_t size() const override { return rows_.size(); }
  std::string name(std::size_t i) const override { return rows_.at(i).name; }
  std::vector<Verdict> prepare(const std::vector<std::size_t>& candidates) override;
  Timing time(std::size_t i, int repeats) override;
  double elapsed_seconds() const override { return clock_; }
  std::size_t parallelism() const override { return parallelism_; }
  std::optional<double> estimate_seconds(std::size_t i, int repeats) const override;

  /// Calls of time() so far, and the timed runs they asked for (for tests of budget use).
  std::size_t timings() const { return timings_; }
  std::size_t timed_runs() const { return timed_runs_; }
  const std::vector<ReplayRow>& rows() const { return rows_; }

 private:
  std::vector<ReplayRow> rows_;
  std::vector<bool> prepared_;
  ReplayCosts costs_;
  std::size_t parallelism_;
  std::mt19937_64 rng_;
  double clock_ = 0;
  std::size_t timings_ = 0, timed_runs_ = 0;
};

}  // namespace flashbias::tuner
