#include "runtime/driver_api.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runtime/log.h"

namespace flashbias::driver {
namespace {

std::atomic<bool> g_exiting{false};

struct LoadState {
  Api api;
  ErrorCode code = ErrorCode::ok;  // ok: api is usable
  std::string message;
};

void mark_exiting() { g_exiting.store(true, std::memory_order_relaxed); }

// One attempt per process: the answer cannot change while we run (a driver does not appear),
// and repeating dlopen on every Context creation would only slow down the failure path.
LoadState* load() {
  auto* state = new LoadState;  // never freed: used until process exit, by design
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    state->code = ErrorCode::no_gpu;
    state->message = fmt::format(
        "no GPU: the CUDA driver library libcuda.so.1 could not be loaded ({}); install the NVIDIA "
        "driver or make libcuda.so.1 visible to the dynamic loader",
        why ? why : "unknown reason");
    return state;
  }
  using GetProc = PFN_cuGetProcAddress_v12000;  // the exported symbol cuGetProcAddress_v2
  auto get_proc = reinterpret_cast<GetProc>(dlsym(lib, "cuGetProcAddress_v2"));
  if (get_proc == nullptr) {
    state->code = ErrorCode::driver_error;
    state->message =
        "the installed CUDA driver is too old: libcuda.so.1 has no cuGetProcAddress_v2 (a CUDA 12.0 or "
        "newer driver is required)";
    return state;
  }
  std::vector<const char*> missing;
  Api& api = state->api;
#define FLASHBIAS_DRIVER_FETCH(name, version)                                                         \
  {                                                                                                   \
    void* fn = nullptr;                                                                               \
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;                      \
    if (get_proc(#name, &fn, version, CU_GET_PROC_ADDRESS_DEFAULT, &found) != CUDA_SUCCESS ||         \
        fn == nullptr || found != CU_GET_PROC_ADDRESS_SUCCESS)                                        \
      missing.push_back(#name);                                                                       \
    else                                                                                              \
      api.name = reinterpret_cast<decltype(api.name)>(fn);                                            \
  }
  FLASHBIAS_DRIVER_FUNCTIONS(FLASHBIAS_DRIVER_FETCH)
#undef FLASHBIAS_DRIVER_FETCH
  if (api.cuDriverGetVersion != nullptr) api.cuDriverGetVersion(&api.driver_version);
  if (!missing.empty()) {
    state->code = ErrorCode::driver_error;
    state->message = fmt::format(
        "the installed CUDA driver (version {}.{}) lacks entry points this library needs: {}; update the "
        "NVIDIA driver",
        api.driver_version / 1000, (api.driver_version % 1000) / 10, fmt::join(missing, ", "));
    return state;
  }
  // Registered before any driver resource of ours exists, so it runs after the static destructors
  // of objects created later (reverse order) but before shared libraries' finalisers.
  std::atexit(mark_exiting);
  if (CUresult r = api.cuInit(0); r != CUDA_SUCCESS) {
    state->code = ErrorCode::no_gpu;
    // error_text() would re-enter state() while it is being initialised: name the error here.
    const char* name = nullptr;
    const char* desc = nullptr;
    api.cuGetErrorName(r, &name);
    api.cuGetErrorString(r, &desc);
    state->message = fmt::format("no GPU: cuInit failed: {}: {} (driver version {})", name ? name : "?",
                                 desc ? desc : "?", api.driver_version);
    return state;
  }
  if (CUresult r = api.cuDeviceGetCount(&api.device_count); r != CUDA_SUCCESS || api.device_count <= 0) {
    state->code = ErrorCode::no_gpu;
    state->message = "no GPU: the CUDA driver is installed but reports no CUDA device";
    return state;
  }
  return state;
}

const LoadState& state() {
  static const LoadState* s = load();
  return *s;
}

}  // namespace

const Api& api() {
  const LoadState& s = state();
  if (s.code != ErrorCode::ok) throw Error(s.code, s.message);
  return s.api;
}

bool available() noexcept {
  try {
    return state().code == ErrorCode::ok;
  } catch (...) {  // std::bad_alloc while loading
    return false;
  }
}

std::string error_text(CUresult result) {
  const char* name = nullptr;
  const char* desc = nullptr;
  // Only the two lookups are needed; they exist even when initialisation failed later.
  const LoadState& s = state();
  if (s.api.cuGetErrorName != nullptr) s.api.cuGetErrorName(result, &name);
  if (s.api.cuGetErrorString != nullptr) s.api.cuGetErrorString(result, &desc);
  if (name == nullptr) return fmt::format("CUresult {}", static_cast<int>(result));
  return fmt::format("{}: {}", name, desc ? desc : "no description");
}

void check(CUresult result, const char* call, ErrorCode code) {
  if (result == CUDA_SUCCESS) return;
  throw Error(code, fmt::format("{} failed: {}", call, error_text(result)));
}

bool exiting() noexcept { return g_exiting.load(std::memory_order_relaxed); }

ScopedContext::ScopedContext(CUcontext ctx) {
  const Api& d = api();
  CUcontext current = nullptr;
  check(d.cuCtxGetCurrent(&current), "cuCtxGetCurrent");
  if (current != ctx) {
    check(d.cuCtxPushCurrent(ctx), "cuCtxPushCurrent");
    pushed_ = true;
  }
}

ScopedContext::~ScopedContext() {
  if (!pushed_) return;
  CUcontext popped = nullptr;
  // Cannot throw from a destructor; a failed pop means the driver is gone and nothing is left to restore.
  api().cuCtxPopCurrent(&popped);
}

}  // namespace flashbias::driver
