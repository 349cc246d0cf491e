// Stage 4 of the pipeline: LoadedKernel + TileConfig -> LaunchPlan, the memoised thing a dispatch
// hit launches. It owns nothing but a reference to the kernel; per call it fills FwdParams and
// the grid from the arguments (no allocation, no synchronisation).
#pragma once

#include <cstdint>
#include <memory>

#include "common/params.h"
#include "flashbias/flashbias.hpp"
#include "generator/problem_key.h"
#include "runtime/loaded_kernel.h"

namespace flashbias {

/// FwdParams for validated arguments and a tile's block_m. Pure (tests check it without a GPU).
FwdParams make_fwd_params(const ForwardArgs& args, int block_m);

/// Number of CTAs of the forward grid: ceil(seqlen_q / block_m) * batch * heads. Throws
/// Error(unsupported) if it exceeds gridDim.x's limit of 2^31 - 1.
std::uint32_t fwd_grid_size(const ForwardArgs& args, int block_m);

class LaunchPlan {
 public:
  LaunchPlan(std::shared_ptr<const LoadedKernel> kernel, const KernelSpec& spec);

  /// Enqueue the forward kernel. The plan's context must be current and `args` validated for
  /// spec().key. Throws Error(unsupported) for a grid over the limit, Error(launch_failed) if the
  /// driver refuses the launch.
  void launch_forward(const ForwardArgs& args, CUstream stream) const;

  const LoadedKernel& kernel() const { return *kernel_; }
  const KernelSpec& spec() const { return spec_; }

 private:
  std::shared_ptr<const LoadedKernel> kernel_;
  KernelSpec spec_;
};

}  // namespace flashbias
