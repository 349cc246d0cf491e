// `flashbias check --problem "..."`: run on the GPU and compare with the fp64 CPU reference.
#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "commands.h"
#include "generator/problem_spec.h"
#include "gpu_session.h"
#include "tuner/harness.h"
#include "generator/kernel_source.h"
#include "runtime/compiler.h"
#include "runtime/launch_plan.h"
#include "runtime/loaded_kernel.h"
#include "runtime/validate.h"
#include "tuner/gpu_source.h"

namespace flashbias::cli {

namespace {
struct CheckOptions {
  std::vector<std::string> problems;
  std::string config;
  std::uint64_t seed = 0;
  int device = 0;
  long long rows = 256;
  int repeat = 1;
  bool time = false;
  bool backward = false;
  bool time_only = false;
  bool portable = false;
  bool flush_l2 = false;
};

/// Median milliseconds of `launch` (spread: max - min). Back to back by default, so the inputs
/// stay in L2 from one run to the next; with a flush buffer, each run follows an overwrite of twice
/// the L2 (untimed), as the tuner and bench/peers.py (Triton's do_bench) time: every run then
/// reads its inputs from DRAM and writes back the flush's dirty lines as it evicts them.
class Timer {
 public:
  Timer(bool flush_l2, int device_ordinal) {
    if (flush_l2) flush_.emplace(device_ordinal);
  }
  double operator()(const std::function<void()>& launch, int warmup, int repeats, double* spread = nullptr) {
    if (!flush_) return time_ms(launch, nullptr, warmup, repeats, spread);
    const tuner::Timing t = tuner::time_each_ms(launch, nullptr, warmup, repeats, [&] { (*flush_)(); });
    if (spread) *spread = t.max_ms - t.min_ms;
    return t.median_ms;
  }

 private:
  std::optional<tuner::L2Flush> flush_;
};
}  // namespace

void add_check(CLI::App& app, int& rc) {
  auto o = std::make_shared<CheckOptions>();
  CLI::App* cmd = app.add_subcommand("check", "Run problems on the GPU and compare with the fp64 CPU reference "
                                              "(relative L2 error, PASS/FAIL; exit 1 on FAIL)");
  cmd->add_option("--problem,-p", o->problems,
                  "problem string, e.g. \"b=2,h=4,nq=1000,nk=777,d=64,r=3,mask=causal,dtype=bf16\" (repeatable)")
      ->required();
  cmd->add_option("--config", o->config,
                  "force a tile config (bm=..,bn=..,w=..,s=..) instead of the dispatcher's; 'all' checks every legal one");
  cmd->add_option("--seed", o->seed, "input seed (default: fresh each run)");
  cmd->add_option("--device", o->device, "CUDA device ordinal")->capture_default_str();
  cmd->add_option("--rows", o->rows, "query rows checked against the reference (sampled)")->capture_default_str();
  cmd->add_option("--repeat", o->repeat, "runs, each with fresh inputs (a moving error is a race)")->capture_default_str();
  cmd->add_flag("--backward", o->backward,
                "also check all five gradients (dQ, dK, dV, dQb, dKb) against the fp64 reference (every row: keep "
                "problems test-sized); with --time, times forward + backward");
  cmd->add_flag("--time-only", o->time_only,
                "with --backward: time forward + backward without the fp64 comparison (benchmark-sized problems; "
                "prints TIMED, not PASS)");
  cmd->add_flag("--time", o->time, "also time each kernel (CUDA events, median of 30 after 5 warm-up runs)");
  cmd->add_flag("--flush-l2", o->flush_l2,
                "with --time or --time-only: overwrite twice the L2 before every timed run (as the tuner and "
                "bench/peers.py time), instead of timing runs back to back with warm inputs");
  cmd->add_flag("--portable", o->portable,
                "run the portable sm80 kernel family even on sm_90a (where the dispatcher picks the wgmma/TMA one)");
  cmd->callback([o, &rc] {
    if (o->flush_l2 && !o->time && !o->time_only)
      throw Error(ErrorCode::invalid_argument,
                  "--flush-l2 applies to timings: add --time (or --time-only with --backward)");
    if (o->repeat < 1) throw Error(ErrorCode::invalid_argument, fmt::format("--repeat {} must be at least 1", o->repeat));
    if (o->rows < 1) throw Error(ErrorCode::invalid_argument, fmt::format("--rows {} must be at least 1", o->rows));
    // Every problem string and a forced config are read before the GPU is opened, so a typo is
    // reported as such on any machine (and before minutes of earlier problems have run).
    for (std::size_t i = 0; i < o->problems.size(); ++i) {
      try {
        parse_problem(o->problems[i]);
      } catch (const Error& e) {
        throw Error(e.code(), fmt::format("--problem #{} '{}': {}", i + 1, o->problems[i], e.what()));
      }
    }
    if (!o->config.empty() && o->config != "all") TileConfig::parse(o->config);
    GpuSession session(o->device, o->portable);
    Timer timer(o->flush_l2, o->device);
    std::uint64_t seed =
        o->seed ? o->seed : std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    bool all_pass = true;
    for (const std::string& text : o->problems) {
      const ProblemSpec spec = parse_problem(text);
      DeviceProblem problem(spec, seed);
      std::vector<std::optional<TileConfig>> tiles;
      if (o->config == "all") {
        for (const TileConfig& t : session.legal_tiles(problem.forward_args())) tiles.emplace_back(t);
        session.precompile(problem.forward_args(), tiles);
      } else if (!o->config.empty()) {
        tiles.emplace_back(TileConfig::parse(o->config));
      } else {
        tiles.emplace_back(std::nullopt);
      }
      if (o->backward) {
        Context& ctx = session.context();
        // The dispatcher's backward tile, or (--config) one forced backward tile loaded here.
        std::function<void(const BackwardArgs&)> backward = [&](const BackwardArgs& a) { ctx.backward(a, nullptr); };
        std::shared_ptr<LaunchPlan> plan;
        DeviceBuffer workspace;
        std::string tile_name = "dispatcher";
        if (!o->config.empty()) {
          problem.enable_backward(dout_seed(seed));
          ProblemKey key = validate_backward(problem.backward_args(), session.device());
          const KernelSpec ks{key, TileConfig::parse(o->config)};
          plan = std::make_shared<LaunchPlan>(std::make_shared<const LoadedKernel>(compile(generate(ks))), ks);
          workspace = DeviceBuffer(bwd_workspace_layout(problem.backward_args()).bytes);
          backward = [&](const BackwardArgs& a) { plan->launch_backward(a, workspace.get(), nullptr); };
          tile_name = ks.tile.str();
        }
        for (int i = 0; i < o->repeat; ++i) {
          if (i > 0) problem.regenerate(++seed);
          if (o->time_only) {
            if (!problem.backward_enabled()) problem.enable_backward(dout_seed(seed));
            const ForwardArgs fa = problem.forward_args();
            const BackwardArgs ba = problem.backward_args();
            ctx.forward(fa, nullptr);
            double spread = 0;
            const double ms = timer([&] { ctx.forward(fa, nullptr); backward(ba); }, 3, 10, &spread);
            const double bwd_ms = timer([&] { backward(ba); }, 3, 10);
            fmt::print("{} backward [{}] TIMED (no reference check): fwd+bwd {:.4f} ms (spread {:.4f}), backward "
                       "alone {:.4f} ms\n",
                       to_string(spec), tile_name, ms, spread, bwd_ms);
            continue;
          }
          const BackwardCheck r = check_backward(
              problem, [&](const ForwardArgs& a) { ctx.forward(a, nullptr); },
              backward, dout_seed(seed));
          std::string timing;
          if (o->time) {
            const ForwardArgs fa = problem.forward_args();
            const BackwardArgs ba = problem.backward_args();
            double spread = 0;
            const double ms = timer([&] { ctx.forward(fa, nullptr); backward(ba); }, 5, 30, &spread);
            const double bwd_ms = timer([&] { backward(ba); }, 5, 30);
            timing = fmt::format("  fwd+bwd time {:.4f} ms (spread {:.4f}), backward alone {:.4f} ms\n", ms, spread,
                                 bwd_ms);
          }
          fmt::print("{} backward [{}] seed {}\n{}\n{}", to_string(spec), tile_name, seed, r.str(), timing);
          all_pass = all_pass && r.pass;
        }
        ++seed;
        continue;
      }
      for (const auto& tile : tiles) {
        KernelSpec chosen;
        auto launch = session.launcher(problem.forward_args(), tile, &chosen);
        for (int i = 0; i < o->repeat; ++i) {
          if (i > 0) problem.regenerate(++seed);
          const CheckResult r = check_forward(problem, launch, o->rows);
          std::string timing;
          if (o->time) {
            const ForwardArgs args = problem.forward_args();
            double spread = 0;
            const double ms = timer([&] { launch(args); }, 5, 30, &spread);
            timing = fmt::format("  time {:.4f} ms (spread {:.4f}), {:.1f} TFLOP/s\n", ms, spread,
                                 spec.forward_flops() / (ms * 1e-3) / 1e12);
          }
          fmt::print("{} [{}] seed {}\n  {}\n{}", to_string(spec), chosen.str(), seed, r.str(), timing);
          all_pass = all_pass && r.pass;
        }
      }
      ++seed;
    }
    rc = all_pass ? 0 : 1;
  });
}

}  // namespace flashbias::cli
