#include "tuner/tune_request.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <fstream>

#include "flashbias/flashbias.hpp"
#include "tuner/strategy.h"

namespace flashbias::tuner {

std::vector<NamedProblem> read_problem_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    throw Error(ErrorCode::invalid_argument, fmt::format("--file {}: cannot be opened for reading", path.string()));
  }
  std::vector<NamedProblem> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (const std::size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    const std::size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;
    const std::size_t last = line.find_last_not_of(" \t\r");
    const std::string text = line.substr(first, last - first + 1);
    try {
      out.push_back(NamedProblem{fmt::format("{}:{}", path.filename().string(), n), parse_problem(text), text});
    } catch (const Error& e) {
      throw Error(ErrorCode::invalid_argument, fmt::format("--file {} line {}: {}", path.string(), n, e.what()));
    }
  }
  if (out.empty())
    throw Error(ErrorCode::invalid_argument, fmt::format("--file {}: no problem strings in it", path.string()));
  return out;
}

TuneRequest resolve_tune_args(const TuneArgs& args) {
  const int sources = int(!args.problems.empty()) + int(!args.preset.empty()) + int(!args.file.empty());
  if (sources != 1) {
    throw Error(ErrorCode::invalid_argument,
                sources == 0 ? "say what to tune: --problem \"...\" (repeatable), --preset bench|demo|<name>, or "
                               "--file problems.txt"
                             : "--problem, --preset and --file are alternatives: give one of them");
  }
  TuneRequest r;
  for (std::size_t i = 0; i < args.problems.size(); ++i) {
    try {
      const ProblemSpec spec = parse_problem(args.problems[i]);
      r.problems.push_back(NamedProblem{to_string(spec), spec, args.problems[i]});
    } catch (const Error& e) {
      throw Error(ErrorCode::invalid_argument, fmt::format("--problem #{} '{}': {}", i + 1, args.problems[i], e.what()));
    }
  }
  if (!args.preset.empty()) {
    if (args.preset == "bench") {
      r.problems = bench_presets();
    } else if (args.preset == "demo") {
      r.problems = demo_presets();
    } else if (const NamedProblem* p = find_preset(bench_presets(), args.preset)) {
      r.problems.push_back(*p);
    } else {
      std::vector<std::string> names{"bench", "demo"};
      for (const NamedProblem& p : bench_presets()) names.push_back(p.name);
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("--preset '{}' is unknown: use one of {}", args.preset, fmt::join(names, ", ")));
    }
  }
  if (!args.file.empty()) r.problems = read_problem_file(args.file);

  r.strategy = args.strategy;
  auto strategy = make_strategy(args.strategy);  // names the registered ones if unknown
  for (const std::string& item : args.strategy_options)
    for (auto& [name, value] : parse_option_list(item)) {
      if (!r.strategy_options.emplace(name, value).second)
        throw Error(ErrorCode::invalid_argument, fmt::format("--strategy-option '{}' is given twice", name));
    }
  if (args.budget) {
    if (r.strategy_options.count("budget")) {
      throw Error(ErrorCode::invalid_argument,
                  "the budget is given twice: as --budget and as --strategy-option budget=...; keep one");
    }
    if (!std::isfinite(*args.budget) || *args.budget < 0 || *args.budget > 86400) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("--budget {} is outside [0, 86400] seconds (0 = unlimited)", *args.budget));
    }
    r.strategy_options["budget"] = fmt::format("{}", *args.budget);
  } else if (!r.strategy_options.count("budget")) {
    r.strategy_options["budget"] = fmt::format("{}", kDefaultBudgetSeconds);
  }
  // Every option, budget included, checked against the strategy's declared table now.
  r.budget_seconds = resolve_options(*strategy, r.strategy_options).number("budget");
  return r;
}

}  // namespace flashbias::tuner
