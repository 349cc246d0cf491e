// Stage 3 of the pipeline: CompiledKernel -> LoadedKernel (a CUmodule + CUfunction in one
// CUcontext). Move-only RAII; the module is unloaded in the context it was loaded into.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <string>

#include "runtime/compiler.h"

namespace flashbias {

class LoadedKernel {
 public:
  /// Load into the calling thread's current CUcontext (throws Error(driver_error) if none).
  /// Sets CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES when smem_bytes exceeds the 48 KiB
  /// that every kernel may use without opting in.
  explicit LoadedKernel(const CompiledKernel& kernel);
  /// The same from parts (a cubin restored from a cache or bundle). `key` names it in errors.
  LoadedKernel(const void* cubin, std::size_t cubin_size, std::string entry, int threads, std::size_t smem_bytes,
               std::string key);
  ~LoadedKernel();
  LoadedKernel(LoadedKernel&& other) noexcept;
  LoadedKernel& operator=(LoadedKernel&& other) noexcept;
  LoadedKernel(const LoadedKernel&) = delete;
  LoadedKernel& operator=(const LoadedKernel&) = delete;

  CUfunction function() const { return function_; }
  CUmodule module() const { return module_; }
  CUcontext context() const { return context_; }
  const std::string& entry() const { return entry_; }
  const std::string& key() const { return key_; }
  int threads() const { return threads_; }
  std::size_t smem_bytes() const { return smem_bytes_; }

  /// Enqueue one launch. `params` is the cuLaunchKernel kernelParams array. The caller makes
  /// context() current (launches are not re-checked here: this is the hot path).
  /// Throws Error(launch_failed) naming the key and the geometry.
  void launch(unsigned grid_x, unsigned grid_y, unsigned grid_z, CUstream stream, void** params) const;

  /// Another entry point of the same module (the backward's modules hold four), with its dynamic
  /// shared memory limit raised to `smem_bytes` where that exceeds the default 48 KiB.
  /// Throws Error(driver_error) naming the entry.
  CUfunction module_function(const char* name, std::size_t smem_bytes) const;
  /// Enqueue one launch of `function` (an entry of this module) with the kernel's block size.
  void launch_function(CUfunction function, const char* name, unsigned grid_x, std::size_t smem_bytes,
                       CUstream stream, void** params) const;

  /// Resident CTAs per SM at the kernel's block size and dynamic smem (0: does not fit).
  int max_active_blocks_per_sm() const;
  /// The same for another entry of the module at its own dynamic smem.
  int max_active_blocks_per_sm(CUfunction function, std::size_t smem_bytes) const;
  /// cuFuncGetAttribute (e.g. CU_FUNC_ATTRIBUTE_NUM_REGS) as the driver sees the loaded code.
  int attribute(CUfunction_attribute attribute) const;

 private:
  void load(const void* cubin, std::size_t cubin_size);
  void reset() noexcept;

  CUmodule module_ = nullptr;
  CUfunction function_ = nullptr;
  CUcontext context_ = nullptr;
  std::string entry_;
  std::string key_;
  int threads_ = 0;
  std::size_t smem_bytes_ = 0;
};

}  // namespace flashbias
