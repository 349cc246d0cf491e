// ContextImpl: the dispatch behind flashbias::Context.
//
//   forward(args): validate -> ProblemKey -> dispatch map (ProblemKey, ShapeBucket) -> LaunchPlan
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
#include <string_view>
#include <unordered_map>

#include "flashbias/flashbias.hpp"
#include "generator/kernel_source.h"
#include "generator/problem_key.h"
#include "generator/shape_bucket.h"
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
  std::uint64_t tiles_stored = 0;     ///< dispatch misses answered by a stored tuning winner
  std::uint64_t tiles_tuned = 0;      ///< ... by tuning on the spot (Policy::tune)
  std::uint64_t tiles_heuristic = 0;  ///< ... by the built-in heuristic
  double compile_ms = 0;              ///< total NVRTC wall time
  double tune_seconds = 0;            ///< total time spent in hooks.tune
};

/// "heuristic", "tune", "cache-only".
const char* to_string(Policy policy) noexcept;
/// "heuristic" | "tune" | "cache-only" (also "cache_only"); throws Error(invalid_argument)
/// naming `what` (e.g. "FLASHBIAS_POLICY"), the value and the allowed ones.
Policy parse_policy(std::string_view text, std::string_view what);

/// Where a dispatch miss got its tile from (logged, counted in ContextStats).
enum class TileSource : std::uint8_t { stored, tuned, heuristic };
const char* to_string(TileSource source) noexcept;

struct TileDecision {
  TileConfig tile;
  TileSource source = TileSource::heuristic;
  double tune_seconds = 0;  ///< time spent in hooks.tune (0 unless it was called)
};

/// The policy's tile choice for a dispatch miss, apart from any GPU so that it is tested with fake
/// hooks: a stored winner (hooks.find_tile) under every policy; else under Policy::tune a tuning
/// run now (hooks.tune); else heuristic_tile within the device's shared memory. A hook that throws
/// a non-flashbias exception becomes Error(internal) naming the hook.
TileDecision decide_tile(const ContextHooks& hooks, Policy policy, const ProblemKey& key, const ShapeInfo& shape,
                         const DeviceInfo& device);

/// Where a built kernel's cubin came from.
enum class KernelOrigin : std::uint8_t { store, compiled };

struct KernelAcquisition {
  KernelOrigin origin = KernelOrigin::compiled;
  double compile_ms = 0;  ///< NVRTC time when compiled here
};

/// The kernel half of a miss, apart from the driver: try hooks.find_kernel and `load` it (a load
/// that throws Error(driver_error), e.g. a cubin from a newer toolkit, is reported through
/// hooks.reject_kernel and skipped); then, unless Policy::cache_only (Error(not_found) naming the
/// spec: NVRTC is never touched), `compile_fn`, hooks.store_kernel (a failure only warns), `load`.
KernelAcquisition acquire_kernel(const ContextHooks& hooks, Policy policy, const KernelSource& source,
                                 const std::function<void(const CompiledKernel&)>& load,
                                 const std::function<CompiledKernel(const KernelSource&)>& compile_fn);

class ContextImpl;
/// Builds the hooks every new Context starts with (the layer that owns the store and the tuner
/// registers one: see tuner/default_hooks.h). The runtime cannot name those layers (they depend
/// on it), so they come in through this one process-wide slot. Empty: Contexts start hook-less.
using DefaultHooksFactory = std::function<ContextHooks(const ContextImpl&)>;
/// Replace the factory; returns the previous one. Thread-safe; affects Contexts created later.
DefaultHooksFactory set_default_hooks_factory(DefaultHooksFactory factory);

class ContextImpl {
 public:
  /// Load the driver, pick the device (options.device; -1: the current context's device, else
  /// 0), retain its primary context, install the default hooks (set_default_hooks_factory).
  /// FLASHBIAS_POLICY, when set, overrides options.policy: it is the operator's switch for a
  /// deployed program (e.g. cache-only in production, tune on a staging box). Throws
  /// Error(no_gpu), Error(invalid_argument) for a bad ordinal or a bad FLASHBIAS_POLICY.
  explicit ContextImpl(ContextOptions options);
  ~ContextImpl();
  ContextImpl(const ContextImpl&) = delete;
  ContextImpl& operator=(const ContextImpl&) = delete;

  void forward(const ForwardArgs& args, CUstream stream);
  /// The backward: validate, dispatch (direction bwd is part of the key), then prep, dq, dkdv
  /// (and reduce) on `stream`, with the caller's workspace or a stream-ordered allocation.
  void backward(const BackwardArgs& args, CUstream stream);
  std::size_t backward_workspace_size(const BackwardArgs& args) const;

  /// The plan for one spec, building it on first use (tools launch a chosen tile with it;
  /// `check` and benches). Thread-safe; the reference stays valid for the Context's lifetime.
  const LaunchPlan& plan(const KernelSpec& spec);

  /// The tile a dispatch miss would choose for (key, shape), by policy and hooks.
  TileConfig choose_tile(const ProblemKey& key, const ShapeInfo& shape);

  /// The plan forward() dispatches (key, shape) to: the dispatch map's entry, made on a miss as a
  /// call makes it, so a later forward() of that shape is a hit (tools name the tile with it).
  const LaunchPlan& dispatch_plan(const ProblemKey& key, const ShapeInfo& shape);

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
    ShapeBucket bucket;  // shape_bucket(): the same classes the tuner stores winners for
    bool operator==(const DispatchKey&) const = default;
  };
  struct DispatchHash {
    std::size_t operator()(const DispatchKey& k) const noexcept;
  };

  static DispatchKey dispatch_key(const ProblemKey& key, const ShapeInfo& shape);
  const LaunchPlan& miss(const ProblemKey& key, const ShapeInfo& shape, const DispatchKey& dkey);
  const LaunchPlan& lookup(const ProblemKey& key, const ShapeInfo& shape);
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
  std::atomic<std::uint64_t> tiles_stored_{0}, tiles_tuned_{0}, tiles_heuristic_{0};
  std::atomic<std::uint64_t> compile_us_{0}, tune_us_{0};
};

}  // namespace flashbias
