#include <bit>
#include <exception>
#include <utility>

#include <fmt/format.h>

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
  std::size_t h = hash_value(k.key);
  const std::size_t shape = (std::size_t{k.log2_batch_heads} << 16) | (std::size_t{k.log2_seqlen_q} << 8) |
                            std::size_t{k.log2_seqlen_k};
  return h ^ (shape + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
}

ContextImpl::DispatchKey ContextImpl::dispatch_key(const ProblemKey& key, const ShapeInfo& shape) {
  // Shape bucket: ceil(log2) of each extent. Shapes in one bucket share a tile (the one chosen
  // for the first of them); the map stays small however many distinct lengths a service sees.
  auto bucket = [](std::int64_t v) {
    return static_cast<std::uint8_t>(std::bit_width(static_cast<std::uint64_t>(v > 1 ? v - 1 : 0)));
  };
  return DispatchKey{key, bucket(shape.batch_heads), bucket(shape.seqlen_q), bucket(shape.seqlen_k)};
}

ContextImpl::ContextImpl(ContextOptions options) : options_(options) {
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
  driver::check(d.cuDeviceGet(&cu_device_, ordinal), "cuDeviceGet");
  driver::check(d.cuDevicePrimaryCtxRetain(&primary_, cu_device_), "cuDevicePrimaryCtxRetain");
  log(LogLevel::info, "context on device {} ({}, {}, {} SMs, {} KiB smem/block), driver {}, policy {}", ordinal,
      device_.name, device_.arch.name(), device_.sm_count, device_.max_smem_per_block_optin / 1024,
      device_.driver_version, static_cast<int>(options_.policy));
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

const LaunchPlan& ContextImpl::miss(const ProblemKey& key, const ShapeInfo& shape, const DispatchKey& dkey) {
  dispatch_misses_.fetch_add(1, std::memory_order_relaxed);
  const TileConfig tile = choose_tile(key, shape);
  const LaunchPlan& p = plan(KernelSpec{key, tile});
  {
    std::unique_lock lock(dispatch_mutex_);
    dispatch_.emplace(dkey, &p);  // a racing thread may have inserted the same plan: keep either
  }
  log(LogLevel::info, "miss {} (batch*heads {}, seqlen_q {}, seqlen_k {}) -> tile {}", key.str(), shape.batch_heads,
      shape.seqlen_q, shape.seqlen_k, tile.str());
  return p;
}

TileConfig ContextImpl::choose_tile(const ProblemKey& key, const ShapeInfo& shape) {
  if (hooks_.find_tile) {
    if (auto t = call_hook("find_tile", [&] { return hooks_.find_tile(key, shape, device_); })) {
      log(LogLevel::info, "tile {} for {}: stored winner", t->str(), key.str());
      return *t;
    }
  }
  if (options_.policy == Policy::tune) {
    if (hooks_.tune) {
      if (auto t = call_hook("tune", [&] { return hooks_.tune(key, shape, device_); })) {
        log(LogLevel::info, "tile {} for {}: tuned now", t->str(), key.str());
        return *t;
      }
    } else {
      log(LogLevel::warn, "policy tune, but no tuner is attached to this Context: using the heuristic for {}",
          key.str());
    }
  }
  const TileConfig t = heuristic_tile(key, shape, device_.max_smem_per_block_optin);
  log(LogLevel::info, "tile {} for {}: heuristic", t.str(), key.str());
  return t;
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

  auto finish = [&](std::shared_ptr<const LoadedKernel> kernel) {
    // A kernel whose registers x threads (+ smem) exceed one SM would only fail at launch time.
    if (kernel->max_active_blocks_per_sm() == 0) {
      throw Error(ErrorCode::unsupported,
                  fmt::format("kernel {} cannot be resident on device {} ({}): {} registers x {} threads, {} bytes "
                              "dynamic smem",
                              spec.str(), device_.ordinal, device_.name,
                              kernel->attribute(CU_FUNC_ATTRIBUTE_NUM_REGS), kernel->threads(), kernel->smem_bytes()));
    }
    return std::make_unique<LaunchPlan>(std::move(kernel), spec);
  };

  if (hooks_.find_kernel) {
    if (auto stored = call_hook("find_kernel", [&] { return hooks_.find_kernel(source); })) {
      try {
        auto kernel = std::make_shared<const LoadedKernel>(*stored);
        store_hits_.fetch_add(1, std::memory_order_relaxed);
        log(LogLevel::info, "loaded stored kernel {}", spec.str());
        return finish(std::move(kernel));
      } catch (const Error& e) {
        if (e.code() != ErrorCode::driver_error) throw;
        log(LogLevel::warn, "stored kernel {} did not load, dropping it: {}", spec.str(), e.what());
        if (hooks_.reject_kernel) call_hook("reject_kernel", [&] { hooks_.reject_kernel(source, e); });
      }
    }
  }
  if (options_.policy == Policy::cache_only) {
    throw Error(ErrorCode::not_found,
                fmt::format("policy cache_only: no stored kernel for {} (arch {}); compile it into the cache or a "
                            "bundle first, or use Policy::heuristic",
                            spec.str(), device_.arch.name()));
  }
  CompiledKernel compiled = compile(source);
  compiles_.fetch_add(1, std::memory_order_relaxed);
  if (hooks_.store_kernel) {
    try {
      call_hook("store_kernel", [&] { hooks_.store_kernel(source, compiled); });
    } catch (const Error& e) {
      // The kernel is good; failing to remember it only costs a recompile next process.
      log(LogLevel::warn, "could not store kernel {}: {}", spec.str(), e.what());
    }
  }
  return finish(std::make_shared<const LoadedKernel>(compiled));
}

// --- flashbias::Context: a thin owner of the impl.

Context::Context(ContextOptions options) : impl_(std::make_unique<ContextImpl>(options)) {}
Context::~Context() = default;
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;

void Context::forward(const ForwardArgs& args, CUstream stream) {
  if (!impl_) throw Error(ErrorCode::invalid_argument, "forward() on a moved-from Context");
  impl_->forward(args, stream);
}

}  // namespace flashbias
