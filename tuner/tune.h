// Tuning one (device, ProblemKey, ShapeBucket): the search space from the generator's variant
// table, a strategy over a GpuSource, every candidate's outcome and timing stored as one tuning
// run, the winner's cubin stored so that the next process loads it without NVRTC, and the winner
// compared with the built-in heuristic's tile on the same inputs.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cache/records.h"
#include "generator/problem_key.h"
#include "generator/problem_spec.h"
#include "generator/shape_bucket.h"
#include "runtime/device.h"
#include "tuner/gpu_source.h"
#include "tuner/strategy.h"

namespace flashbias::cache {
class Store;
}

namespace flashbias::tuner {

struct TuneOptions {
  std::string strategy = "halving";
  /// Strategy options by name (checked against its table); "budget" is the --budget seconds.
  std::map<std::string, std::string> strategy_options;
  GpuSourceOptions source;
  /// Re-time the winner and the heuristic's tile with this many runs each, side by side, for the
  /// speed-up column (0: skip; the runtime's tune policy does not need it).
  int compare_repeats = 30;
  /// Key to tune (nullopt: the problem's own key, from its buffers' alignment).
  std::optional<ProblemKey> key;
};

/// Counts of candidates by outcome, plus those a budget left unprepared.
struct OutcomeCounts {
  int passed = 0, incorrect = 0, compile_failed = 0, launch_failed = 0, not_supported = 0, skipped = 0;
  int total() const { return passed + incorrect + compile_failed + launch_failed + not_supported + skipped; }
};

struct TuneReport {
  ProblemSpec problem;
  ProblemKey key;
  ShapeBucket bucket;
  std::string device;                   ///< fingerprint string
  cache::TuningRun run;                 ///< as stored (id set when a store was given and it was written)
  std::optional<TileConfig> winner;
  std::optional<double> winner_ms;      ///< side-by-side median (or the strategy's, without a comparison)
  TileConfig heuristic;                 ///< heuristic_tile for this key and shape
  std::optional<double> heuristic_ms;   ///< side-by-side median; absent if it did not pass
  std::string heuristic_note;           ///< why heuristic_ms is absent
  OutcomeCounts counts;
  bool budget_exhausted = false;
  bool heuristic_won = false;           ///< the comparison found the heuristic's tile faster: it is the winner
  bool stored = false;                  ///< run (and winner kernel) written to the store
  std::string store_warning;            ///< why not, when a store was given
  double seconds = 0;                   ///< the whole tune() call
  std::optional<double> speedup() const {
    if (winner_ms && heuristic_ms && *winner_ms > 0) return *heuristic_ms / *winner_ms;
    return std::nullopt;
  }
};

/// Build a TuningRun record from a finished strategy run over `names` (TileConfig::str()).
/// Candidates never prepared are left out of the record and counted as skipped.
cache::TuningRun make_run_record(const StrategyResult& result, const std::vector<std::string>& names,
                                 OutcomeCounts* counts);

/// Tune `problem` on `device` (its primary context current on this thread). With a store, the
/// run is stored (even without a winner: failures are data too) and the winner's kernel with it;
/// a store write failure is reported in store_warning, not thrown: the measurements still stand.
/// Throws Error(unsupported) when the variant table has no candidate for the key,
/// Error(invalid_argument) for bad options, Error(nvrtc_unavailable) without NVRTC.
TuneReport tune(const ProblemSpec& problem, const DeviceInfo& device, cache::Store* store, const TuneOptions& options,
                const ProgressFn& progress = {});

/// A problem that exercises `key` at `shape` (batch 1, heads = batch*heads, the key's dtype, head
/// dim, rank, mask and factor sharing): what the tune policy measures on a dispatch miss.
ProblemSpec problem_for(const ProblemKey& key, const ShapeInfo& shape);

}  // namespace flashbias::tuner
