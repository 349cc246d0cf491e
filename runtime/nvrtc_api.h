// NVRTC, loaded at run time. A deployment that ships precompiled cubins (a bundle) runs without
// the CUDA toolkit; only a kernel-cache miss needs the compiler. Search order:
//   $CUDA_HOME/lib64, /usr/local/cuda/lib64, then the dynamic loader's path,
// each for libnvrtc.so.13, libnvrtc.so.12, libnvrtc.so.
// FLASHBIAS_DISABLE_NVRTC=1 forbids loading it (tests the compiler-less deployment path).
#pragma once

#include <nvrtc.h>

#include <string>

#include "flashbias/flashbias.hpp"

namespace flashbias::nvrtc {

#define FLASHBIAS_NVRTC_FUNCTIONS(X) \
  X(nvrtcVersion)                    \
  X(nvrtcGetErrorString)             \
  X(nvrtcCreateProgram)              \
  X(nvrtcDestroyProgram)             \
  X(nvrtcCompileProgram)             \
  X(nvrtcGetProgramLogSize)          \
  X(nvrtcGetProgramLog)              \
  X(nvrtcGetCUBINSize)               \
  X(nvrtcGetCUBIN)                   \
  X(nvrtcGetNumSupportedArchs)       \
  X(nvrtcGetSupportedArchs)

/// The loaded NVRTC table; lives until process exit (never dlclose'd).
struct Api {
#define FLASHBIAS_NVRTC_MEMBER(name) decltype(&::name) name = nullptr;
  FLASHBIAS_NVRTC_FUNCTIONS(FLASHBIAS_NVRTC_MEMBER)
#undef FLASHBIAS_NVRTC_MEMBER
  int major = 0;     ///< nvrtcVersion
  int minor = 0;
  std::string path;  ///< the file that was loaded (as passed to dlopen)

  std::string version() const;  ///< "13.0"
};

/// The NVRTC table, loading it on first use. Throws Error(nvrtc_unavailable) naming every path
/// tried and why each failed, or saying that FLASHBIAS_DISABLE_NVRTC forbids it. The variable is
/// consulted on every call, so it also takes effect after NVRTC was already loaded.
const Api& api();

/// True when FLASHBIAS_DISABLE_NVRTC is set to a non-empty value other than "0".
bool disabled_by_env() noexcept;

/// Throw Error(code, "<call> failed: <nvrtcGetErrorString>") unless result is NVRTC_SUCCESS.
void check(nvrtcResult result, const char* call, ErrorCode code = ErrorCode::internal);

}  // namespace flashbias::nvrtc
