// ContextImpl: the dispatch behind flashbias::Context.
//
//   forward(args): validate -> ProblemKey -> dispatch map (ProblemKey, shape bucket) -> LaunchPlan
//     hit:  a shared-lock lookup and a launch. No allocation, no synchronisation: graph-capture safe.
//     miss: TileConfig (hooks.find_tile, tuner by policy, else heuristic_tile) -> KernelSpec ->
//           per-spec build, done once even under concurrent first calls:
//           generate -> (hooks.find_kernel | compile -> hooks.store_kernel) -> LoadedKernel -> LaunchPlan.
//
// Kernels belong to the device's primary CUcontext (retained for the Context's lifetime); a call
// from a thread whose current context is another one pushes the primary context around the work.
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "flashbias/flashbias.hpp"
#include "generator/kernel_source.h"
#include "generator/problem_key.h"
#include "generator/variants.h"
#include "runtime/compiler.h"
#include "runtime/device.h"
#include "runtime/launch_plan.h"

namespace flashbias {

/// Extension points for the layers above the runtime (the cache store, the tuner, tools). All
/// optional; called only on dispatch misses, never on the hot path. They may throw
/// flashbias::Error; other exceptions become Error(internal).
struct ContextHooks {
  /// A stored tuning winner for (key, shape) on this device; nullopt falls through to the tuner
  /// (Policy::tune) or the heuristic.
  std::function<std::optional<TileConfig>(const ProblemKey&, const ShapeInfo&, const DeviceInfo&)> find_tile;
  /// Tune now (Policy::tune only): returns the winner, already stored by the tuner.
  std::function<std::optional<TileConfig>(const ProblemKey&, const ShapeInfo&, const DeviceInfo&)> tune;
  /// A stored cubin for this generated source (the cache keys it on source, options, NVRTC, arch).
  std::function<std::optional<CompiledKernel>(const KernelSource&)> find_kernel;
  /// Called after a successful compile, to store the kernel.
  std::function<void(const KernelSource&, const CompiledKernel&)> store_kernel;
  /// Called when a stored kernel failed to load (e.g. built by a newer toolkit than the driver):
  /// the store should drop it; the runtime then compiles afresh (unless Policy::cache_only).
  std::function<void(const KernelSource&, const Error&)> reject_kernel;
};

/// Counters for tests, logs and `flashbias info`. Updated on misses only.
struct ContextStats {
  std::uint64_t plans = 0;         ///< distinct kernel specs built
  std::uint64_t compiles = 0;      ///< NVRTC compilations
  std::uint64_t store_hits = 0;    ///< kernels restored through hooks.find_kernel
  std::uint64_t dispatch_misses = 0;
};

class ContextImpl {
 public:
  /// Load the driver, pick the device (options.device; -1: the current context's device, else
  /// 0), retain its primary context. Throws Error(no_gpu), Error(invalid_argument) for a bad ordinal.
  explicit ContextImpl(ContextOptions options);
  ~ContextImpl();
  ContextImpl(const ContextImpl&) = delete;
  ContextImpl& operator=(const ContextImpl&) = delete;

  void forward(const ForwardArgs& args, CUstream stream);

  /// The plan for one spec, building it on first use (tools launch a chosen tile with it;
  /// `check` and benches). Thread-safe; the reference stays valid for the Context's lifetime.
  const LaunchPlan& plan(const KernelSpec& spec);

  /// The tile a dispatch miss would choose for (key, shape), by policy and hooks.
  TileConfig choose_tile(const ProblemKey& key, const ShapeInfo& shape);

  /// Install hooks; call before sharing the Context between threads (not synchronised with forward).
  void set_hooks(ContextHooks hooks) { hooks_ = std::move(hooks); }

  const DeviceInfo& device() const { return device_; }
  const ContextOptions& options() const { return options_; }
  CUcontext cu_context() const { return primary_; }
  ContextStats stats() const;

 private:
  struct Build;  // one per KernelSpec: built once, then immutable
  struct DispatchKey {
    ProblemKey key;
    std::uint8_t log2_batch_heads, log2_seqlen_q, log2_seqlen_k;
    bool operator==(const DispatchKey&) const = default;
  };
  struct DispatchHash {
    std::size_t operator()(const DispatchKey& k) const noexcept;
  };

  static DispatchKey dispatch_key(const ProblemKey& key, const ShapeInfo& shape);
  const LaunchPlan& miss(const ProblemKey& key, const ShapeInfo& shape, const DispatchKey& dkey);
  std::unique_ptr<LaunchPlan> build(const KernelSpec& spec);

  ContextOptions options_;
  DeviceInfo device_;
  CUdevice cu_device_ = 0;
  CUcontext primary_ = nullptr;
  ContextHooks hooks_;

  // Hot path: (key, shape bucket) -> plan. Plans live in builds_ and are never removed, so the
  // raw pointers stay valid for the Context's lifetime.
  mutable std::shared_mutex dispatch_mutex_;
  std::unordered_map<DispatchKey, const LaunchPlan*, DispatchHash> dispatch_;

  mutable std::mutex builds_mutex_;
  std::unordered_map<KernelSpec, std::shared_ptr<Build>> builds_;

  std::atomic<std::uint64_t> compiles_{0}, store_hits_{0}, plans_{0}, dispatch_misses_{0};
};

}  // namespace flashbias
