// The CUDA Driver API, loaded at run time. libcuda is never linked: the library (and every test
// that needs no GPU) must run on machines without a driver. libcuda.so.1 is dlopen'ed once and
// every entry point is fetched through cuGetProcAddress_v2 at the ABI of the headers we were
// built against (CUDA_VERSION), so a newer driver hands us the signatures <cuda.h> declares.
#pragma once

#include <cuda.h>

#include <string>

#include "flashbias/flashbias.hpp"

namespace flashbias::driver {

// Every entry point the library uses. Adding one is one line here: the member's type is taken
// from the <cuda.h> prototype (decltype), its lookup name is the unversioned spelling.
// Note: <cuda.h> #defines some names to versioned ones (cuMemAlloc -> cuMemAlloc_v2); the member
// is then spelled the versioned way too, consistently for every user of this header.
#define FLASHBIAS_DRIVER_FUNCTIONS(X)                 \
  X(cuGetErrorName)                                   \
  X(cuGetErrorString)                                 \
  X(cuInit)                                           \
  X(cuDriverGetVersion)                               \
  X(cuDeviceGetCount)                                 \
  X(cuDeviceGet)                                      \
  X(cuDeviceGetName)                                  \
  X(cuDeviceGetAttribute)                             \
  X(cuDeviceTotalMem)                                 \
  X(cuDevicePrimaryCtxRetain)                         \
  X(cuDevicePrimaryCtxRelease)                        \
  X(cuCtxGetCurrent)                                  \
  X(cuCtxSetCurrent)                                  \
  X(cuCtxPushCurrent)                                 \
  X(cuCtxPopCurrent)                                  \
  X(cuCtxGetDevice)                                   \
  X(cuCtxSynchronize)                                 \
  X(cuModuleLoadData)                                 \
  X(cuModuleUnload)                                   \
  X(cuModuleGetFunction)                              \
  X(cuFuncSetAttribute)                               \
  X(cuFuncGetAttribute)                               \
  X(cuLaunchKernel)                                   \
  X(cuMemAlloc)                                       \
  X(cuMemFree)                                        \
  X(cuMemcpyHtoD)                                     \
  X(cuMemcpyDtoH)                                     \
  X(cuMemsetD8)                                       \
  X(cuMemsetD16)                                      \
  X(cuMemsetD32)                                      \
  X(cuStreamCreate)                                   \
  X(cuStreamDestroy)                                  \
  X(cuStreamSynchronize)                              \
  X(cuEventCreate)                                    \
  X(cuEventRecord)                                    \
  X(cuEventSynchronize)                               \
  X(cuEventElapsedTime)                               \
  X(cuEventDestroy)                                   \
  X(cuPointerGetAttribute)                            \
  X(cuPointerGetAttributes)                           \
  X(cuOccupancyMaxActiveBlocksPerMultiprocessor)

/// The loaded function table. Obtained only through api(); never destroyed (libcuda is never
/// dlclose'd), so pointers stay valid for the whole process lifetime.
struct Api {
#define FLASHBIAS_DRIVER_MEMBER(name) decltype(&::name) name = nullptr;
  FLASHBIAS_DRIVER_FUNCTIONS(FLASHBIAS_DRIVER_MEMBER)
#undef FLASHBIAS_DRIVER_MEMBER
  int driver_version = 0;  ///< cuDriverGetVersion, e.g. 13000
  int device_count = 0;    ///< > 0 once api() returned
};

/// Load libcuda, fetch every entry point, cuInit(0), count devices. Done once per process (the
/// result, success or failure, is remembered). Throws Error(no_gpu) with the reason when libcuda
/// is missing, cuInit fails or there is no device; Error(driver_error) when the driver is too old
/// to provide an entry point we need.
const Api& api();

/// True if api() would succeed. Never throws (for tests and `flashbias info`).
bool available() noexcept;

/// "CUDA_ERROR_OUT_OF_MEMORY: out of memory" (falls back to the number when the driver cannot name it).
std::string error_text(CUresult result);

/// Throw Error(code, "<call> failed: <NAME>: <description>") unless result is CUDA_SUCCESS.
void check(CUresult result, const char* call, ErrorCode code = ErrorCode::driver_error);

/// True once the process has begun exiting (set by an atexit handler registered when libcuda was
/// loaded). Destructors of driver-owned resources then skip driver calls: at that point libcuda
/// may already be torn down (e.g. our library unloaded by Python after the driver's own
/// finalisers), and the OS reclaims everything anyway.
bool exiting() noexcept;

/// Makes `ctx` current on this thread for the scope if it is not already; restores on exit.
/// Kernels and modules belong to one CUcontext, so every driver call on them runs under this.
class ScopedContext {
 public:
  explicit ScopedContext(CUcontext ctx);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

 private:
  bool pushed_ = false;
};

}  // namespace flashbias::driver
