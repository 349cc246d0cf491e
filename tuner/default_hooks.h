// The runtime policies, implemented as ContextHooks over the SQLite store and the tuner:
//
//   heuristic   find_tile: the stored winner for (device fingerprint, key, bucket), else the
//               runtime's heuristic. Kernels: stored cubin (SHA-256 checked by the store), else
//               NVRTC, then stored for the next process.
//   tune        as heuristic, but a key without a stored winner is tuned on the spot (strategy
//               halving, budget FLASHBIAS_TUNE_BUDGET seconds, default 30), stored, then run.
//   cache-only  stored kernels only. No compile hook is reached (the runtime refuses before it)
//               and the lookup never loads NVRTC; a miss is Error(not_found) naming the spec.
//
// Kernel lookup is by (spec, arch, templates hash), newest first, not by the full kernel key:
// the key includes the NVRTC version, and learning it means loading NVRTC, which costs 15-50 ms
// (measured: dlopen of libnvrtc.so.13) against a 20 ms budget for a warm first call. The
// generated source and options are a function of the spec and the templates hash, so the only
// thing this can reuse across NVRTC versions is the same source compiled by an older compiler;
// a cubin the driver cannot load is dropped through reject_kernel and recompiled.
//
// A store failure (Error(cache_error)) in a lookup is logged and treated as a miss: a broken
// cache costs a compile, never a failed forward (except under cache-only, where a miss is the
// error).
#pragma once

#include <memory>
#include <string>

#include "flashbias/flashbias.hpp"
#include "runtime/context_impl.h"

namespace flashbias::cache {
class Store;
}

namespace flashbias::tuner {

struct StoreHookOptions {
  Policy policy = Policy::heuristic;
  std::string tune_strategy = "halving";
  double tune_budget_seconds = 30;  ///< per key tuned on a dispatch miss (Policy::tune)
};

/// Hooks for Contexts on `device` backed by `store` (shared: the hooks keep it alive).
ContextHooks make_store_hooks(std::shared_ptr<cache::Store> store, const DeviceInfo& device,
                              const StoreHookOptions& options);

/// Install store hooks on an existing Context (C++ users who open their own store). Call before
/// sharing the Context between threads.
void install_store_hooks(Context& context, std::shared_ptr<cache::Store> store);

/// StoreHookOptions for a policy, with FLASHBIAS_TUNE_BUDGET (seconds, > 0) applied. Throws
/// Error(invalid_argument) naming the variable for a bad value.
StoreHookOptions hook_options_from_env(Policy policy);

/// The process's default store (Store::open_default, opened on first use, then shared), or
/// nullptr when FLASHBIAS_CACHE=off|0. Throws Error(invalid_argument) naming FLASHBIAS_CACHE for
/// a value other than on|off|1|0.
std::shared_ptr<cache::Store> default_store();

/// Make every Context created from now on start with store hooks on default_store() (none when
/// FLASHBIAS_CACHE=off). Idempotent. libflashbias.so and the CLI call it at start-up; a C++
/// program linking the static libraries calls it itself, or install_store_hooks per Context.
void enable_default_store_hooks();

}  // namespace flashbias::tuner
