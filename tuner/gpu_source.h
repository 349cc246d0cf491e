// GpuSource: the MeasurementSource of a real tuning run on one device.
//
//   prepare: generate -> legality and shared memory (not_supported) -> NVRTC on a bounded pool
//            (compile_failed) -> ptxas report: spills (spill_pruned), static + dynamic smem over the device limit,
//            registers x threads over an SM (not_supported) -> load, occupancy 0 (launch_failed /
//            not_supported) -> check_forward on `checks` different input sets with poisoned
//            outputs (incorrect): a race or an unwritten tile fails at least one of them. A backward
//            candidate is checked with check_backward (all five gradients, every row) on `checks`
//            small odd-sized problems with the same kernel key instead: the fp64 backward over a
//            benchmark shape would take minutes per candidate.
//   time:    warm-up, then per run: overwrite an L2-sized scratch buffer (so every run starts with
//            cold caches, as a layer in a real network does), event, launch, event. Median, min,
//            max over the runs.
//
// The calling thread's current context must be the device's primary context
// (activate_primary_context), for construction and every call.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "generator/kernel_source.h"
#include "generator/problem_key.h"
#include "generator/problem_spec.h"
#include "runtime/compiler.h"
#include "runtime/device.h"
#include "tuner/harness.h"
#include "tuner/measurement.h"

namespace flashbias {
class LaunchPlan;
}

namespace flashbias::tuner {

struct GpuSourceOptions {
  int warmup = 3;                 ///< untimed runs before each timing (clocks up, TLBs warm)
  int checks = 2;                 ///< numerical checks on different inputs; at least 2 so a race shows
  std::int64_t check_rows = 96;   ///< rows compared per check (sampled; the fp64 reference costs O(rows*Nk*D))
  unsigned compile_threads = 0;   ///< NVRTC programs at once; 0 = one per core (each holds ~0.5 GB)
  bool flush_l2 = true;           ///< overwrite an L2-sized buffer before every timed run
  std::uint64_t seed = 20250601;  ///< input seeds are seed, seed + 1, ...
  /// Which kernels to tune when no key is given (a given key's direction wins). Backward
  /// candidates are checked (all five gradients against fp64) on small problems with the same
  /// kernel key, and timed on the real shape after a forward that provides O and LSE.
  Direction direction = Direction::fwd;
};

/// Whether the ptxas report alone rules a candidate out for spilling registers: every spilling
/// tile is pruned (slower than one that fits, as a rule) except the heuristic's own tile, which is
/// what an untuned call runs. Some heuristic tiles park a few bytes on the stack and were measured
/// fastest regardless (the backward's at 250-255 registers; docs/PERF_NOTES.md); pruning them would
/// leave the side-by-side comparison in tune() nothing to compare, and a tuned key could end up
/// slower than an untuned one.
bool spill_pruned(const KernelResources& resources, bool heuristic_tile);

/// Twice the device's L2 (at least 1 MiB), overwritten by each call with a value that changes
/// from call to call, so that the next timed run starts with cold caches (as a layer in a real
/// network does) and its inputs come from DRAM. Twice: with the L2's hashed set mapping, writing
/// exactly its size leaves some lines behind. Needs the device's context current.
class L2Flush {
 public:
  explicit L2Flush(int device_ordinal);
  void operator()();
  std::size_t bytes() const { return scratch_.bytes(); }

 private:
  DeviceBuffer scratch_;
  unsigned value_ = 0;
};

/// Timing of `launch` with `before_each` run untimed ahead of every timed run: one event pair
/// per run, so whatever before_each enqueues is never counted. Median, min, max in milliseconds.
Timing time_each_ms(const std::function<void()>& launch, CUstream stream, int warmup, int repeats,
                    const std::function<void()>& before_each);

class GpuSource final : public MeasurementSource {
 public:
  /// `key`: the kernel key to generate for; nullopt derives it from the problem's own buffers. A
  /// given key must be launchable on them (same dtype, head dim, rank, mask, broadcast; alignment
  /// no wider than the buffers allow), else Error(invalid_argument) says which field differs.
  GpuSource(const DeviceInfo& device, const ProblemSpec& problem, std::vector<TileConfig> tiles,
            std::optional<ProblemKey> key = std::nullopt, GpuSourceOptions options = {});
  ~GpuSource() override;

  std::size_t size() const override { return tiles_.size(); }
  std::string name(std::size_t i) const override { return tiles_.at(i).str(); }
  std::vector<Verdict> prepare(const std::vector<std::size_t>& candidates) override;
  Timing time(std::size_t i, int repeats) override;
  double elapsed_seconds() const override;
  std::size_t parallelism() const override { return compile_threads_; }
  /// From the kernel time seen during the checks, plus the flush and per-run overhead.
  std::optional<double> estimate_seconds(std::size_t i, int repeats) const override;

  const ProblemKey& key() const { return key_; }
  /// Replace the candidates (before the first prepare(): the key is known only after construction,
  /// and the search space depends on it). Error(internal) once anything was prepared.
  void set_tiles(std::vector<TileConfig> tiles);
  const TileConfig& tile(std::size_t i) const { return tiles_.at(i); }
  /// The generated source and compiled kernel of a candidate that reached the compiler.
  const KernelSource* source(std::size_t i) const;
  const CompiledKernel* compiled(std::size_t i) const;

 private:
  struct Slot;
  void check(std::size_t i, Slot& slot);

  DeviceInfo device_;
  ProblemKey key_;
  std::optional<TileConfig> heuristic_;  // what an untuned call of this key and shape runs (spill_pruned)
  std::vector<TileConfig> tiles_;
  GpuSourceOptions options_;
  unsigned compile_threads_ = 1;
  std::vector<std::unique_ptr<DeviceProblem>> problems_;  // one per check: different inputs
  // Backward only: the check problems (small, same key), the forward that fills O and LSE (a
  // heuristic forward kernel), and a workspace per problem.
  bool backward_ = false;
  std::vector<std::unique_ptr<DeviceProblem>> bwd_checks_;
  std::unique_ptr<LaunchPlan> fwd_plan_;
  std::vector<DeviceBuffer> bwd_workspace_;  // [0]: the timing problem, then one per check
  std::optional<L2Flush> flush_;                          // options_.flush_l2
  std::vector<std::unique_ptr<Slot>> slots_;
  std::int64_t start_ns_ = 0;
};

}  // namespace flashbias::tuner
