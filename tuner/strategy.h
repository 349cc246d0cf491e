// Search strategies as plug-ins (Kernel Tuner's strategies/): each declares its options, with
// defaults and limits, and a run over a MeasurementSource. Unknown options, out-of-range values
// and unknown strategy names are errors that list what is allowed, never silently ignored.
//
// Built in:
//   exhaustive  prepare every candidate, time every passed one with `repeats` runs; optional budget.
//   halving     successive halving over repeats: time every passed candidate briefly, keep the
//               fastest 1/eta, time those eta times longer, ... until one is left or the largest
//               repeat count is reached; honours a wall-clock budget.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tuner/measurement.h"

namespace flashbias::tuner {

/// One declared option. Values are numbers; `integer` ones must be whole.
struct OptionSpec {
  std::string name;
  std::string help;
  double default_value = 0;
  double min = 0;
  double max = 0;
  bool integer = true;
};

/// Options after checking against a strategy's table: every declared option has a value.
class StrategyOptions {
 public:
  StrategyOptions() = default;
  explicit StrategyOptions(std::map<std::string, double> values) : values_(std::move(values)) {}
  /// The value of a declared option; Error(internal) for a name the table does not declare.
  double number(std::string_view name) const;
  int integer(std::string_view name) const { return static_cast<int>(number(name)); }
  const std::map<std::string, double>& values() const { return values_; }

 private:
  std::map<std::string, double> values_;
};

/// Progress of a run, reported after every prepare batch and every timing.
struct Progress {
  std::size_t done = 0;   ///< work units finished (one per prepared candidate and per timing)
  std::size_t total = 0;  ///< work units planned (may shrink when a budget stops the run)
  double elapsed_seconds = 0;
  std::optional<double> eta_seconds;  ///< remaining time estimate (budget-capped), once known
  std::optional<std::size_t> best;    ///< best candidate so far
  std::optional<double> best_ms;
  std::string best_name;              ///< its MeasurementSource::name()
  std::string phase;                  ///< "compile+check", "time x3", ...
};
using ProgressFn = std::function<void(const Progress&)>;

/// One candidate's record after a run. `timing` is the most precise one taken (most repeats).
struct CandidateResult {
  std::optional<Verdict> verdict;  ///< absent: never prepared (the budget ran out first)
  std::optional<Timing> timing;    ///< absent: not timed
  int rung = -1;                   ///< halving: the last rung it was timed in (0-based); exhaustive: 0
};

struct StrategyResult {
  std::vector<CandidateResult> candidates;  ///< one per source index
  std::optional<std::size_t> winner;        ///< a passed, timed candidate, or none
  bool budget_exhausted = false;            ///< the budget stopped the run before its plan ended
  std::size_t measurements = 0;             ///< time() calls made
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string_view name() const = 0;
  virtual std::string_view description() const = 0;
  /// The declared options (every strategy has `budget`, seconds, 0 = unlimited).
  virtual const std::vector<OptionSpec>& options() const = 0;
  /// Search. Never returns an incorrect, failed or untimed candidate as the winner.
  virtual StrategyResult run(MeasurementSource& source, const StrategyOptions& options,
                             const ProgressFn& progress) const = 0;
};

/// Check `given` (name -> text) against the strategy's table and fill defaults. Throws
/// Error(invalid_argument) naming the strategy and the option: unknown (listing the known ones),
/// not a number, not whole, or outside [min, max].
StrategyOptions resolve_options(const Strategy& strategy, const std::map<std::string, std::string>& given);

/// Parse "name=value,name=value" (the CLI's --strategy-option list) into a map. Throws
/// Error(invalid_argument) for an item without '=' or a name given twice.
std::map<std::string, std::string> parse_option_list(std::string_view text);

/// A registered strategy by name; Error(invalid_argument) listing the registered names.
std::unique_ptr<Strategy> make_strategy(std::string_view name);
/// Registered names, sorted ("exhaustive", "halving", ...).
std::vector<std::string> strategy_names();
/// Add (or replace) a strategy: plug-ins from outside the library register here.
void register_strategy(std::string name, std::function<std::unique_ptr<Strategy>()> factory);

/// The winner rule both built-in strategies share: among passed, timed candidates of the highest
/// rung reached, the lowest median. Comparing only within one rung keeps a lucky 3-repeat median
/// from beating a 27-repeat one (the minimum of noisy estimates is biased low). Halving times a
/// rung in the previous rung's rank order, so a budget cut mid-rung still leaves the leaders in it.
std::optional<std::size_t> pick_winner(const std::vector<CandidateResult>& results);

}  // namespace flashbias::tuner
