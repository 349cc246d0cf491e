// The CUDA Driver API, loaded at run time. libcuda is never linked: the library (and every test
// that needs no GPU) must run on machines without a driver. libcuda.so.1 is dlopen'ed once and
// every entry point is fetched through cuGetProcAddress_v2 at an explicit ABI version, so any
// driver new enough to have that version hands us exactly the signature we call.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <string>

#include "flashbias/flashbias.hpp"

namespace flashbias::driver {

// Every entry point the library uses, with the ABI version we call it at. Adding one is one line:
// X(name, version) types the member as PFN_<name>_v<version> from <cudaTypedefs.h> and asks
// cuGetProcAddress for exactly that version. The version must be explicit: asking at CUDA_VERSION
// returns the newest ABI, which for some functions differs from the classic prototype (CUDA 13's
// cuCtxGetDevice and cuCtxSynchronize take an extra CUcontext) and would be called with garbage.
// Note: <cuda.h> #defines some names to versioned ones (cuMemAlloc -> cuMemAlloc_v2); the member
// is then spelled the versioned way too, consistently for every user of this header.
#define FLASHBIAS_DRIVER_FUNCTIONS(X)                 \
  X(cuGetErrorName, 6000)                             \
  X(cuGetErrorString, 6000)                           \
  X(cuInit, 2000)                                     \
  X(cuDriverGetVersion, 2020)                         \
  X(cuDeviceGetCount, 2000)                           \
  X(cuDeviceGet, 2000)                                \
  X(cuDeviceGetName, 2000)                            \
  X(cuDeviceGetAttribute, 2000)                       \
  X(cuDeviceTotalMem, 3020)                           \
  X(cuDevicePrimaryCtxRetain, 7000)                   \
  X(cuDevicePrimaryCtxRelease, 11000)                 \
  X(cuCtxGetCurrent, 4000)                            \
  X(cuCtxSetCurrent, 4000)                            \
  X(cuCtxPushCurrent, 4000)                           \
  X(cuCtxPopCurrent, 4000)                            \
  X(cuCtxGetDevice, 2000)                             \
  X(cuCtxSynchronize, 2000)                           \
  X(cuModuleLoadData, 2000)                           \
  X(cuModuleUnload, 2000)                             \
  X(cuModuleGetFunction, 2000)                        \
  X(cuFuncSetAttribute, 9000)                         \
  X(cuFuncGetAttribute, 2020)                         \
  X(cuLaunchKernel, 4000)                             \
  X(cuMemAlloc, 3020)                                 \
  X(cuMemFree, 3020)                                  \
  X(cuMemcpyHtoD, 3020)                               \
  X(cuMemcpyDtoH, 3020)                               \
  X(cuMemsetD8, 3020)                                 \
  X(cuMemsetD16, 3020)                                \
  X(cuMemsetD32, 3020)                                \
  X(cuStreamCreate, 2000)                             \
  X(cuStreamDestroy, 4000)                            \
  X(cuStreamSynchronize, 2000)                        \
  X(cuEventCreate, 2000)                              \
  X(cuEventRecord, 2000)                              \
  X(cuEventSynchronize, 2000)                         \
  X(cuEventElapsedTime, 12080)                        \
  X(cuEventDestroy, 4000)                             \
  X(cuPointerGetAttribute, 4000)                      \
  X(cuPointerGetAttributes, 7000)                     \
  X(cuOccupancyMaxActiveBlocksPerMultiprocessor, 6050) \
  X(cuMemAllocAsync, 11020)                           \
  X(cuMemFreeAsync, 11020)                            \
  X(cuTensorMapEncodeTiled, 12000)

/// The loaded function table. Obtained only through api(); never destroyed (libcuda is never
/// dlclose'd), so pointers stay valid for the whole process lifetime.
struct Api {
#define FLASHBIAS_DRIVER_MEMBER(name, version) PFN_##name##_v##version name = nullptr;
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
