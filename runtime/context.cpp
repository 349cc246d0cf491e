#include <chrono>
#include <cstdlib>
#include <exception>
#include <utility>

#include <fmt/format.h>

#include "generator/knobs.h"
#include "runtime/context_impl.h"
#include "runtime/driver_api.h"
#include "runtime/log.h"
#include "runtime/validate.h"

namespace flashbias {

// One kernel spec's build: done once under `mutex`, then published through `ready`.
struct ContextImpl::Build {
  std::mutex mutex;
  std::unique_ptr<LaunchPlan> plan;
  std::atomic<const LaunchPlan*> ready{nullptr};
  // A deterministic failure (the generator rejects the spec, NVRTC rejects the source) is kept so
  // that repeated calls fail fast instead of recompiling; transient ones (driver, memory) are not.
  std::optional<Error> error;
};

namespace {

// Calls into code above the runtime: anything but flashbias::Error becomes Error(internal) with
// the hook's name, so the C ABI and callers see one exception type.
template <class F>
auto call_hook(const char* name, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::internal, fmt::format("context hook {} failed: {}", name, e.what()));
  }
}

int device_ordinal_of_current_context(const driver::Api& d) {
  CUcontext current = nullptr;
  driver::check(d.cuCtxGetCurrent(&current), "cuCtxGetCurrent");
  if (current == nullptr) return 0;
  CUdevice dev = 0;
  driver::check(d.cuCtxGetDevice(&dev), "cuCtxGetDevice");
  // CUdevice is a handle, not formally the ordinal: map it back.
  for (int i = 0; i < d.device_count; ++i) {
    CUdevice candidate = 0;
    driver::check(d.cuDeviceGet(&candidate, i), "cuDeviceGet");
    if (candidate == dev) return i;
  }
  throw Error(ErrorCode::driver_error, "the current CUDA context's device is not among the visible devices");
}

}  // namespace

std::size_t ContextImpl::DispatchHash::operator()(const DispatchKey& k) const noexcept {
  const std::size_t h = hash_value(k.key);
  return h ^ (hash_value(k.bucket) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
}

ContextImpl::DispatchKey ContextImpl::dispatch_key(const ProblemKey& key, const ShapeInfo& shape) {
  // Shapes in one bucket share a tile (the one chosen for the first of them), and the map stays
  // small however many distinct lengths a service sees. The bucket function is the tuner's, so a
  // stored winner serves exactly the shapes it was tuned for.
  return DispatchKey{key, shape_bucket(shape)};
}

const char* to_string(Policy policy) noexcept {
  switch (policy) {
    case Policy::heuristic: return "heuristic";
    case Policy::tune: return "tune";
    case Policy::cache_only: return "cache-only";
  }
  return "?";
}

Policy parse_policy(std::string_view text, std::string_view what) {
  if (text == "heuristic") return Policy::heuristic;
  if (text == "tune") return Policy::tune;
  if (text == "cache-only" || text == "cache_only") return Policy::cache_only;
  throw Error(ErrorCode::invalid_argument,
              fmt::format("{} = '{}' is not a policy: use heuristic, tune or cache-only", what, text));
}

const char* to_string(TileSource source) noexcept {
  switch (source) {
    case TileSource::stored: return "stored winner";
    case TileSource::tuned: return "tuned now";
    case TileSource::heuristic: return "heuristic";
  }
  return "?";
}

TileDecision decide_tile(const ContextHooks& hooks, Policy policy, const ProblemKey& key, const ShapeInfo& shape,
                         const DeviceInfo& device) {
  if (hooks.find_tile) {
    if (auto t = call_hook("find_tile", [&] { return hooks.find_tile(key, shape, device); }))
      return TileDecision{*t, TileSource::stored, 0};
  }
  if (policy == Policy::tune) {
    if (hooks.tune) {
      const auto start = std::chrono::steady_clock::now();
      auto t = call_hook("tune", [&] { return hooks.tune(key, shape, device); });
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (t) return TileDecision{*t, TileSource::tuned, s};
      // No candidate passed (every one failed to compile, or was wrong): the heuristic's tile
      // may still work, and if it does not, its build reports why.
      log(LogLevel::warn, "tuning {} found no passing candidate in {:.1f} s: using the heuristic", key.str(), s);
      return TileDecision{heuristic_tile(key, shape, device.max_smem_per_block_optin), TileSource::heuristic, s};
    }
    log(LogLevel::warn, "policy tune, but no tuner is attached to this Context: using the heuristic for {}",
        key.str());
  }
  return TileDecision{heuristic_tile(key, shape, device.max_smem_per_block_optin), TileSource::heuristic, 0};
}

KernelAcquisition acquire_kernel(const ContextHooks& hooks, Policy policy, const KernelSource& source,
                                 const std::function<void(const CompiledKernel&)>& load,
                                 const std::function<CompiledKernel(const KernelSource&)>& compile_fn) {
  const KernelSpec& spec = source.spec;
  if (hooks.find_kernel) {
    if (auto stored = call_hook("find_kernel", [&] { return hooks.find_kernel(source); })) {
      try {
        load(*stored);
        return KernelAcquisition{KernelOrigin::store, 0};
      } catch (const Error& e) {
        if (e.code() != ErrorCode::driver_error) throw;
        log(LogLevel::warn, "stored kernel {} did not load, dropping it: {}", spec.str(), e.what());
        if (hooks.reject_kernel) call_hook("reject_kernel", [&] { hooks.reject_kernel(source, e); });
      }
    }
  }
  if (policy == Policy::cache_only) {
    throw Error(ErrorCode::not_found,
                fmt::format("policy cache-only: no stored kernel for {} (arch {}){}; tune or compile it into the "
                            "cache (`flashbias tune --problem ...`) or a bundle first, or use policy heuristic",
                            spec.str(), spec.key.arch.name(),
                            hooks.find_kernel ? "" : " and no kernel store is attached (FLASHBIAS_CACHE=off?)"));
  }
  CompiledKernel compiled = compile_fn(source);
  const double compile_ms = compiled.compile_ms;
  if (hooks.store_kernel) {
    try {
      call_hook("store_kernel", [&] { hooks.store_kernel(source, compiled); });
    } catch (const Error& e) {
      // The kernel is good; failing to remember it only costs a recompile next process.
      log(LogLevel::warn, "could not store kernel {}: {}", spec.str(), e.what());
    }
  }
  load(compiled);
  return KernelAcquisition{KernelOrigin::compiled, compile_ms};
}

namespace {

std::mutex& factory_mutex() {
  static std::mutex m;
  return m;
}
DefaultHooksFactory& factory_slot() {
  static DefaultHooksFactory f;
  return f;
}

}  // namespace

DefaultHooksFactory set_default_hooks_factory(DefaultHooksFactory factory) {
  std::lock_guard lock(factory_mutex());
  return std::exchange(factory_slot(), std::move(factory));
}

ContextImpl::ContextImpl(ContextOptions options) : options_(options) {
  if (const char* env = std::getenv("FLASHBIAS_POLICY"); env != nullptr && *env != '\0') {
    options_.policy = parse_policy(env, "FLASHBIAS_POLICY");
  }
  const driver::Api& d = driver::api();
  if (options_.device < -1) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("device = {} is invalid: pass a CUDA ordinal or -1 for the current context's device",
                            options_.device));
  }
  if (options_.policy != Policy::heuristic && options_.policy != Policy::tune &&
      options_.policy != Policy::cache_only) {
    throw Error(ErrorCode::invalid_argument, fmt::format("policy has the invalid value {} (heuristic = 0, tune = 1, "
                                                         "cache_only = 2)",
                                                         static_cast<int>(options_.policy)));
  }
  const int ordinal = options_.device >= 0 ? options_.device : device_ordinal_of_current_context(d);
  device_ = query_device(ordinal);
  if (options_.portable) device_.arch.a = false;  // sm_90 keys select the portable family
  driver::check(d.cuDeviceGet(&cu_device_, ordinal), "cuDeviceGet");
  driver::check(d.cuDevicePrimaryCtxRetain(&primary_, cu_device_), "cuDevicePrimaryCtxRetain");
  DefaultHooksFactory factory;
  {
    std::lock_guard lock(factory_mutex());
    factory = factory_slot();
  }
  if (factory) hooks_ = call_hook("default hooks factory", [&] { return factory(*this); });
  log(LogLevel::info, "context on device {} ({}, {}, {} SMs, {} KiB smem/block), driver {}, policy {}, {}", ordinal,
      device_.name, device_.arch.name(), device_.sm_count, device_.max_smem_per_block_optin / 1024,
      device_.driver_version, to_string(options_.policy),
      hooks_.find_kernel ? "kernel store attached" : "no kernel store");
}

ContextImpl::~ContextImpl() {
  // Modules first, while the primary context is still retained; LoadedKernel skips the driver
  // once the process is exiting.
  dispatch_.clear();
  builds_.clear();
  if (primary_ != nullptr && !driver::exiting()) driver::api().cuDevicePrimaryCtxRelease(cu_device_);
}

ContextStats ContextImpl::stats() const {
  ContextStats s;
  s.plans = plans_.load(std::memory_order_relaxed);
  s.compiles = compiles_.load(std::memory_order_relaxed);
  s.store_hits = store_hits_.load(std::memory_order_relaxed);
  s.dispatch_misses = dispatch_misses_.load(std::memory_order_relaxed);
  s.tiles_stored = tiles_stored_.load(std::memory_order_relaxed);
  s.tiles_tuned = tiles_tuned_.load(std::memory_order_relaxed);
  s.tiles_heuristic = tiles_heuristic_.load(std::memory_order_relaxed);
  s.compile_ms = double(compile_us_.load(std::memory_order_relaxed)) / 1e3;
  s.tune_seconds = double(tune_us_.load(std::memory_order_relaxed)) / 1e6;
  return s;
}

void ContextImpl::forward(const ForwardArgs& args, CUstream stream) {
  const ProblemKey key = validate_forward(args, device_);
  const ShapeInfo shape{args.batch * args.heads, args.seqlen_q, args.seqlen_k};
  const DispatchKey dkey = dispatch_key(key, shape);
  const LaunchPlan* plan = nullptr;
  {
    std::shared_lock lock(dispatch_mutex_);
    if (auto it = dispatch_.find(dkey); it != dispatch_.end()) plan = it->second;
  }
  driver::ScopedContext scope(primary_);
  if (options_.check_pointers) check_device_pointers(args, device_);
  if (plan == nullptr) {
    plan = &miss(key, shape, dkey);
  } else if (log_enabled(LogLevel::debug)) {
    log(LogLevel::debug, "hit {} -> {}", key.str(), plan->spec().tile.str());
  }
  plan->launch_forward(args, stream);
}

const LaunchPlan& ContextImpl::dispatch_plan(const ProblemKey& key, const ShapeInfo& shape) {
  driver::ScopedContext scope(primary_);
  return lookup(key, shape);
}

const LaunchPlan& ContextImpl::lookup(const ProblemKey& key, const ShapeInfo& shape) {
  const DispatchKey dkey = dispatch_key(key, shape);
  {
    std::shared_lock lock(dispatch_mutex_);
    if (auto it = dispatch_.find(dkey); it != dispatch_.end()) return *it->second;
  }
  return miss(key, shape, dkey);
}

// Where the device can run the sm90 backward at these sizes (the pointers decide the rest), the
// workspace holds its scaled copy of Q (bwd_workspace_layout), used or not, so that
// backward_workspace_size and backward agree.
std::size_t ContextImpl::backward_workspace_size(const BackwardArgs& args) const {
  return bwd_workspace_layout(args, sm90_backward_sizes(device_.arch, args.head_dim, args.rank)).bytes;
}

void ContextImpl::backward(const BackwardArgs& args, CUstream stream) {
  const ProblemKey key = validate_backward(args, device_);
  const ShapeInfo shape{args.batch * args.heads, args.seqlen_q, args.seqlen_k};
  const BwdWorkspaceLayout layout = bwd_workspace_layout(args, sm90_backward_sizes(device_.arch, args.head_dim, args.rank));
  const std::size_t need = layout.bytes;
  if (args.workspace != nullptr && args.workspace_bytes < need) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("workspace_bytes = {} is too small: this backward needs {} bytes "
                            "(Context::backward_workspace_size)",
                            args.workspace_bytes, need));
  }
  driver::ScopedContext scope(primary_);
  if (options_.check_pointers) check_device_pointers(args, device_);
  const LaunchPlan& plan = lookup(key, shape);
  if (args.workspace != nullptr) {
    plan.launch_backward(args, args.workspace, stream, &layout);
    return;
  }
  // No caller workspace: allocate and free it in stream order (no synchronisation; capturable).
  const driver::Api& d = driver::api();
  CUdeviceptr ws = 0;
  if (CUresult r = d.cuMemAllocAsync(&ws, need, stream); r != CUDA_SUCCESS) {
    throw Error(ErrorCode::driver_error,
                fmt::format("cuMemAllocAsync of the {} byte backward workspace failed: {}; pass a workspace instead",
                            need, driver::error_text(r)));
  }
  try {
    plan.launch_backward(args, reinterpret_cast<void*>(ws), stream, &layout);
  } catch (...) {
    d.cuMemFreeAsync(ws, stream);
    throw;
  }
  driver::check(d.cuMemFreeAsync(ws, stream), "cuMemFreeAsync");
}

const LaunchPlan& ContextImpl::miss(const ProblemKey& key, const ShapeInfo& shape, const DispatchKey& dkey) {
  dispatch_misses_.fetch_add(1, std::memory_order_relaxed);
  const auto start = std::chrono::steady_clock::now();
  const TileConfig tile = choose_tile(key, shape);
  const LaunchPlan& p = plan(KernelSpec{key, tile});
  {
    std::unique_lock lock(dispatch_mutex_);
    dispatch_.emplace(dkey, &p);  // a racing thread may have inserted the same plan: keep either
  }
  if (log_enabled(LogLevel::info)) {
    log(LogLevel::info, "miss {} bucket {} (batch*heads {}, seqlen_q {}, seqlen_k {}) -> {} in {:.2f} ms", key.str(),
        dkey.bucket.str(), shape.batch_heads, shape.seqlen_q, shape.seqlen_k, tile.str(),
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return p;
}

TileConfig ContextImpl::choose_tile(const ProblemKey& key, const ShapeInfo& shape) {
  const TileDecision d = decide_tile(hooks_, options_.policy, key, shape, device_);
  switch (d.source) {
    case TileSource::stored: tiles_stored_.fetch_add(1, std::memory_order_relaxed); break;
    case TileSource::tuned: tiles_tuned_.fetch_add(1, std::memory_order_relaxed); break;
    case TileSource::heuristic: tiles_heuristic_.fetch_add(1, std::memory_order_relaxed); break;
  }
  if (d.tune_seconds > 0)
    tune_us_.fetch_add(static_cast<std::uint64_t>(d.tune_seconds * 1e6), std::memory_order_relaxed);
  if (d.source == TileSource::tuned)
    log(LogLevel::info, "tile {} for {}: {} in {:.1f} s", d.tile.str(), key.str(), to_string(d.source), d.tune_seconds);
  else
    log(LogLevel::info, "tile {} for {}: {}", d.tile.str(), key.str(), to_string(d.source));
  return d.tile;
}

const LaunchPlan& ContextImpl::plan(const KernelSpec& spec) {
  std::shared_ptr<Build> b;
  {
    std::lock_guard lock(builds_mutex_);
    std::shared_ptr<Build>& slot = builds_[spec];
    if (!slot) slot = std::make_shared<Build>();
    b = slot;
  }
  if (const LaunchPlan* p = b->ready.load(std::memory_order_acquire)) return *p;
  // Concurrent first calls for one spec wait here while one of them builds; other specs proceed.
  std::lock_guard lock(b->mutex);
  if (const LaunchPlan* p = b->ready.load(std::memory_order_acquire)) return *p;
  if (b->error) throw *b->error;
  try {
    b->plan = build(spec);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::unsupported || e.code() == ErrorCode::compile_failed) b->error = e;
    throw;
  }
  plans_.fetch_add(1, std::memory_order_relaxed);
  b->ready.store(b->plan.get(), std::memory_order_release);
  return *b->plan;
}

std::unique_ptr<LaunchPlan> ContextImpl::build(const KernelSpec& spec) {
  KernelSource source = generate(spec);  // Error(unsupported) naming the rule a (key, tile) breaks
  if (source.smem_bytes > device_.max_smem_per_block_optin) {
    throw Error(ErrorCode::unsupported,
                fmt::format("kernel {} needs {} bytes of shared memory per CTA; device {} ({}) allows {}", spec.str(),
                            source.smem_bytes, device_.ordinal, device_.name, device_.max_smem_per_block_optin));
  }
  driver::ScopedContext scope(primary_);

  std::shared_ptr<const LoadedKernel> kernel;
  const auto load_start = std::chrono::steady_clock::now();
  const KernelAcquisition got = acquire_kernel(
      hooks_, options_.policy, source,
      [&](const CompiledKernel& k) { kernel = std::make_shared<const LoadedKernel>(k); },
      [&](const KernelSource& s) {
        CompiledKernel c = compile(s);
        compiles_.fetch_add(1, std::memory_order_relaxed);
        compile_us_.fetch_add(static_cast<std::uint64_t>(c.compile_ms * 1e3), std::memory_order_relaxed);
        return c;
      });
  if (got.origin == KernelOrigin::store) store_hits_.fetch_add(1, std::memory_order_relaxed);
  if (log_enabled(LogLevel::info)) {
    const double total_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();
    if (got.origin == KernelOrigin::store)
      log(LogLevel::info, "kernel {}: source cache (store hit), loaded in {:.2f} ms", spec.str(), total_ms);
    else
      log(LogLevel::info, "kernel {}: source compile (NVRTC {:.1f} ms), ready in {:.1f} ms", spec.str(),
          got.compile_ms, total_ms);
  }
  // A kernel whose registers x threads (+ smem) exceed one SM would only fail at launch time.
  if (kernel->max_active_blocks_per_sm() == 0) {
    throw Error(ErrorCode::unsupported,
                fmt::format("kernel {} cannot be resident on device {} ({}): {} registers x {} threads, {} bytes "
                            "dynamic smem",
                            spec.str(), device_.ordinal, device_.name, kernel->attribute(CU_FUNC_ATTRIBUTE_NUM_REGS),
                            kernel->threads(), kernel->smem_bytes()));
  }
  return std::make_unique<LaunchPlan>(std::move(kernel), spec);
}

// --- flashbias::Context: a thin owner of the impl.

Context::Context(ContextOptions options) : impl_(std::make_unique<ContextImpl>(options)) {}
Context::~Context() = default;
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;

std::size_t Context::backward_workspace_size(const BackwardArgs& args) {
  if (!impl_) throw Error(ErrorCode::invalid_argument, "backward_workspace_size() on a moved-from Context");
  return impl_->backward_workspace_size(args);
}

void Context::backward(const BackwardArgs& args, CUstream stream) {
  if (!impl_) throw Error(ErrorCode::invalid_argument, "backward() on a moved-from Context");
  impl_->backward(args, stream);
}

void Context::forward(const ForwardArgs& args, CUstream stream) {
  if (!impl_) throw Error(ErrorCode::invalid_argument, "forward() on a moved-from Context");
  impl_->forward(args, stream);
}

}  // namespace flashbias
