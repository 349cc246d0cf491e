#include "tuner/strategy.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <mutex>
#include <numeric>

#include "flashbias/flashbias.hpp"

namespace flashbias::tuner {

double StrategyOptions::number(std::string_view name) const {
  auto it = values_.find(std::string(name));
  if (it == values_.end())
    throw Error(ErrorCode::internal, fmt::format("strategy option '{}' was not declared in its options table", name));
  return it->second;
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

StrategyOptions resolve_options(const Strategy& strategy, const std::map<std::string, std::string>& given) {
  std::map<std::string, double> values;
  for (const OptionSpec& o : strategy.options()) values[o.name] = o.default_value;
  for (const auto& [name, text] : given) {
    const auto& table = strategy.options();
    auto spec = std::find_if(table.begin(), table.end(), [&](const OptionSpec& o) { return o.name == name; });
    if (spec == table.end()) {
      std::vector<std::string> known;
      for (const OptionSpec& o : table) known.push_back(o.name);
      throw Error(ErrorCode::invalid_argument, fmt::format("strategy '{}' has no option '{}'; its options are: {}",
                                                           strategy.name(), name, fmt::join(known, ", ")));
    }
    const std::string_view t = trim(text);
    double v = 0;
    auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc{} || ptr != t.data() + t.size() || !std::isfinite(v)) {
      throw Error(ErrorCode::invalid_argument, fmt::format("strategy '{}' option '{}' = '{}' is not a number ({})",
                                                           strategy.name(), name, text, spec->help));
    }
    if (spec->integer && v != std::floor(v)) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("strategy '{}' option '{}' = {} must be a whole number", strategy.name(), name, text));
    }
    if (v < spec->min || v > spec->max) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("strategy '{}' option '{}' = {} is outside [{}, {}] ({})", strategy.name(), name, text,
                              spec->min, spec->max, spec->help));
    }
    values[name] = v;
  }
  return StrategyOptions(std::move(values));
}

std::map<std::string, std::string> parse_option_list(std::string_view text) {
  std::map<std::string, std::string> out;
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    const std::string_view item = trim(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    if (item.empty()) continue;
    const std::size_t eq = item.find('=');
    if (eq == std::string_view::npos || trim(item.substr(0, eq)).empty()) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("strategy option '{}' is not of the form name=value (e.g. eta=3)", item));
    }
    const std::string name(trim(item.substr(0, eq)));
    if (!out.emplace(name, std::string(trim(item.substr(eq + 1)))).second)
      throw Error(ErrorCode::invalid_argument, fmt::format("strategy option '{}' is given twice", name));
  }
  return out;
}

std::optional<std::size_t> pick_winner(const std::vector<CandidateResult>& results) {
  std::optional<std::size_t> best;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const CandidateResult& r = results[i];
    if (!r.verdict || r.verdict->outcome != Outcome::passed || !r.timing) continue;
    if (!best) {
      best = i;
      continue;
    }
    const CandidateResult& b = results[*best];
    if (r.rung > b.rung || (r.rung == b.rung && r.timing->median_ms < b.timing->median_ms)) best = i;
  }
  return best;
}

namespace {

OptionSpec passes_option(double default_passes) {
  return {"passes", "interleaved passes a rung's repeats are split into (evens out clock drift)", default_passes, 1,
          100, true};
}

OptionSpec budget_option() {
  return {"budget", "wall-clock seconds for the whole run, compilation included; 0 = unlimited", 0, 0, 86400, false};
}

// Bookkeeping both strategies share: results, progress, and the budget rule. The budget is
// checked before each step against the step's expected cost (the mean of the same kind of step so
// far), so a run stops before a step that would overshoot, not after.
class Run {
 public:
  Run(MeasurementSource& source, double budget, const ProgressFn& progress)
      : source_(source), budget_(budget), progress_(progress) {
    result_.candidates.resize(source.size());
  }

  StrategyResult& result() { return result_; }
  std::size_t total() const { return total_; }
  void set_total(std::size_t total) { total_ = std::max(total, done_); }

  /// False (and the run marked budget-exhausted) if preparing `units` more candidates would not
  /// fit, keeping back what timing every candidate passed so far, and these `units` as well, once
  /// with `first_repeats` runs would cost (the source's estimate, averaged over `passed`): a space
  /// larger than the budget can compile then still gets its compiled candidates timed, instead
  /// of compiling until the budget is gone. The first batch always runs: without compiling
  /// nothing can be tuned.
  bool prepare_fits(std::size_t units, const std::vector<std::size_t>& passed, int first_repeats) {
    const double expected =
        prepare_cost_.count ? prepare_cost_.seconds / double(prepare_cost_.count) * double(units) : 0.0;
    double per_candidate = 0;
    std::size_t estimated = 0;
    for (std::size_t i : passed)
      if (auto e = source_.estimate_seconds(i, first_repeats)) {
        per_candidate += *e;
        ++estimated;
      }
    const double reserve =
        estimated ? per_candidate / double(estimated) * double(passed.size() + units) : 0.0;
    return within(expected + reserve);
  }

  /// The same for timing candidate `i` with `repeats` runs: the source's estimate when it has one,
  /// else the mean cost per run of the timings so far. A false also ends the timing (timing_cut):
  /// a budget that stopped the compiling does not, so that what was compiled is still timed.
  bool time_fits(std::size_t i, int repeats) {
    double expected = 0;
    if (auto e = source_.estimate_seconds(i, repeats)) expected = *e;
    else if (time_cost_.count) expected = time_cost_.seconds / double(time_cost_.count) * double(repeats);
    if (within(expected)) return true;
    timing_cut_ = true;
    return false;
  }
  bool timing_cut() const { return timing_cut_; }
  /// Prepare `batch`, recording verdicts. Returns the indices that passed.
  std::vector<std::size_t> prepare(const std::vector<std::size_t>& batch) {
    const double t0 = source_.elapsed_seconds();
    std::vector<Verdict> verdicts = source_.prepare(batch);
    if (verdicts.size() != batch.size()) {
      throw Error(ErrorCode::internal, fmt::format("measurement source returned {} verdicts for {} candidates",
                                                   verdicts.size(), batch.size()));
    }
    prepare_cost_.add(source_.elapsed_seconds() - t0, batch.size());
    std::vector<std::size_t> passed;
    for (std::size_t j = 0; j < batch.size(); ++j) {
      if (verdicts[j].outcome == Outcome::passed) passed.push_back(batch[j]);
      result_.candidates[batch[j]].verdict = std::move(verdicts[j]);
    }
    done_ += batch.size();
    report("compile+check");
    return passed;
  }

  /// Time `ids` with `repeats` runs each, split into `passes` interleaved passes (A, B, C, A, B,
  /// C, ...): a slow drift of the GPU clock (heat, power limit; 3-4 % between back-to-back
  /// timings of one kernel on an H100) then lands on every candidate alike instead of on whichever
  /// was timed last. A candidate's timing is the median of its pass medians, min of mins, max of
  /// maxes. A run-time failure turns its verdict into launch_failed (it can no longer win) instead
  /// of aborting the run. Returns (median, id) of every candidate timed, in `ids` order.
  std::vector<std::pair<double, std::size_t>> time_rung(const std::vector<std::size_t>& ids, int repeats, int passes,
                                                        int rung) {
    passes = std::clamp(passes, 1, repeats);
    std::vector<std::vector<Timing>> got(ids.size());
    std::vector<bool> failed(ids.size(), false);
    for (int p = 0; p < passes && !timing_cut_; ++p) {
      const int r = repeats / passes + (p < repeats % passes ? 1 : 0);
      for (std::size_t j = 0; j < ids.size(); ++j) {
        if (failed[j]) continue;
        if (!time_fits(ids[j], r)) break;
        if (auto t = measure(ids[j], r, passes > 1 ? fmt::format("time x{} ({}/{})", repeats, p + 1, passes)
                                                   : fmt::format("time x{}", repeats))) {
          got[j].push_back(*t);
          note_best(ids[j], t->median_ms, rung);  // provisional, for the progress line
        } else {
          failed[j] = true;
        }
      }
    }
    std::vector<std::pair<double, std::size_t>> out;
    for (std::size_t j = 0; j < ids.size(); ++j) {
      if (failed[j] || got[j].empty()) continue;
      std::vector<double> medians;
      Timing m{0, got[j].front().min_ms, got[j].front().max_ms, 0};
      for (const Timing& t : got[j]) {
        medians.push_back(t.median_ms);
        m.min_ms = std::min(m.min_ms, t.min_ms);
        m.max_ms = std::max(m.max_ms, t.max_ms);
        m.repeats += t.repeats;
      }
      std::sort(medians.begin(), medians.end());
      const std::size_t h = medians.size() / 2;
      m.median_ms = medians.size() % 2 ? medians[h] : 0.5 * (medians[h - 1] + medians[h]);
      CandidateResult& c = result_.candidates[ids[j]];
      c.timing = m;
      c.rung = rung;
      note_best(ids[j], m.median_ms, rung);
      out.emplace_back(m.median_ms, ids[j]);
    }
    return out;
  }

  StrategyResult finish() {
    result_.winner = pick_winner(result_.candidates);
    if (result_.winner) {  // the final line shows the winner, not a provisional pass leader
      best_ = result_.winner;
      best_ms_ = result_.candidates[*result_.winner].timing->median_ms;
    }
    total_ = done_;
    report("done");
    return std::move(result_);
  }

 private:
  std::optional<Timing> measure(std::size_t i, int repeats, const std::string& phase) {
    const double t0 = source_.elapsed_seconds();
    std::optional<Timing> t;
    try {
      t = source_.time(i, repeats);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::launch_failed && e.code() != ErrorCode::driver_error) throw;
      CandidateResult& r = result_.candidates[i];
      r.verdict->outcome = Outcome::launch_failed;
      r.verdict->reason = fmt::format("failed while timing: {}", e.what());
      r.timing.reset();
    }
    time_cost_.add(source_.elapsed_seconds() - t0, std::size_t(repeats));
    ++result_.measurements;
    ++done_;
    report(phase);
    return t;
  }

  void note_best(std::size_t i, double ms, int rung) {
    if (!best_ || best_rung_ < rung || (best_rung_ == rung && ms < best_ms_)) {
      best_ = i;
      best_ms_ = ms;
      best_rung_ = rung;
    }
  }

  bool within(double expected) {
    if (budget_ <= 0 || source_.elapsed_seconds() + expected <= budget_) return true;
    result_.budget_exhausted = true;
    return false;
  }

  struct Cost {
    double seconds = 0;
    std::size_t count = 0;
    void add(double s, std::size_t n) {
      seconds += s;
      count += n;
    }
  };

  void report(const std::string& phase) {
    if (!progress_) return;
    Progress p;
    p.done = done_;
    p.total = std::max(total_, done_);
    p.elapsed_seconds = source_.elapsed_seconds();
    if (done_ > 0 && p.total > done_) {
      double eta = p.elapsed_seconds / double(done_) * double(p.total - done_);
      if (budget_ > 0) eta = std::min(eta, std::max(0.0, budget_ - p.elapsed_seconds));
      p.eta_seconds = eta;
    } else if (p.total == done_) {
      p.eta_seconds = 0;
    }
    if (best_) {
      p.best = best_;
      p.best_ms = best_ms_;
      p.best_name = source_.name(*best_);
    }
    p.phase = phase;
    progress_(p);
  }

  MeasurementSource& source_;
  double budget_;
  const ProgressFn& progress_;
  StrategyResult result_;
  std::size_t done_ = 0, total_ = 0;
  bool timing_cut_ = false;
  Cost prepare_cost_, time_cost_;
  std::optional<std::size_t> best_;
  double best_ms_ = 0;
  int best_rung_ = -1;
};

/// Prepare every candidate in batches of the source's parallelism; returns the passed ones in
/// index order. Stops early (budget) with what it has, keeping enough to time those once with
/// `first_repeats` runs each (Run::prepare_fits).
std::vector<std::size_t> prepare_all(Run& run, MeasurementSource& source, int first_repeats) {
  const std::size_t n = source.size();
  const std::size_t batch = std::max<std::size_t>(1, source.parallelism());
  std::vector<std::size_t> passed;
  for (std::size_t begin = 0; begin < n; begin += batch) {
    const std::size_t end = std::min(n, begin + batch);
    if (!run.prepare_fits(end - begin, passed, first_repeats)) break;
    std::vector<std::size_t> idx(end - begin);
    std::iota(idx.begin(), idx.end(), begin);
    for (std::size_t i : run.prepare(idx)) passed.push_back(i);
  }
  return passed;
}

class Exhaustive final : public Strategy {
 public:
  std::string_view name() const override { return "exhaustive"; }
  std::string_view description() const override {
    return "compile and check every candidate, time every passed one with the same number of repeats";
  }
  const std::vector<OptionSpec>& options() const override {
    static const std::vector<OptionSpec> table{
        {"repeats", "timed runs per candidate (median and spread are taken over them)", 20, 1, 10000, true},
        passes_option(2),
        budget_option(),
    };
    return table;
  }
  StrategyResult run(MeasurementSource& source, const StrategyOptions& options,
                     const ProgressFn& progress) const override {
    Run run(source, options.number("budget"), progress);
    const std::size_t n = source.size();
    run.set_total(2 * n);  // prepare n + time up to n; refined once verdicts are known
    const int repeats = options.integer("repeats");
    const std::vector<std::size_t> passed = prepare_all(run, source, repeats);
    const int passes = std::min(options.integer("passes"), repeats);
    run.set_total(n + passed.size() * std::size_t(passes));
    run.time_rung(passed, repeats, passes, 0);
    return run.finish();
  }
};

class Halving final : public Strategy {
 public:
  std::string_view name() const override { return "halving"; }
  std::string_view description() const override {
    return "successive halving over repeats: time all passed candidates briefly, keep the best 1/eta, "
           "time them eta times longer, until one is left";
  }
  const std::vector<OptionSpec>& options() const override {
    static const std::vector<OptionSpec> table{
        {"eta", "keep the best 1/eta of each rung; repeats grow eta-fold per rung", 3, 2, 16, true},
        {"min_repeats", "timed runs per candidate in the first rung", 3, 1, 1000, true},
        {"max_repeats", "timed runs per candidate in the last rung", 27, 1, 10000, true},
        passes_option(3),
        budget_option(),
    };
    return table;
  }
  StrategyResult run(MeasurementSource& source, const StrategyOptions& options,
                     const ProgressFn& progress) const override {
    const int eta = options.integer("eta");
    const int min_repeats = options.integer("min_repeats");
    const int max_repeats = options.integer("max_repeats");
    if (min_repeats > max_repeats) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("strategy 'halving': min_repeats = {} exceeds max_repeats = {}", min_repeats,
                              max_repeats));
    }
    const int passes = options.integer("passes");
    Run run(source, options.number("budget"), progress);
    const std::size_t n = source.size();
    run.set_total(n + planned_timings(n, eta, min_repeats, max_repeats, passes));
    std::vector<std::size_t> survivors = prepare_all(run, source, min_repeats);
    run.set_total(n + planned_timings(survivors.size(), eta, min_repeats, max_repeats, passes));

    int repeats = min_repeats;
    for (int rung = 0; !survivors.empty(); ++rung) {
      std::vector<std::pair<double, std::size_t>> timed = run.time_rung(survivors, repeats, passes, rung);
      if (run.timing_cut() || timed.size() <= 1 || repeats >= max_repeats) break;
      std::sort(timed.begin(), timed.end());
      const std::size_t keep = (timed.size() + std::size_t(eta) - 1) / std::size_t(eta);
      survivors.clear();
      for (std::size_t j = 0; j < keep; ++j) survivors.push_back(timed[j].second);  // rank order
      if (survivors.size() <= 1) break;  // its rung time is already the most precise we need
      repeats = std::min(max_repeats, repeats * eta);
    }
    return run.finish();
  }

 private:
  // Timings the plan makes for `m` passed candidates, to size the progress bar.
  static std::size_t planned_timings(std::size_t m, int eta, int repeats, int max_repeats, int passes) {
    std::size_t total = 0;
    while (m > 0) {
      total += m * std::size_t(std::clamp(passes, 1, repeats));
      if (m <= 1 || repeats >= max_repeats) break;
      m = (m + std::size_t(eta) - 1) / std::size_t(eta);
      if (m <= 1) break;
      repeats = std::min(max_repeats, repeats * eta);
    }
    return total;
  }
};

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::function<std::unique_ptr<Strategy>()>, std::less<>> factories{
      {"exhaustive", [] { return std::unique_ptr<Strategy>(std::make_unique<Exhaustive>()); }},
      {"halving", [] { return std::unique_ptr<Strategy>(std::make_unique<Halving>()); }},
  };
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

std::unique_ptr<Strategy> make_strategy(std::string_view name) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  auto it = r.factories.find(name);
  if (it == r.factories.end()) {
    std::vector<std::string> names;
    for (const auto& [n, f] : r.factories) names.push_back(n);
    throw Error(ErrorCode::invalid_argument,
                fmt::format("unknown tuning strategy '{}': use one of {}", name, fmt::join(names, ", ")));
  }
  return it->second();
}

std::vector<std::string> strategy_names() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [n, f] : r.factories) names.push_back(n);
  return names;
}

void register_strategy(std::string name, std::function<std::unique_ptr<Strategy>()> factory) {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  r.factories[std::move(name)] = std::move(factory);
}

}  // namespace flashbias::tuner
