// Bundles in the runtime (issue 7): a hook layer over whatever hooks a Context already has.
//
// Lookup order for a dispatch miss: the inner hooks (the per-user cache: winner, then cubin), then
// every bundle in order (winner for this device's fingerprint; kernel by spec, arch and templates
// hash, NVRTC never loaded), then the policy (heuristic/tune compile with NVRTC; cache-only fails
// with Error(not_found) naming the spec). Bundles are opened when a Context is created and
// checked in full (format version, digest, every blob, the device's arch); a bundle that fails is
// Error(cache_error) naming it and the problem, and the Context is not created: a bad bundle is
// never used, and never silently skipped.
//
// Where bundles come from, in this order:
//   1. paths given to install_bundle_hooks() (the per-Context option, C++ API);
//   2. FLASHBIAS_BUNDLE: a colon-separated list of bundle files (for Contexts of the default
//      factory, once enable_bundle_hooks() has been called);
//   3. images linked into the program (flashbias_register_bundle, `bundle export --emit-cpp`).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cache/bundle.h"
#include "flashbias/flashbias.hpp"
#include "runtime/context_impl.h"

namespace flashbias::tuner {

/// `inner` with bundle lookups after its own (see above). Bundles are searched in order.
ContextHooks layer_bundle_hooks(ContextHooks inner, std::vector<std::shared_ptr<cache::Bundle>> bundles,
                                const DeviceInfo& device);

/// FLASHBIAS_BUNDLE's paths (empty entries ignored), in order.
std::vector<std::filesystem::path> bundle_paths_from_env();

/// Open (once per process per path and arch; then shared) `paths`, then FLASHBIAS_BUNDLE's, then the
/// embedded images, each checked for `device`'s arch. Throws Error(cache_error) for any bad one.
std::vector<std::shared_ptr<cache::Bundle>> open_bundles_for(const DeviceInfo& device,
                                                             const std::vector<std::filesystem::path>& paths,
                                                             bool include_env = true, bool include_embedded = true);

/// Per-Context option: the Context's hooks become `store`'s hooks (none when null; see
/// tuner::make_store_hooks) with these bundle files, then FLASHBIAS_BUNDLE's and the embedded ones,
/// layered after them. Call before sharing the Context between threads.
void install_bundle_hooks(Context& context, const std::vector<std::filesystem::path>& paths,
                          std::shared_ptr<cache::Store> store);

/// Wrap the process's default hooks factory (set_default_hooks_factory) so that every Context
/// created from now on also searches FLASHBIAS_BUNDLE's files and the embedded images. Call after
/// tuner::enable_default_store_hooks(). Idempotent. A no-op layer when no bundle is configured.
void enable_bundle_hooks();

}  // namespace flashbias::tuner
