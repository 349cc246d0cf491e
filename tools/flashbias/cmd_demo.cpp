// `flashbias demo`, the main job. On a GPU: compile, run and check the demo problems (the
// benchmark shapes scaled to finish in under a minute) and print time, TFLOP/s and error.
// Without a GPU: compile the default variants for sm_80 and sm_90a and print the compile report.
#include <fmt/format.h>

#include <chrono>
#include <optional>
#include <thread>

#include "commands.h"
#include "generator/kernel_source.h"
#include "generator/problem_spec.h"
#include "generator/variants.h"
#include "gpu_session.h"
#include "runtime/compiler.h"
#include "runtime/driver_api.h"
#include "tuner/harness.h"
#include "tuner/parallel.h"

namespace flashbias::cli {

namespace {

int compile_report(unsigned jobs) {
  fmt::print("Compile report of the default variant set (NVRTC, no GPU needed):\n");
  fmt::print("{:<8} {:<24} {:<18} {:>5} {:>8} {:>9} {:>8} {:>8}\n", "arch", "variant", "tile", "regs", "spill B",
             "smem B", "cubin B", "ms");
  struct Job {
    Arch arch;
    DefaultVariant v;
    TileConfig tile;
  };
  std::vector<Job> todo;
  for (const char* a : {"sm_80", "sm_90a"}) {
    const Arch arch = Arch::parse(a);
    for (const DefaultVariant& v : default_variants(arch))
      todo.push_back({arch, v, heuristic_tile(v.key, v.shape, default_smem_limit(arch))});
  }
  // NVRTC is thread-safe per program: compile on `jobs` threads, then print in table order.
  std::vector<std::optional<CompiledKernel>> compiled(todo.size());
  std::vector<std::string> errors(todo.size());
  const auto t0 = std::chrono::steady_clock::now();
  detail::parallel_for(std::int64_t(todo.size()), jobs, [&](std::int64_t i) {
    const Job& job = todo[std::size_t(i)];
    try {
      compiled[std::size_t(i)] = compile(generate(KernelSpec{job.v.key, job.tile}));
    } catch (const Error& e) {
      errors[std::size_t(i)] = e.what();
    }
  });
  int failures = 0;
  for (std::size_t i = 0; i < todo.size(); ++i) {
    const Job& job = todo[i];
    if (!compiled[i]) {
      ++failures;
      fmt::print("{:<8} {:<24} {:<18} FAILED: {}\n", job.arch.name(), job.v.name, job.tile.str(), errors[i]);
      continue;
    }
    const CompiledKernel& ck = *compiled[i];
    fmt::print("{:<8} {:<24} {:<18} {:>5} {:>8} {:>9} {:>8} {:>8.0f}\n", job.arch.name(), job.v.name, job.tile.str(),
               ck.resources.registers, ck.resources.spill_store_bytes, ck.smem_bytes, ck.cubin.size(), ck.compile_ms);
    if (ck.resources.spills() || ck.resources.wgmma_serialized) ++failures;
    if (ck.resources.wgmma_serialized) fmt::print("{:<8} {:<24} ptxas serialised its wgmma instructions\n", "", "");
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  fmt::print("{} variants compiled in {:.1f} s, {} with spills, serialised wgmma or errors\n", todo.size(), secs,
             failures);
  return failures ? 1 : 0;
}

int gpu_demo(int device, long long rows) {
  GpuSession session(device);
  const DeviceInfo& dev = session.device();
  fmt::print("GPU {}: {} ({}, {} SMs)\n", dev.ordinal, dev.name, dev.arch.name(), dev.sm_count);
  fmt::print("{:<18} {:<44} {:<18} {:>9} {:>8} {:>10} {:>6}\n", "case", "problem", "tile", "ms", "TFLOP/s",
             "rel L2 O", "check");
  bool all_pass = true;
  std::uint64_t seed = std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  for (const NamedProblem& np : demo_presets()) {
    DeviceProblem problem(np.spec, seed++);
    KernelSpec chosen;
    auto launch = session.launcher(problem.forward_args(), std::nullopt, &chosen);
    const CheckResult r = check_forward(problem, launch, rows);
    const ForwardArgs args = problem.forward_args();
    const double ms = time_ms([&] { launch(args); }, nullptr, 3, 20);
    const double tflops = np.spec.forward_flops() / (ms * 1e-3) / 1e12;
    fmt::print("{:<18} {:<44} {:<18} {:>9.4f} {:>8.1f} {:>10.2e} {:>6}\n", np.name, to_string(np.spec),
               chosen.tile.str(), ms, tflops, r.o.rel_l2, r.pass ? "PASS" : "FAIL");
    if (!r.pass) fmt::print("  {}\n", r.str());
    all_pass = all_pass && r.pass;
  }
  fmt::print("{}\n", all_pass ? "all checks passed" : "SOME CHECKS FAILED");
  return all_pass ? 0 : 1;
}

}  // namespace

void add_demo(CLI::App& app, int& rc) {
  auto device = std::make_shared<int>(0);
  auto rows = std::make_shared<long long>(128);
  auto jobs = std::make_shared<unsigned>(std::max(1u, std::thread::hardware_concurrency()));
  CLI::App* cmd = app.add_subcommand(
      "demo", "Main job: on a GPU, run and check the demo problems; without one, compile the default variants");
  cmd->add_option("--device", *device, "CUDA device ordinal")->capture_default_str();
  cmd->add_option("--rows", *rows, "query rows checked per problem")->capture_default_str();
  cmd->add_option("--jobs,-j", *jobs, "parallel NVRTC compilations (no-GPU report)")->capture_default_str();
  cmd->callback([device, rows, jobs, &rc] {
    // Zero rows would compare nothing and pass.
    if (*rows < 1) throw Error(ErrorCode::invalid_argument, fmt::format("--rows {} must be at least 1", *rows));
    if (!driver::available()) {
      std::string why;
      try {
        driver::api();
      } catch (const Error& e) {
        why = e.what();
      }
      fmt::print("No GPU found ({}).\nRunning the compile-only demo instead.\n\n", why);
      rc = compile_report(*jobs);
      return;
    }
    rc = gpu_demo(*device, *rows);
  });
}

}  // namespace flashbias::cli
