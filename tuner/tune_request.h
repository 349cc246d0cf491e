// What `flashbias tune` was asked to do, checked before any GPU work: the problems (strings,
// a preset set, or a file), the strategy and its options, the budget. The CLI only moves its
// parsed flags into TuneArgs; everything that can be wrong is found and named here, so a typo in
// an option fails in milliseconds instead of after a minute of compiling.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "generator/problem_spec.h"

namespace flashbias::tuner {

/// The flags as given (empty / nullopt = not given).
struct TuneArgs {
  std::vector<std::string> problems;         ///< --problem (repeatable)
  std::string preset;                        ///< --preset: bench | demo | one preset's name
  std::string file;                          ///< --file: one problem string per line
  std::string strategy = "halving";          ///< --strategy
  std::vector<std::string> strategy_options; ///< --strategy-option name=value (repeatable, or comma lists)
  std::optional<double> budget;              ///< --budget SECONDS per key
};

struct TuneRequest {
  std::vector<NamedProblem> problems;
  std::string strategy;
  std::map<std::string, std::string> strategy_options;  ///< "budget" included
  double budget_seconds = 0;                            ///< 0 = unlimited
};

/// Default --budget: the target for a full key with the default strategy.
inline constexpr double kDefaultBudgetSeconds = 60;

/// Check and resolve. Throws Error(invalid_argument) naming the flag: none or several of
/// --problem/--preset/--file, an unknown preset (listing them), a bad problem string (with its
/// position), an unknown strategy or option, a budget out of [0, 86400], budget given both as
/// --budget and as a strategy option.
TuneRequest resolve_tune_args(const TuneArgs& args);

/// Problems from a file: one problem string per line; blank lines and '#' comments are skipped.
/// Names are "<file>:<line>". Throws Error(invalid_argument) naming the file and line.
std::vector<NamedProblem> read_problem_file(const std::filesystem::path& path);

}  // namespace flashbias::tuner
