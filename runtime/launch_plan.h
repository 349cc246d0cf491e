// Stage 4 of the pipeline: LoadedKernel + TileConfig -> LaunchPlan, the memoised thing a dispatch
// hit launches. It owns nothing but a reference to the kernel; per call it fills FwdParams and
// the grid from the arguments (no allocation, no synchronisation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/params.h"
#include "flashbias/flashbias.hpp"
#include "generator/problem_key.h"
#include "runtime/loaded_kernel.h"

namespace flashbias {

/// FwdParams for validated arguments and a tile's block_m. Pure (tests check it without a GPU).
FwdParams make_fwd_params(const ForwardArgs& args, int block_m);

/// The parameter block of the sm90 forward: FwdParams plus the TMA descriptors of Q, K, V and,
/// for 16-byte aligned factors, Qb, Kb (4-D maps over columns, row, head, batch with boxes of one
/// swizzled column chunk by block_m / block_n rows), encoded by cuTensorMapEncodeTiled (host-only
/// work, but it needs the driver). Throws Error(unsupported) naming the tensor when the driver
/// refuses a descriptor.
Sm90FwdParams make_sm90_fwd_params(const ForwardArgs& args, const KernelSpec& spec);

/// Only the TMA descriptors of `params` (what make_sm90_fwd_params adds to make_fwd_params).
void encode_sm90_tma(const ForwardArgs& args, const KernelSpec& spec, Sm90FwdParams& params);

/// The sm90 backward's TMA descriptors (tiles with the kTma knob): block and step boxes of Q, dO,
/// K, V and, with a bias, Qb and Kb (templates/common/params.h, Sm90BwdParams).
void encode_sm90_bwd_tma(const BackwardArgs& args, const KernelSpec& spec, Sm90BwdParams& params);

/// Number of CTAs of the forward grid: ceil(seqlen_q / block_m) * batch * heads. Throws
/// Error(unsupported) if it exceeds gridDim.x's limit of 2^31 - 1.
std::uint32_t fwd_grid_size(const ForwardArgs& args, int block_m);

/// Where the backward's scratch buffers live in its workspace (byte offsets, 256-byte aligned).
struct BwdWorkspaceLayout {
  std::size_t delta = 0;      ///< fp32 [batch, heads, seqlen_q]: rowsum(dO * O)
  std::size_t delta_dq = 0;   ///< fp32 [batch, heads, seqlen_q]: Delta as the dq pass measured it
  std::size_t dqb_accum = 0;  ///< fp32 [batch, heads, seqlen_q, rank] when qb broadcasts
  std::size_t dkb_accum = 0;  ///< fp32 [batch, heads, seqlen_k, rank] when kb broadcasts
  std::size_t lse_dq = 0;     ///< fp32 [batch, heads, seqlen_q]: the LSE of the backward's own scores
  std::size_t q_scaled = 0;   ///< 16-bit [batch, heads, seqlen_q, head_dim]: scale * Q (has_q_scaled)
  bool has_dqb_accum = false;
  bool has_dkb_accum = false;
  bool has_q_scaled = false;
  std::size_t bytes = 0;      ///< total
};
/// Pure: sizes only (pointers are not read). Throws Error(invalid_argument) on overflow.
/// `sm90_family`: whether the sm90 kernels run this backward; for fp16 with a bias and at least
/// 1024 keys they score with Q scaled once (common/params.h, folds_scale_into_q), which the prep
/// pass writes into the q_scaled region. Callers that do not know the family keep the default
/// (the region is then reserved whether or not it is used).
BwdWorkspaceLayout bwd_workspace_layout(const BackwardArgs& args, bool sm90_family = true);

/// Whether the factor gradients of `args` need the residual of the 16-bit dS (the backward
/// launches its kBwdEntryDkdvHi and kBwdEntryDqHi entries where not):
/// with a bias, for bf16, and for fp16 when the queries or the keys number under 64. There the
/// rows' zero sums cancel (shared factors on a row of one query or of two or three keys: up to
/// 5e-3 from 16-bit dS alone); from 64 queries and 64 keys on, 16-bit dS alone adds at most 5e-4
/// (fp64 simulation, bench/probes/factor_grad_lo_sim.py; docs/PERF_NOTES.md, sm90 step 23).
bool factor_grads_need_lo(const BackwardArgs& args);

/// BwdParams for validated arguments, a tile and a workspace of `layout` (bwd_workspace_layout(args)).
BwdParams make_bwd_params(const BackwardArgs& args, const TileConfig& tile, int slices, void* workspace,
                          const BwdWorkspaceLayout& layout);

class LaunchPlan {
 public:
  LaunchPlan(std::shared_ptr<const LoadedKernel> kernel, const KernelSpec& spec);
  ~LaunchPlan();

  /// Enqueue the forward kernel. The plan's context must be current and `args` validated for
  /// spec().key. Throws Error(unsupported) for a grid over the limit, Error(launch_failed) if the
  /// driver refuses the launch.
  void launch_forward(const ForwardArgs& args, CUstream stream) const;

  /// Enqueue the backward's kernels (prep, dq, dkdv, and reduce when a factor broadcasts).
  /// `workspace` holds bwd_workspace_layout(args).bytes; pass that layout when the caller already
  /// has it (the Context does), else it is computed here. Same contract as launch_forward.
  void launch_backward(const BackwardArgs& args, void* workspace, CUstream stream,
                       const BwdWorkspaceLayout* layout = nullptr) const;

  /// How many times this plan asked the driver for TMA descriptors (sm90): once per
  /// distinct set of tensors; a repeated call on the same tensors reuses them.
  std::uint64_t tma_encodes() const;

  const LoadedKernel& kernel() const { return *kernel_; }
  const KernelSpec& spec() const { return spec_; }

 private:
  std::shared_ptr<const LoadedKernel> kernel_;
  KernelSpec spec_;
  // The backward module's other entries (null for a forward plan) and its kernels' smem.
  CUfunction bwd_dq_ = nullptr;
  CUfunction bwd_prep_ = nullptr;
  CUfunction bwd_reduce_ = nullptr;
  // dkdv and dq without the factor gradients' residual product (kBwdEntryDkdvHi, kBwdEntryDqHi;
  // null where the module has none), launched where factor_grads_need_lo is false.
  CUfunction bwd_dkdv_hi_ = nullptr;
  CUfunction bwd_dq_hi_ = nullptr;
  std::size_t bwd_dkdv_smem_ = 0;
  std::size_t bwd_dq_smem_ = 0;
  int bwd_slices_ = 1;
  bool sm90_ = false;      // the forward runs the sm90 family (Sm90FwdParams)
  bool sm90_bwd_ = false;  // the backward runs the sm90 family (dq and dkdv take Sm90BwdParams)
  bool bwd_tma_ = false;   // ... and loads by TMA (the kTma knob)
  struct TmaMemo;
  std::unique_ptr<TmaMemo> tma_memo_;  // sm90 with TMA only: the last encoded descriptors
};

}  // namespace flashbias
