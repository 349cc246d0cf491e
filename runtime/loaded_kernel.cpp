#include "runtime/loaded_kernel.h"

#include <utility>

#include <fmt/format.h>

#include "runtime/driver_api.h"

namespace flashbias {
namespace {

// Every kernel may use this much dynamic shared memory without opting in.
constexpr std::size_t kDefaultDynamicSmemLimit = 48 * 1024;

}  // namespace

LoadedKernel::LoadedKernel(const CompiledKernel& kernel)
    : LoadedKernel(kernel.cubin.data(), kernel.cubin.size(), kernel.entry, kernel.threads, kernel.smem_bytes,
                   kernel.spec.str()) {}

LoadedKernel::LoadedKernel(const void* cubin, std::size_t cubin_size, std::string entry, int threads,
                           std::size_t smem_bytes, std::string key)
    : entry_(std::move(entry)), key_(std::move(key)), threads_(threads), smem_bytes_(smem_bytes) {
  if (cubin == nullptr || cubin_size == 0) {
    throw Error(ErrorCode::invalid_argument, fmt::format("cannot load kernel {}: the cubin is empty", key_));
  }
  load(cubin, cubin_size);
}

void LoadedKernel::load(const void* cubin, std::size_t cubin_size) {
  const driver::Api& d = driver::api();
  driver::check(d.cuCtxGetCurrent(&context_), "cuCtxGetCurrent");
  if (context_ == nullptr) {
    throw Error(ErrorCode::driver_error,
                fmt::format("cannot load kernel {}: no CUDA context is current on this thread", key_));
  }
  if (CUresult r = d.cuModuleLoadData(&module_, cubin); r != CUDA_SUCCESS) {
    module_ = nullptr;
    // The usual cause is a cubin for another arch, or one from a toolkit newer than the driver.
    throw Error(ErrorCode::driver_error,
                fmt::format("cuModuleLoadData failed for kernel {} ({} byte cubin, driver {}.{}): {}", key_,
                            cubin_size, d.driver_version / 1000, (d.driver_version % 1000) / 10,
                            driver::error_text(r)));
  }
  try {
    function_ = module_function(entry_.c_str(), smem_bytes_);
  } catch (...) {
    d.cuModuleUnload(module_);
    module_ = nullptr;
    throw;
  }
}

LoadedKernel::~LoadedKernel() { reset(); }

void LoadedKernel::reset() noexcept {
  if (module_ == nullptr) return;
  // At process exit the driver may already be finalised; the OS reclaims the module.
  if (!driver::exiting()) {
    const driver::Api& d = driver::api();  // loaded, or module_ would be null
    // cuModuleUnload acts on the module's own context, but only while some context is current;
    // make ours current so that unloading from any thread works.
    CUcontext current = nullptr;
    d.cuCtxGetCurrent(&current);
    const bool push = current != context_;
    if (!push || d.cuCtxPushCurrent(context_) == CUDA_SUCCESS) {
      d.cuModuleUnload(module_);
      if (push) d.cuCtxPopCurrent(&current);
    }
  }
  module_ = nullptr;
  function_ = nullptr;
}

LoadedKernel::LoadedKernel(LoadedKernel&& other) noexcept
    : module_(std::exchange(other.module_, nullptr)),
      function_(std::exchange(other.function_, nullptr)),
      context_(other.context_),
      entry_(std::move(other.entry_)),
      key_(std::move(other.key_)),
      threads_(other.threads_),
      smem_bytes_(other.smem_bytes_) {}

LoadedKernel& LoadedKernel::operator=(LoadedKernel&& other) noexcept {
  if (this != &other) {
    reset();
    module_ = std::exchange(other.module_, nullptr);
    function_ = std::exchange(other.function_, nullptr);
    context_ = other.context_;
    entry_ = std::move(other.entry_);
    key_ = std::move(other.key_);
    threads_ = other.threads_;
    smem_bytes_ = other.smem_bytes_;
  }
  return *this;
}

void LoadedKernel::launch(unsigned grid_x, unsigned grid_y, unsigned grid_z, CUstream stream, void** params) const {
  const driver::Api& d = driver::api();
  const CUresult r = d.cuLaunchKernel(function_, grid_x, grid_y, grid_z, static_cast<unsigned>(threads_), 1, 1,
                                      static_cast<unsigned>(smem_bytes_), stream, params, nullptr);
  if (r != CUDA_SUCCESS) {
    throw Error(ErrorCode::launch_failed,
                fmt::format("cuLaunchKernel failed for kernel {}: grid ({}, {}, {}), block {}, {} bytes dynamic smem: {}",
                            key_, grid_x, grid_y, grid_z, threads_, smem_bytes_, driver::error_text(r)));
  }
}

CUfunction LoadedKernel::module_function(const char* name, std::size_t smem_bytes) const {
  const driver::Api& d = driver::api();
  CUfunction f = nullptr;
  if (CUresult r = d.cuModuleGetFunction(&f, module_, name); r != CUDA_SUCCESS) {
    throw Error(ErrorCode::driver_error,
                fmt::format("cuModuleGetFunction(\"{}\") failed for kernel {}: {}", name, key_, driver::error_text(r)));
  }
  if (smem_bytes > kDefaultDynamicSmemLimit) {
    if (CUresult r = d.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                          static_cast<int>(smem_bytes));
        r != CUDA_SUCCESS) {
      throw Error(ErrorCode::unsupported,
                  fmt::format("kernel {} entry {} needs {} bytes of dynamic shared memory, which this device does not "
                              "allow (cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES) failed: {})",
                              key_, name, smem_bytes, driver::error_text(r)));
    }
  }
  return f;
}

void LoadedKernel::launch_function(CUfunction function, const char* name, unsigned grid_x, std::size_t smem_bytes,
                                   CUstream stream, void** params) const {
  const driver::Api& d = driver::api();
  const CUresult r = d.cuLaunchKernel(function, grid_x, 1, 1, static_cast<unsigned>(threads_), 1, 1,
                                      static_cast<unsigned>(smem_bytes), stream, params, nullptr);
  if (r != CUDA_SUCCESS) {
    throw Error(ErrorCode::launch_failed,
                fmt::format("cuLaunchKernel failed for kernel {} entry {}: grid {}, block {}, {} bytes dynamic smem: {}",
                            key_, name, grid_x, threads_, smem_bytes, driver::error_text(r)));
  }
}

int LoadedKernel::max_active_blocks_per_sm(CUfunction function, std::size_t smem_bytes) const {
  const driver::Api& d = driver::api();
  int blocks = 0;
  driver::check(d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, function, threads_, smem_bytes),
                "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  return blocks;
}

int LoadedKernel::max_active_blocks_per_sm() const {
  const driver::Api& d = driver::api();
  int blocks = 0;
  driver::check(d.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, function_, threads_, smem_bytes_),
                "cuOccupancyMaxActiveBlocksPerMultiprocessor");
  return blocks;
}

int LoadedKernel::attribute(CUfunction_attribute attribute) const {
  const driver::Api& d = driver::api();
  int value = 0;
  driver::check(d.cuFuncGetAttribute(&value, attribute, function_), "cuFuncGetAttribute");
  return value;
}

}  // namespace flashbias
