// `flashbias bench-runtime`: the tuning and runtime-overhead benchmark of issue 3, in one call on a
// GPU machine. Per case: tuned vs heuristic time and tuning time (optionally halving vs
// exhaustive); then the first forward of a fresh process from the warm cache (a child process
// of this binary, so nothing is warm but the store), and the host cost of a hot forward() call.
// Prints a markdown report (date, GPU, driver) to stdout and to --out.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cache/store.h"
#include "commands.h"
#include "runtime/context_impl.h"
#include "runtime/device.h"
#include "runtime/driver_api.h"
#include "runtime/launch_plan.h"
#include "runtime/validate.h"
#include "tuner/default_hooks.h"
#include "tuner/harness.h"
#include "tuner/store_records.h"
#include "tuner/tune.h"
#include "tuner/tune_request.h"

namespace flashbias::cli {

namespace {

struct BenchOptions {
  tuner::TuneArgs args;
  double budget = tuner::kDefaultBudgetSeconds;
  bool compare_exhaustive = false;
  bool skip_tune = false;
  std::string overhead_problem = "b=1,h=1,n=128,d=64,r=8";
  int calls = 20000;
  int device = 0;
  std::string out;
  std::string probe;  // hidden: run the first-call probe for this problem and print JSON
};

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The child side of the first-call measurement. Device buffers and the driver are set up first
// (any CUDA program has them before its first attention call); the clock covers Context creation
// (store open), the dispatch miss (stored winner, stored cubin, module load) and the kernel.
nlohmann::json first_call_probe(const std::string& problem, int device) {
  const ProblemSpec spec = parse_problem(problem);
  activate_primary_context(device);
  DeviceProblem p(spec, 1);
  const ForwardArgs args = p.forward_args();
  const auto t0 = std::chrono::steady_clock::now();
  ContextOptions co;
  co.device = device;
  Context ctx(co);
  const double context_ms = ms_since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  ctx.forward(args, nullptr);
  const double forward_ms = ms_since(t1);
  driver::check(driver::api().cuCtxSynchronize(), "cuCtxSynchronize");
  const double total_ms = ms_since(t0);
  const ContextStats s = ctx.impl().stats();
  return {{"problem", problem},       {"context_ms", context_ms},   {"first_forward_ms", forward_ms},
          {"total_ms", total_ms},     {"compiles", s.compiles},     {"store_hits", s.store_hits},
          {"tiles_stored", s.tiles_stored}, {"tiles_heuristic", s.tiles_heuristic}};
}

nlohmann::json run_probe_child(const std::string& problem, int device) {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) throw Error(ErrorCode::internal, "cannot find this executable (/proc/self/exe) to start the probe");
  exe[n] = '\0';
  // Problem strings are [a-z0-9=,.]: safe inside single quotes.
  const std::string cmd = fmt::format("'{}' bench-runtime --probe '{}' --device {}", exe, problem, device);
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) throw Error(ErrorCode::internal, fmt::format("cannot start `{}`", cmd));
  std::string out;
  std::array<char, 4096> buf{};
  while (std::size_t got = std::fread(buf.data(), 1, buf.size(), f)) out.append(buf.data(), got);
  const int status = ::pclose(f);
  if (status != 0) throw Error(ErrorCode::internal, fmt::format("`{}` failed (status {}): {}", cmd, status, out));
  return nlohmann::json::parse(out);
}

struct Overhead {
  double median_us = 0, min_us = 0;
};

enum class HotPath {
  forward,        // Context::forward: validation, pointer checks (optional), dispatch, launch
  launch_only,    // LaunchPlan::launch_forward on the same plan: params, grid, cuLaunchKernel
};

// Host cost of forward() on a warm dispatch map: batches of calls timed on the CPU, with the GPU
// drained (untimed) between batches so that a full launch queue never blocks a timed call.
Overhead hot_overhead(const std::string& problem, int device, int calls, bool check_pointers, HotPath path) {
  const ProblemSpec spec = parse_problem(problem);
  DeviceProblem p(spec, 2);
  const ForwardArgs args = p.forward_args();
  ContextOptions co;
  co.device = device;
  co.check_pointers = check_pointers;
  Context ctx(co);
  ctx.forward(args, nullptr);
  const driver::Api& d = driver::api();
  driver::check(d.cuCtxSynchronize(), "cuCtxSynchronize");
  // The plan the dispatcher chose, for the launch-only floor (what the driver itself costs).
  ContextImpl& impl = ctx.impl();
  const ProblemKey key = validate_forward(args, impl.device());
  const LaunchPlan& plan =
      impl.plan(KernelSpec{key, impl.choose_tile(key, ShapeInfo{args.batch * args.heads, args.seqlen_q, args.seqlen_k})});
  constexpr int kBatch = 100;  // well under the launch queue's depth
  std::vector<double> per_call;
  for (int done = 0; done < calls; done += kBatch) {
    const auto t0 = std::chrono::steady_clock::now();
    if (path == HotPath::forward)
      for (int i = 0; i < kBatch; ++i) ctx.forward(args, nullptr);
    else
      for (int i = 0; i < kBatch; ++i) plan.launch_forward(args, nullptr);
    per_call.push_back(ms_since(t0) * 1000.0 / kBatch);
    driver::check(d.cuCtxSynchronize(), "cuCtxSynchronize");
  }
  std::sort(per_call.begin(), per_call.end());
  return Overhead{per_call[per_call.size() / 2], per_call.front()};
}

std::string today() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", &tm);
  return buf;
}

}  // namespace

void add_bench_runtime(CLI::App& app, int& rc) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench-runtime", "Benchmark tuning and the runtime: tuned vs heuristic per case, tuning time per key, first call "
                       "of a fresh process from the warm cache, host overhead of a hot forward (markdown report)");
  cmd->add_option("--problem,-p", o->args.problems, "problem string (repeatable)");
  cmd->add_option("--preset", o->args.preset, "bench | demo | one bench case (default: bench)");
  cmd->add_option("--file", o->args.file, "file with one problem string per line");
  cmd->add_option("--strategy", o->args.strategy, "strategy for the tuned column")->capture_default_str();
  cmd->add_option("--budget", o->budget, "tuning seconds per key")->capture_default_str();
  cmd->add_flag("--compare-exhaustive", o->compare_exhaustive,
                "also tune each key exhaustively (no budget) and report the strategy's winner against it");
  cmd->add_flag("--skip-tune", o->skip_tune, "measure only the first call and the overhead (cache already warm)");
  cmd->add_option("--overhead-problem", o->overhead_problem, "tiny problem for the hot-call overhead")
      ->capture_default_str();
  cmd->add_option("--calls", o->calls, "forward() calls timed for the overhead")->capture_default_str();
  cmd->add_option("--device", o->device, "CUDA device ordinal")->capture_default_str();
  cmd->add_option("--out", o->out, "also write the markdown report to this file");
  cmd->add_option("--probe", o->probe, "internal: first-call probe of one problem (prints JSON)")->group("");
  cmd->callback([o, &rc] {
    if (!o->probe.empty()) {
      fmt::print("{}\n", first_call_probe(o->probe, o->device).dump());
      rc = 0;
      return;
    }
    if (o->args.problems.empty() && o->args.file.empty() && o->args.preset.empty()) o->args.preset = "bench";
    o->args.budget = o->budget;
    const tuner::TuneRequest req = tuner::resolve_tune_args(o->args);
    if (o->calls < 100 || o->calls > 10'000'000)
      throw Error(ErrorCode::invalid_argument, fmt::format("--calls {} is outside [100, 10000000]", o->calls));
    // Read before the GPU work, which takes minutes: a bad problem string or an --out that cannot
    // be written would otherwise surface only at the end, with the report lost.
    try {
      parse_problem(o->overhead_problem);
    } catch (const Error& e) {
      throw Error(e.code(), fmt::format("--overhead-problem '{}': {}", o->overhead_problem, e.what()));
    }
    if (!o->out.empty()) require_writable_output("--out", o->out);
    const DeviceInfo device = query_device(o->device);
    activate_primary_context(o->device);
    std::shared_ptr<cache::Store> store = tuner::default_store();
    if (!store) throw Error(ErrorCode::invalid_argument, "bench-runtime measures the cache: unset FLASHBIAS_CACHE=off");

    std::string md = fmt::format("# Runtime and tuning benchmark\n\n{} | {} | {} SMs | driver {} | store {}\n\n",
                                 today(), device.name, device.sm_count, device.driver_version, store->path());
    auto progress_line = [](const std::string& what) {
      return [what](const tuner::Progress& p) {
        std::fprintf(stderr, "\r\033[K%s %zu/%zu %s best %s", what.c_str(), p.done, p.total, p.phase.c_str(),
                     p.best_name.empty() ? "-" : p.best_name.c_str());
        if (p.done == p.total) std::fputc('\n', stderr);
      };
    };

    if (!o->skip_tune) {
      md += fmt::format("## Tuned vs heuristic ({}, budget {} s per key)\n\n", req.strategy, req.budget_seconds);
      md += "| case | bucket | winner | ms | heuristic | ms | speed-up | tuning s | passed/total |";
      md += o->compare_exhaustive ? " exhaustive winner | exhaustive s | strategy vs exhaustive |\n" : "\n";
      md += o->compare_exhaustive ? "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
                                  : "|---|---|---|---|---|---|---|---|---|\n";
      for (const NamedProblem& p : req.problems) {
        tuner::TuneOptions t;
        t.strategy = req.strategy;
        t.strategy_options = req.strategy_options;
        const tuner::TuneReport r = tuner::tune(p.spec, device, store.get(), t, progress_line(p.name));
        auto ms = [](const std::optional<double>& v) { return v ? fmt::format("{:.4f}", *v) : std::string("-"); };
        md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {:.1f} | {}/{} |", p.name, r.bucket.str(),
                          r.winner ? r.winner->str() : "none", ms(r.winner_ms), r.heuristic.str(), ms(r.heuristic_ms),
                          r.speedup() ? fmt::format("{:.2f}x", *r.speedup()) : "-", r.seconds, r.counts.passed,
                          r.counts.total());
        if (o->compare_exhaustive) {
          tuner::TuneOptions e = t;
          e.strategy = "exhaustive";
          e.strategy_options = {{"budget", "0"}};
          e.compare_repeats = 0;
          const tuner::TuneReport x = tuner::tune(p.spec, device, nullptr, e, progress_line(p.name + " exhaustive"));
          // Both winners judged inside the exhaustive run: one set of conditions.
          std::optional<double> ours, best;
          for (const auto& c : x.run.candidates) {
            if (r.winner && c.tile == r.winner->str()) ours = c.median_ms;
            if (x.winner && c.tile == x.winner->str()) best = c.median_ms;
          }
          md += fmt::format(" {} | {:.1f} | {} |", x.winner ? x.winner->str() : "none", x.seconds,
                            ours && best ? fmt::format("{:+.1f} %", (*ours / *best - 1.0) * 100.0) : "-");
        }
        md += "\n";
      }
      md += "\n";
    }

    md += "## First call of a fresh process from the warm cache (target < 20 ms)\n\n";
    md += "| case | Context() ms | first forward ms (enqueue) | total ms incl. kernel | compiles | store hits | tile |\n";
    md += "|---|---|---|---|---|---|---|\n";
    for (const NamedProblem& p : req.problems) {
      {
        // Make sure the kernel this process would pick is in the store (compiled once if not).
        DeviceProblem warm(p.spec, 3);
        ContextOptions co;
        co.device = o->device;
        Context ctx(co);
        ctx.forward(warm.forward_args(), nullptr);
        driver::check(driver::api().cuCtxSynchronize(), "cuCtxSynchronize");
      }
      const nlohmann::json j = run_probe_child(to_string(p.spec), o->device);
      md += fmt::format("| {} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {} |\n", p.name, j["context_ms"].get<double>(),
                        j["first_forward_ms"].get<double>(), j["total_ms"].get<double>(), j["compiles"].get<int>(),
                        j["store_hits"].get<int>(),
                        j["tiles_stored"].get<int>() ? "stored winner" : "heuristic");
    }

    md += fmt::format("\n## Host overhead of a hot forward() (target < 5 us)\n\n{} , {} calls in batches of 100, GPU "
                      "drained between batches (untimed)\n\n| call | median us/call | best batch us/call |\n"
                      "|---|---|---|\n",
                      o->overhead_problem, o->calls);
    const struct {
      const char* name;
      bool check;
      HotPath path;
    } rows[] = {{"forward(), pointer checks on (default)", true, HotPath::forward},
                {"forward(), pointer checks off", false, HotPath::forward},
                {"LaunchPlan::launch_forward only (driver floor)", false, HotPath::launch_only}};
    for (const auto& row : rows) {
      const Overhead h = hot_overhead(o->overhead_problem, o->device, o->calls, row.check, row.path);
      md += fmt::format("| {} | {:.2f} | {:.2f} |\n", row.name, h.median_us, h.min_us);
    }
    fmt::print("{}", md);
    if (!o->out.empty()) {
      std::ofstream f(o->out);
      if (!f) throw Error(ErrorCode::invalid_argument, fmt::format("--out {}: cannot be written", o->out));
      f << md;
    }
    rc = 0;
  });
}

}  // namespace flashbias::cli
