#include "tuner/default_hooks.h"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string_view>

#include "cache/store.h"
#include "generator/kernel_source.h"
#include "generator/shape_bucket.h"
#include "runtime/log.h"
#include "tuner/harness.h"
#include "tuner/store_records.h"
#include "tuner/tune.h"

namespace flashbias::tuner {

namespace {

// Lookups degrade to misses on a store failure (see the header); everything else propagates.
template <class F>
auto or_miss(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    if (e.code() != ErrorCode::cache_error) throw;
    log(LogLevel::warn, "kernel store {} failed, treating it as a miss: {}", what, e.what());
    return {};
  }
}

}  // namespace

ContextHooks make_store_hooks(std::shared_ptr<cache::Store> store, const DeviceInfo& device,
                              const StoreHookOptions& options) {
  if (!store) throw Error(ErrorCode::invalid_argument, "make_store_hooks: store is null");
  ContextHooks h;
  const std::string device_fp = fingerprint(device).str();

  h.find_tile = [store, device_fp](const ProblemKey& key, const ShapeInfo& shape,
                                   const DeviceInfo& dev) -> std::optional<TileConfig> {
    const std::string bucket = shape_bucket(shape).str();
    auto w = or_miss("find_winner", [&] { return store->find_winner(device_fp, key.str(), bucket); });
    if (!w) {
      log(LogLevel::info, "tuning miss {} bucket {} on {}", key.str(), bucket, dev.name);
      return std::nullopt;
    }
    TileConfig tile;
    try {
      tile = TileConfig::parse(w->tile);
    } catch (const Error& e) {
      // Written by a build whose TileConfig had other knobs: not an error, just not usable.
      log(LogLevel::warn, "stored winner '{}' for {} bucket {} does not parse here ({}): ignoring it", w->tile,
          key.str(), bucket, e.what());
      return std::nullopt;
    }
    if (std::string why = legality_error(key, tile, dev.max_smem_per_block_optin); !why.empty()) {
      log(LogLevel::warn, "stored winner {} for {} bucket {} is no longer legal ({}): ignoring it", tile.str(),
          key.str(), bucket, why);
      return std::nullopt;
    }
    log(LogLevel::info, "tuning hit {} bucket {}: {} ({:.4f} ms, {} run {})", key.str(), bucket, tile.str(),
        w->median_ms, w->strategy, w->run_id);
    return tile;
  };

  if (options.policy == Policy::tune) {
    h.tune = [store, options](const ProblemKey& key, const ShapeInfo& shape,
                              const DeviceInfo& dev) -> std::optional<TileConfig> {
      TuneOptions t;
      t.strategy = options.tune_strategy;
      t.strategy_options["budget"] = fmt::format("{}", options.tune_budget_seconds);
      t.compare_repeats = 0;  // the speed-up over the heuristic is for the CLI's table
      t.key = key;
      log(LogLevel::info, "tuning {} bucket {} now (policy tune, budget {} s)", key.str(), shape_bucket(shape).str(),
          options.tune_budget_seconds);
      const TuneReport r = tune(problem_for(key, shape), dev, store.get(), t);
      log(LogLevel::info, "tuned {} in {:.1f} s: {} ({} passed, {} incorrect, {} failed, {} not supported){}",
          key.str(), r.seconds, r.winner ? r.winner->str() : "no winner", r.counts.passed, r.counts.incorrect,
          r.counts.compile_failed + r.counts.launch_failed, r.counts.not_supported,
          r.stored ? "" : fmt::format(" (not stored: {})", r.store_warning));
      return r.winner;
    };
  }

  h.find_kernel = [store](const KernelSource& source) -> std::optional<CompiledKernel> {
    const KernelSpec& spec = source.spec;
    auto rec = or_miss("find_kernel", [&] {
      return store->find_kernel(spec.str(), spec.key.arch.name(), templates_hash());
    });
    if (!rec) {
      log(LogLevel::info, "kernel store miss {}", spec.str());
      return std::nullopt;
    }
    log(LogLevel::info, "kernel store hit {} ({} bytes, NVRTC {}.{}, hash verified)", spec.str(), rec->cubin.size(),
        rec->nvrtc_version / 1000, (rec->nvrtc_version % 1000) / 10);
    return compiled_kernel(*rec, spec);
  };

  if (options.policy != Policy::cache_only) {
    const int driver_version = device.driver_version;
    h.store_kernel = [store, driver_version](const KernelSource& source, const CompiledKernel& kernel) {
      store->put_kernel(kernel_record(source, kernel, driver_version));
    };
  }

  h.reject_kernel = [store](const KernelSource& source, const Error& why) {
    const KernelSpec& spec = source.spec;
    auto rec = or_miss("find_kernel", [&] {
      return store->find_kernel(spec.str(), spec.key.arch.name(), templates_hash());
    });
    if (rec && !store->read_only()) {
      store->erase_kernel(rec->key);
      log(LogLevel::warn, "dropped stored kernel {} ({}): {}", spec.str(), rec->key.substr(0, 12), why.what());
    }
  };
  return h;
}

StoreHookOptions hook_options_from_env(Policy policy) {
  StoreHookOptions o;
  o.policy = policy;
  if (const char* env = std::getenv("FLASHBIAS_TUNE_BUDGET"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(env, &end);
    if (end == env || *end != '\0' || errno != 0 || !std::isfinite(v) || v <= 0 || v > 86400) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("FLASHBIAS_TUNE_BUDGET = '{}' must be a number of seconds in (0, 86400]", env));
    }
    o.tune_budget_seconds = v;
  }
  return o;
}

void install_store_hooks(Context& context, std::shared_ptr<cache::Store> store) {
  ContextImpl& impl = context.impl();
  impl.set_hooks(make_store_hooks(std::move(store), impl.device(), hook_options_from_env(impl.options().policy)));
}

std::shared_ptr<cache::Store> default_store() {
  if (const char* env = std::getenv("FLASHBIAS_CACHE"); env != nullptr && *env != '\0') {
    const std::string_view v(env);
    if (v == "off" || v == "0") return nullptr;
    if (v != "on" && v != "1")
      throw Error(ErrorCode::invalid_argument, fmt::format("FLASHBIAS_CACHE = '{}' must be on, off, 1 or 0", v));
  }
  static std::mutex mutex;
  static std::shared_ptr<cache::Store> store;
  std::lock_guard lock(mutex);
  // Opened once per process: the open runs the file's health check, and every Context shares one
  // connection (the Store serialises its calls).
  if (!store) store = std::make_shared<cache::Store>(cache::Store::open_default());
  return store;
}

void enable_default_store_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    set_default_hooks_factory([](const ContextImpl& ctx) -> ContextHooks {
      std::shared_ptr<cache::Store> store = default_store();
      if (!store) {
        log(LogLevel::info, "FLASHBIAS_CACHE=off: no kernel store; every miss compiles");
        return {};
      }
      log(LogLevel::info, "kernel store {}{}", store->path(), store->read_only() ? " (read-only)" : "");
      return make_store_hooks(std::move(store), ctx.device(), hook_options_from_env(ctx.options().policy));
    });
  });
}

}  // namespace flashbias::tuner
