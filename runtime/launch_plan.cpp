#include "runtime/launch_plan.h"

#include <cmath>

#include <fmt/format.h>

namespace flashbias {
namespace {

// gridDim.x limit on every arch we target.
constexpr std::int64_t kMaxGridX = 2147483647;

}  // namespace

FwdParams make_fwd_params(const ForwardArgs& a, int block_m) {
  FwdParams p{};
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  // The kernel is generated for the key's rank; with rank 0 it never touches the factors.
  p.qb = a.rank > 0 ? a.qb : nullptr;
  p.kb = a.rank > 0 ? a.kb : nullptr;
  p.o = a.o;
  p.lse = a.lse;
  p.q_batch_stride = a.q_stride.batch;
  p.q_row_stride = a.q_stride.seq;
  p.q_head_stride = a.q_stride.head;
  p.k_batch_stride = a.k_stride.batch;
  p.k_row_stride = a.k_stride.seq;
  p.k_head_stride = a.k_stride.head;
  p.v_batch_stride = a.v_stride.batch;
  p.v_row_stride = a.v_stride.seq;
  p.v_head_stride = a.v_stride.head;
  if (a.rank > 0) {
    p.qb_batch_stride = a.qb_stride.batch;
    p.qb_row_stride = a.qb_stride.seq;
    p.qb_head_stride = a.qb_stride.head;
    p.kb_batch_stride = a.kb_stride.batch;
    p.kb_row_stride = a.kb_stride.seq;
    p.kb_head_stride = a.kb_stride.head;
  }
  p.o_batch_stride = a.o_stride.batch;
  p.o_row_stride = a.o_stride.seq;
  p.o_head_stride = a.o_stride.head;
  // validate_forward() bounded these by int32.
  p.batch = static_cast<int>(a.batch);
  p.heads = static_cast<int>(a.heads);
  p.seqlen_q = static_cast<int>(a.seqlen_q);
  p.seqlen_k = static_cast<int>(a.seqlen_k);
  p.num_m_blocks = static_cast<int>((a.seqlen_q + block_m - 1) / block_m);
  p.scale = a.softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(a.head_dim)));
  return p;
}

std::uint32_t fwd_grid_size(const ForwardArgs& a, int block_m) {
  const std::int64_t m_blocks = (a.seqlen_q + block_m - 1) / block_m;
  std::int64_t ctas = 0;
  if (__builtin_mul_overflow(m_blocks, a.batch, &ctas) || __builtin_mul_overflow(ctas, a.heads, &ctas) ||
      ctas > kMaxGridX) {
    throw Error(ErrorCode::unsupported,
                fmt::format("the launch grid ceil(seqlen_q / block_m) * batch * heads = {} * {} * {} exceeds the "
                            "CUDA grid limit {} (block_m = {})",
                            m_blocks, a.batch, a.heads, kMaxGridX, block_m));
  }
  return static_cast<std::uint32_t>(ctas);
}

LaunchPlan::LaunchPlan(std::shared_ptr<const LoadedKernel> kernel, const KernelSpec& spec)
    : kernel_(std::move(kernel)), spec_(spec) {}

void LaunchPlan::launch_forward(const ForwardArgs& args, CUstream stream) const {
  const std::uint32_t grid = fwd_grid_size(args, spec_.tile.block_m);
  FwdParams params = make_fwd_params(args, spec_.tile.block_m);
  void* kernel_params[] = {&params};  // one parameter: FwdParams by value
  kernel_->launch(grid, 1, 1, stream, kernel_params);
}

}  // namespace flashbias
