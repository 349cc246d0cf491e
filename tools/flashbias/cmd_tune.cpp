// `flashbias tune`: tune problems on the GPU, store every candidate and the winners, print a table.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cache/json.h"
#include "cache/store.h"
#include "commands.h"
#include "runtime/device.h"
#include "tuner/default_hooks.h"
#include "tuner/harness.h"
#include "tuner/store_records.h"
#include "tuner/tune.h"
#include "tuner/tune_request.h"

namespace flashbias::cli {

namespace {

struct TuneCliOptions {
  tuner::TuneArgs args;
  double budget = tuner::kDefaultBudgetSeconds;
  int device = 0;
  bool json = false;
  bool backward = false;
  bool portable = false;
  long long check_rows = 96;
};

std::string clock_text(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) : fmt::format("{}:{:02}", s / 60, s % 60);
}

// One line on stderr, rewritten in place on a terminal; elsewhere (CI logs) a line per 10 % or
// per 10 seconds, so a long run shows life without flooding the log.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label) : label_(std::move(label)) {
    tty_ = ::isatty(STDERR_FILENO) != 0;
  }
  void operator()(const tuner::Progress& p) {
    const double frac = p.total ? double(p.done) / double(p.total) : 0.0;
    const auto now = std::chrono::steady_clock::now();
    if (!tty_) {
      const int decile = int(frac * 10);
      if (p.done != p.total && decile == last_decile_ && now - last_print_ < std::chrono::seconds(10)) return;
      last_decile_ = decile;
    }
    last_print_ = now;
    constexpr int kWidth = 24;
    const int filled = int(frac * kWidth);
    std::string best = "-";
    if (p.best && p.best_ms) best = fmt::format("{} {:.4f} ms", p.best_name, *p.best_ms);
    const std::string line =
        fmt::format("{} [{}{}] {}/{} {:<12} {} ETA {}  best {}", label_, std::string(std::size_t(filled), '#'),
                    std::string(std::size_t(kWidth - filled), '.'), p.done, p.total, p.phase,
                    clock_text(p.elapsed_seconds), p.eta_seconds ? clock_text(*p.eta_seconds) : "?", best);
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", line.c_str());
      if (p.done == p.total) std::fputc('\n', stderr);
    } else {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    std::fflush(stderr);
  }

 private:
  std::string label_;
  bool tty_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point last_print_{};
};

nlohmann::json report_json(const NamedProblem& p, const tuner::TuneReport& r) {
  nlohmann::json j;
  j["name"] = p.name;
  j["problem"] = to_string(r.problem);
  j["key"] = r.key.str();
  j["bucket"] = r.bucket.str();
  j["device"] = r.device;
  j["winner"] = r.winner ? nlohmann::json(r.winner->str()) : nlohmann::json();
  j["winner_ms"] = r.winner_ms ? nlohmann::json(*r.winner_ms) : nlohmann::json();
  j["heuristic"] = r.heuristic.str();
  j["heuristic_ms"] = r.heuristic_ms ? nlohmann::json(*r.heuristic_ms) : nlohmann::json();
  j["heuristic_note"] = r.heuristic_note;
  j["speedup"] = r.speedup() ? nlohmann::json(*r.speedup()) : nlohmann::json();
  j["counts"] = {{"passed", r.counts.passed},
                 {"incorrect", r.counts.incorrect},
                 {"compile_failed", r.counts.compile_failed},
                 {"launch_failed", r.counts.launch_failed},
                 {"not_supported", r.counts.not_supported},
                 {"skipped", r.counts.skipped}};
  j["budget_exhausted"] = r.budget_exhausted;
  j["heuristic_won"] = r.heuristic_won;
  j["stored"] = r.stored;
  j["store_warning"] = r.store_warning;
  j["seconds"] = r.seconds;
  j["run"] = r.run;
  return j;
}

void print_table(const std::vector<std::pair<NamedProblem, tuner::TuneReport>>& results) {
  fmt::print("{:<26} {:<22} {:<22} {:>10} {:<22} {:>10} {:>8}  {:<34} {:>7}\n", "problem", "bucket", "winner",
             "ms", "heuristic", "ms", "speed-up", "pass/incorr/cfail/lfail/unsup/skip", "tune s");
  for (const auto& [p, r] : results) {
    const auto& c = r.counts;
    fmt::print("{:<26} {:<22} {:<22} {:>10} {:<22} {:>10} {:>8}  {:<34} {:>7.1f}{}\n", p.name.substr(0, 26),
               r.bucket.str(), r.winner ? r.winner->str() : "(none passed)",
               r.winner_ms ? fmt::format("{:.4f}", *r.winner_ms) : "-", r.heuristic.str(),
               r.heuristic_ms ? fmt::format("{:.4f}", *r.heuristic_ms) : "-",
               r.speedup() ? fmt::format("{:.2f}x", *r.speedup()) : "-",
               fmt::format("{}/{}/{}/{}/{}/{}", c.passed, c.incorrect, c.compile_failed, c.launch_failed,
                           c.not_supported, c.skipped),
               r.seconds, r.budget_exhausted ? "  (budget)" : "");
    if (r.heuristic_won) fmt::print("    the heuristic's tile was fastest side by side: stored as the winner\n");
    if (!r.heuristic_ms && !r.heuristic_note.empty()) fmt::print("    heuristic: {}\n", r.heuristic_note);
    if (!r.stored) fmt::print("    not stored: {}\n", r.store_warning.empty() ? "no store" : r.store_warning);
    for (const cache::TuningCandidate& cand : r.run.candidates)
      if (cand.outcome == cache::Outcome::incorrect || cand.outcome == cache::Outcome::launch_failed ||
          cand.outcome == cache::Outcome::compile_failed)
        fmt::print("    {} {}: {}\n", cache::to_string(cand.outcome), cand.tile, cand.reason.substr(0, 200));
  }
}

}  // namespace

void add_tune(CLI::App& app, int& rc) {
  auto o = std::make_shared<TuneCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tune", "Tune problems on the GPU: every candidate compiled, checked against the fp64 reference on two input "
              "sets, timed; all outcomes and the winner stored in the kernel cache for this device");
  cmd->add_option("--problem,-p", o->args.problems, "problem string, e.g. \"b=2,h=16,n=4096,d=128,r=16\" (repeatable)");
  cmd->add_option("--preset", o->args.preset, "bench | demo | one bench case's name (llm_d128, ...)");
  cmd->add_option("--file", o->args.file, "file with one problem string per line ('#' comments)");
  cmd->add_option("--strategy", o->args.strategy, "search strategy: exhaustive | halving")->capture_default_str();
  cmd->add_option("--strategy-option", o->args.strategy_options,
                  "strategy option name=value (repeatable): exhaustive: repeats; halving: eta, min_repeats, "
                  "max_repeats");
  auto* budget = cmd->add_option("--budget", o->budget,
                                 "seconds per key, compilation included (0 = unlimited); candidates are compiled "
                                 "nearest the heuristic's tile first, so a short budget covers the tiles around it")
                     ->capture_default_str();
  cmd->add_option("--device", o->device, "CUDA device ordinal")->capture_default_str();
  cmd->add_option("--check-rows", o->check_rows, "query rows compared with the reference per check (sampled)")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the reports (every candidate) as JSON on stdout");
  cmd->add_flag("--portable", o->portable,
                "tune the portable sm80 kernel family even on sm_90a (its keys name sm_90, and a context with "
                "ContextOptions::portable, or check --portable, finds the winners)");
  cmd->add_flag("--backward", o->backward,
                "tune the backward kernels of each problem instead (checked on small problems of the same key: all "
                "five gradients against fp64; timed on the problem's own shape)");
  cmd->callback([o, budget, &rc] {
    o->args.budget = budget->count() ? std::optional<double>(o->budget) : std::nullopt;
    // Everything that can be wrong with the request fails here, before any GPU work.
    const tuner::TuneRequest req = tuner::resolve_tune_args(o->args);
    // Zero rows would compare nothing, so every candidate would pass its check.
    if (o->check_rows < 1)
      throw Error(ErrorCode::invalid_argument, fmt::format("--check-rows {} must be at least 1", o->check_rows));
    DeviceInfo device = query_device(o->device);
    if (o->portable) device.arch.a = false;  // as ContextOptions::portable does
    activate_primary_context(o->device);
    std::shared_ptr<cache::Store> store = tuner::default_store();
    if (!store) std::fprintf(stderr, "flashbias: warning: FLASHBIAS_CACHE=off: tuning results will not be stored\n");

    tuner::TuneOptions options;
    options.strategy = req.strategy;
    options.strategy_options = req.strategy_options;
    options.source.check_rows = o->check_rows;
    options.source.direction = o->backward ? Direction::bwd : Direction::fwd;
    std::vector<std::pair<NamedProblem, tuner::TuneReport>> results;
    int n = 0;
    for (const NamedProblem& p : req.problems) {
      ++n;
      ProgressBar bar(fmt::format("[{}/{}] {}", n, req.problems.size(), p.name));
      tuner::TuneReport r = tuner::tune(p.spec, device, store.get(), options, [&](const tuner::Progress& pr) { bar(pr); });
      results.emplace_back(p, std::move(r));
    }
    if (o->json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& [p, r] : results) j.push_back(report_json(p, r));
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("device: {} | strategy {} | budget {} s per key | store {}\n", tuner::fingerprint(device).str(),
                 req.strategy, req.budget_seconds, store ? store->path() : "off");
      print_table(results);
    }
    bool all_won = true;
    for (const auto& [p, r] : results) all_won = all_won && r.winner.has_value();
    rc = all_won ? 0 : 1;
  });
}

}  // namespace flashbias::cli
