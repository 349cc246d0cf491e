// The tuning C ABI (include/flashbias/tuning.h), compiled into libflashbias.so only: tune a problem,
// add a bundle file, name the cache. What Python's flashbias.tune / flashbias.load_bundle call.
// Like runtime/c_api.cpp, every entry point catches every exception: nothing unwinds into C.
#include "flashbias/tuning.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cache/bundle.h"
#include "cache/store.h"
#include "flashbias/flashbias.hpp"
#include "runtime/context_impl.h"
#include "runtime/device.h"
#include "runtime/driver_api.h"
#include "tuner/bundle_hooks.h"
#include "tuner/default_hooks.h"
#include "tuner/store_records.h"
#include "tuner/tune.h"
#include "tuner/strategy.h"
#include "tuner/tune_request.h"

namespace fs = std::filesystem;

namespace {

using flashbias::Error;
using flashbias::ErrorCode;

// Kept apart from flashbias.h's message (runtime/c_api.cpp owns that one): see tuning.h.
thread_local std::string t_last_error;

flashbias_status to_status(ErrorCode code) noexcept {
  // flashbias_status mirrors ErrorCode value for value (flashbias.hpp says so); check the range.
  const int v = static_cast<int>(code);
  return v >= FLASHBIAS_OK && v <= FLASHBIAS_INTERNAL ? static_cast<flashbias_status>(v) : FLASHBIAS_INTERNAL;
}

flashbias_status fail(flashbias_status status, const char* message) noexcept {
  try {
    t_last_error = message;
  } catch (...) {
    t_last_error.clear();
  }
  return status;
}

template <class F>
flashbias_status guarded(F&& f) noexcept {
  try {
    const flashbias_status s = f();
    if (s == FLASHBIAS_OK) t_last_error.clear();
    return s;
  } catch (const Error& e) {
    return fail(to_status(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(FLASHBIAS_INTERNAL, "out of host memory");
  } catch (const std::exception& e) {
    return fail(FLASHBIAS_INTERNAL, e.what());
  } catch (...) {
    return fail(FLASHBIAS_INTERNAL, "unknown exception");
  }
}

// A malloc'd copy the caller frees with flashbias_string_free.
char* c_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) throw std::bad_alloc();
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// The device's primary context made current for the scope, as the tuner expects (tuner/tune.h),
// and released after: the caller's current context (PyTorch's, on the same primary) is restored.
class PrimaryContextScope {
 public:
  explicit PrimaryContextScope(int ordinal) {
    const flashbias::driver::Api& d = flashbias::driver::api();
    flashbias::driver::check(d.cuDeviceGet(&device_, ordinal), "cuDeviceGet");
    flashbias::driver::check(d.cuDevicePrimaryCtxRetain(&primary_, device_), "cuDevicePrimaryCtxRetain");
    scope_.emplace(primary_);
  }
  ~PrimaryContextScope() {
    scope_.reset();
    if (!flashbias::driver::exiting()) flashbias::driver::api().cuDevicePrimaryCtxRelease(device_);
  }
  PrimaryContextScope(const PrimaryContextScope&) = delete;
  PrimaryContextScope& operator=(const PrimaryContextScope&) = delete;

 private:
  CUdevice device_ = 0;
  CUcontext primary_ = nullptr;
  std::optional<flashbias::driver::ScopedContext> scope_;
};

nlohmann::json report_json(const flashbias::tuner::TuneReport& r) {
  using nlohmann::json;
  json j;
  j["problem"] = to_string(r.problem);
  j["key"] = r.key.str();
  j["bucket"] = r.bucket.str();
  j["device"] = r.device;
  j["winner"] = r.winner ? json(r.winner->str()) : json();
  j["winner_ms"] = r.winner_ms ? json(*r.winner_ms) : json();
  j["heuristic"] = r.heuristic.str();
  j["heuristic_ms"] = r.heuristic_ms ? json(*r.heuristic_ms) : json();
  j["heuristic_note"] = r.heuristic_note;
  j["speedup"] = r.speedup() ? json(*r.speedup()) : json();
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
  return j;
}

// Bundle files added through flashbias_load_bundle, searched by Contexts created afterwards.
struct LoadedBundles {
  std::mutex mutex;
  std::vector<fs::path> paths;  // canonical, in the order added
};
LoadedBundles& loaded_bundles() {
  static LoadedBundles b;
  return b;
}

// One more layer over the process's default hooks factory (which shared_init.cpp set up with the
// store and FLASHBIAS_BUNDLE): the loaded files, looked up after everything already there.
void layer_loaded_bundles_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    flashbias::DefaultHooksFactory previous = flashbias::set_default_hooks_factory(nullptr);
    flashbias::set_default_hooks_factory([previous](const flashbias::ContextImpl& ctx) -> flashbias::ContextHooks {
      flashbias::ContextHooks inner = previous ? previous(ctx) : flashbias::ContextHooks{};
      std::vector<fs::path> paths;
      {
        LoadedBundles& b = loaded_bundles();
        std::lock_guard lock(b.mutex);
        paths = b.paths;
      }
      if (paths.empty()) return inner;
      // Opened (and checked for this device's arch) once per path and arch, then shared.
      return flashbias::tuner::layer_bundle_hooks(
          std::move(inner), flashbias::tuner::open_bundles_for(ctx.device(), paths, false, false), ctx.device());
    });
  });
}

}  // namespace

extern "C" {

flashbias_status flashbias_tune(int device, const char* problem, const char* strategy, double budget_seconds,
                                char** report_json_out) {
  if (report_json_out != nullptr) *report_json_out = nullptr;
  return guarded([&]() -> flashbias_status {
    if (problem == nullptr) throw Error(ErrorCode::invalid_argument, "problem is null");
    if (device < 0) {
      throw Error(ErrorCode::invalid_argument, fmt::format("device = {} is invalid: pass a CUDA ordinal", device));
    }
    if (std::isnan(budget_seconds)) throw Error(ErrorCode::invalid_argument, "budget_seconds is NaN");
    // Every mistake in the request (problem string, strategy, budget) is found before GPU work,
    // in the words of this API (resolve_tune_args would name the CLI's flags).
    const flashbias::ProblemSpec spec = flashbias::parse_problem(problem);
    const std::string strategy_name = strategy != nullptr && *strategy != '\0' ? strategy : "halving";
    const std::unique_ptr<flashbias::tuner::Strategy> chosen = flashbias::tuner::make_strategy(strategy_name);
    const double budget = budget_seconds < 0 ? flashbias::tuner::kDefaultBudgetSeconds : budget_seconds;
    if (!std::isfinite(budget) || budget > 86400) {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("budget_seconds = {} is outside [0, 86400] (0 = unlimited)", budget_seconds));
    }
    flashbias::tuner::TuneOptions options;
    options.strategy = strategy_name;
    options.strategy_options["budget"] = fmt::format("{}", budget);
    flashbias::tuner::resolve_options(*chosen, options.strategy_options);
    const flashbias::DeviceInfo info = flashbias::query_device(device);
    PrimaryContextScope scope(device);
    std::shared_ptr<flashbias::cache::Store> store = flashbias::tuner::default_store();
    const flashbias::tuner::TuneReport r = flashbias::tuner::tune(spec, info, store.get(), options);
    if (report_json_out != nullptr) *report_json_out = c_string(report_json(r).dump());
    if (!r.winner) {
      t_last_error = fmt::format("tuning {} found no passing candidate ({} incorrect, {} compile-failed, {} "
                                 "launch-failed, {} not supported, {} skipped by the budget)",
                                 to_string(r.problem), r.counts.incorrect, r.counts.compile_failed,
                                 r.counts.launch_failed, r.counts.not_supported, r.counts.skipped);
      return FLASHBIAS_NOT_FOUND;
    }
    return FLASHBIAS_OK;
  });
}

flashbias_status flashbias_load_bundle(const char* path) {
  return guarded([&]() -> flashbias_status {
    if (path == nullptr || *path == '\0') throw Error(ErrorCode::invalid_argument, "path is null or empty");
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      throw Error(ErrorCode::invalid_argument, fmt::format("bundle {} is not a readable file", path));
    }
    const fs::path canon = fs::weakly_canonical(path, ec);
    const fs::path p = ec ? fs::path(path) : canon;
    LoadedBundles& b = loaded_bundles();
    {
      std::lock_guard lock(b.mutex);
      for (const fs::path& q : b.paths)
        if (q == p) return FLASHBIAS_OK;
    }
    // Verify it in full now, so that a bad file fails here and not at the next Context.
    flashbias::cache::Bundle::open(p);
    layer_loaded_bundles_once();
    std::lock_guard lock(b.mutex);
    for (const fs::path& q : b.paths)
      if (q == p) return FLASHBIAS_OK;  // a racing call added it meanwhile
    b.paths.push_back(p);
    return FLASHBIAS_OK;
  });
}

int flashbias_loaded_bundle_count(void) {
  LoadedBundles& b = loaded_bundles();
  std::lock_guard lock(b.mutex);
  return static_cast<int>(b.paths.size());
}

flashbias_status flashbias_cache_path(char** path) {
  return guarded([&]() -> flashbias_status {
    if (path == nullptr) throw Error(ErrorCode::invalid_argument, "path is null");
    *path = nullptr;
    std::shared_ptr<flashbias::cache::Store> store = flashbias::tuner::default_store();
    if (store) *path = c_string(store->path());
    return FLASHBIAS_OK;
  });
}

void flashbias_string_free(char* s) { std::free(s); }

const char* flashbias_tuning_last_error(void) { return t_last_error.c_str(); }

}  // extern "C"
