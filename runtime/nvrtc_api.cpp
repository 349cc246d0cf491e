#include "runtime/nvrtc_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "runtime/log.h"

namespace flashbias::nvrtc {
namespace {

struct LoadState {
  Api api;
  bool ok = false;
  std::string message;
};

std::vector<std::string> candidate_paths() {
  static const char* const kNames[] = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
  std::vector<std::string> dirs;
  if (const char* home = std::getenv("CUDA_HOME"); home != nullptr && *home != '\0') {
    dirs.push_back(std::string(home) + "/lib64");
  }
  dirs.push_back("/usr/local/cuda/lib64");
  std::vector<std::string> paths;
  for (const std::string& dir : dirs)
    for (const char* name : kNames) paths.push_back(dir + "/" + name);
  // Bare names last: the loader then searches LD_LIBRARY_PATH, RUNPATH and ld.so.cache.
  for (const char* name : kNames) paths.emplace_back(name);
  return paths;
}

LoadState* load() {
  auto* state = new LoadState;  // never freed: the table is used until process exit
  std::vector<std::string> failures;
  void* lib = nullptr;
  for (const std::string& path : candidate_paths()) {
    lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) {
      state->api.path = path;
      break;
    }
    const char* why = dlerror();
    failures.push_back(fmt::format("{} ({})", path, why ? why : "not loadable"));
  }
  if (lib == nullptr) {
    state->message = fmt::format(
        "NVRTC is needed to compile a kernel but could not be loaded; set CUDA_HOME to a CUDA 12/13 "
        "toolkit or use precompiled kernels (a bundle). Tried: {}",
        fmt::join(failures, "; "));
    return state;
  }
  std::vector<const char*> missing;
#define FLASHBIAS_NVRTC_FETCH(name)                                                   \
  state->api.name = reinterpret_cast<decltype(state->api.name)>(dlsym(lib, #name)); \
  if (state->api.name == nullptr) missing.push_back(#name);
  FLASHBIAS_NVRTC_FUNCTIONS(FLASHBIAS_NVRTC_FETCH)
#undef FLASHBIAS_NVRTC_FETCH
  if (!missing.empty()) {
    state->message = fmt::format("NVRTC at {} lacks {} (needs CUDA 12 or newer)", state->api.path,
                                 fmt::join(missing, ", "));
    return state;
  }
  if (state->api.nvrtcVersion(&state->api.major, &state->api.minor) != NVRTC_SUCCESS) {
    state->message = fmt::format("nvrtcVersion failed for {}", state->api.path);
    return state;
  }
  state->ok = true;
  log(LogLevel::info, "loaded NVRTC {} from {}", state->api.version(), state->api.path);
  return state;
}

const LoadState& loaded() {
  static const LoadState* state = load();
  return *state;
}

}  // namespace

std::string Api::version() const { return fmt::format("{}.{}", major, minor); }

bool disabled_by_env() noexcept {
  const char* env = std::getenv("FLASHBIAS_DISABLE_NVRTC");
  return env != nullptr && *env != '\0' && std::string_view(env) != "0";
}

const Api& api() {
  if (disabled_by_env()) {
    throw Error(ErrorCode::nvrtc_unavailable,
                "NVRTC is needed to compile a kernel, but FLASHBIAS_DISABLE_NVRTC is set (compiler-less "
                "deployment): only cached or bundled kernels can be used");
  }
  const LoadState& state = loaded();
  if (!state.ok) throw Error(ErrorCode::nvrtc_unavailable, state.message);
  return state.api;
}

void check(nvrtcResult result, const char* call, ErrorCode code) {
  if (result == NVRTC_SUCCESS) return;
  // Reached only after a successful load (a call returned a result), so the table is there.
  const LoadState& state = loaded();
  const char* text = state.api.nvrtcGetErrorString ? state.api.nvrtcGetErrorString(result) : "unknown";
  throw Error(code, fmt::format("{} failed: {} ({})", call, text, static_cast<int>(result)));
}

}  // namespace flashbias::nvrtc
