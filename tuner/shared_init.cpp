// Compiled into libflashbias.so only: contexts created through the C ABI (Python, C hosts) get the
// per-user kernel store and the tuner's policies, exactly like the CLI. Registering a factory is
// all this does at load time; the store is opened by the first Context, not by dlopen.
#include "tuner/bundle_hooks.h"
#include "tuner/default_hooks.h"

namespace {

__attribute__((constructor)) void flashbias_enable_default_store_hooks() {
  try {
    flashbias::tuner::enable_default_store_hooks();
    flashbias::tuner::enable_bundle_hooks();  // FLASHBIAS_BUNDLE and embedded bundles (issue 7)
  } catch (...) {
    // Never fail a dlopen: without the factory, Contexts simply start without a store.
  }
}

}  // namespace
