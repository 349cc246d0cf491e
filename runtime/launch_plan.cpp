#include "runtime/launch_plan.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <mutex>
#include <tuple>

#include <fmt/format.h>

#include "generator/kernel_source.h"
#include "generator/knobs.h"
#include "runtime/driver_api.h"
#include "runtime/validate.h"

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
  p.scale = effective_scale(a);
  p.m_blocks_div = make_fast_divisor(static_cast<unsigned>(p.num_m_blocks));
  p.heads_div = make_fast_divisor(static_cast<unsigned>(p.heads));
  return p;
}

namespace {

/// A 4-D TMA descriptor (columns, rows, heads, batch) with boxes of one swizzled chunk of
/// columns (16, 32 or 64 elements, chunk_elems of the contraction width) by `box_rows` rows. A
/// stride of 0 (a broadcast factor dimension) is encoded as extent 1 with a packed stride: the
/// kernel then always asks for coordinate 0 there.
TmaDescriptor encode_tma(const char* name, const void* base, DType dtype, std::int64_t cols, std::int64_t rows,
                         std::int64_t heads, std::int64_t batch, const Strides& stride, int box_rows) {
  static_assert(sizeof(CUtensorMap) == sizeof(TmaDescriptor) && alignof(TmaDescriptor) >= alignof(CUtensorMap));
  const int chunk = sm90_chunk_elems(int((cols + 15) / 16 * 16));
  const cuuint64_t row_bytes = cuuint64_t(stride.seq) * 2;
  const cuuint64_t head_bytes = stride.head != 0 ? cuuint64_t(stride.head) * 2 : row_bytes * cuuint64_t(rows);
  const cuuint64_t head_extent = stride.head != 0 ? cuuint64_t(heads) : 1;
  const cuuint64_t batch_bytes = stride.batch != 0 ? cuuint64_t(stride.batch) * 2 : head_bytes * head_extent;
  const cuuint64_t dims[4] = {cuuint64_t(cols), cuuint64_t(rows), head_extent, stride.batch != 0 ? cuuint64_t(batch) : 1};
  const cuuint64_t strides[3] = {row_bytes, head_bytes, batch_bytes};
  const cuuint32_t box[4] = {cuuint32_t(chunk), cuuint32_t(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapSwizzle swizzle = chunk == 64   ? CU_TENSOR_MAP_SWIZZLE_128B
                                     : chunk == 32 ? CU_TENSOR_MAP_SWIZZLE_64B
                                                   : CU_TENSOR_MAP_SWIZZLE_32B;
  CUtensorMap map;
  const CUresult r = driver::api().cuTensorMapEncodeTiled(
      &map, dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error(ErrorCode::unsupported,
                fmt::format("the driver refused the TMA descriptor of {} (dims {}x{}x{}x{}, byte strides {}/{}/{}): {}; "
                            "the portable kernels (ContextOptions::portable) have no such limits",
                            name, dims[0], dims[1], dims[2], dims[3], strides[0], strides[1], strides[2],
                            driver::error_text(r)));
  TmaDescriptor out;
  std::memcpy(&out, &map, sizeof(out));
  return out;
}

}  // namespace

Sm90FwdParams make_sm90_fwd_params(const ForwardArgs& a, const KernelSpec& spec) {
  const TileConfig& tile = spec.tile;
  Sm90FwdParams p{};
  p.p = make_fwd_params(a, tile.block_m);
  encode_sm90_tma(a, spec, p);
  return p;
}

void encode_sm90_tma(const ForwardArgs& a, const KernelSpec& spec, Sm90FwdParams& p) {
  const TileConfig& tile = spec.tile;
  p.tma_q = encode_tma("q", a.q, a.dtype, a.head_dim, a.seqlen_q, a.heads, a.batch, a.q_stride, tile.block_m);
  p.tma_k = encode_tma("k", a.k, a.dtype, a.head_dim, a.seqlen_k, a.heads, a.batch, a.k_stride, tile.block_n);
  p.tma_v = encode_tma("v", a.v, a.dtype, a.head_dim, a.seqlen_k, a.heads, a.batch, a.v_stride, tile.block_n);
  // The template takes the factors by TMA exactly when they are 16-byte aligned (kFactorTma).
  if (spec.key.rank > 0 && spec.key.bias_align == 16) {
    p.tma_qb = encode_tma("qb", a.qb, a.dtype, a.rank, a.seqlen_q, a.heads, a.batch, a.qb_stride, tile.block_m);
    p.tma_kb = encode_tma("kb", a.kb, a.dtype, a.rank, a.seqlen_k, a.heads, a.batch, a.kb_stride, tile.block_n);
  }
}

void encode_sm90_bwd_tma(const BackwardArgs& a, const KernelSpec& spec, Sm90BwdParams& p) {
  const TileConfig& tile = spec.tile;
  // Mirrors templates/sm90/bwd_kernel.cuh (kTma): block tiles of block_m rows of each of the six
  // inputs; step tiles of `step` rows of the query side (dkdv walks Q, dO, Qb) and of `dqstep`
  // rows (0: `step`) of the key side (dq walks K, V, Kb).
  const int step = tile.get("kStep").value_or(64);
  const int dq_knob = tile.get("kDqStep").value_or(0);
  const int dq_step = dq_knob != 0 ? dq_knob : step;
  for (const auto& [q_rows, k_rows, out] :
       {std::tuple{tile.block_m, tile.block_m, p.block}, std::tuple{step, dq_step, p.step}}) {
    out[Sm90BwdParams::kQ] =
        encode_tma("q", a.q, a.dtype, a.head_dim, a.seqlen_q, a.heads, a.batch, a.q_stride, q_rows);
    out[Sm90BwdParams::kDo] =
        encode_tma("dout", a.dout, a.dtype, a.head_dim, a.seqlen_q, a.heads, a.batch, a.dout_stride, q_rows);
    out[Sm90BwdParams::kK] =
        encode_tma("k", a.k, a.dtype, a.head_dim, a.seqlen_k, a.heads, a.batch, a.k_stride, k_rows);
    out[Sm90BwdParams::kV] =
        encode_tma("v", a.v, a.dtype, a.head_dim, a.seqlen_k, a.heads, a.batch, a.v_stride, k_rows);
    if (a.rank > 0) {
      out[Sm90BwdParams::kQb] =
          encode_tma("qb", a.qb, a.dtype, a.rank, a.seqlen_q, a.heads, a.batch, a.qb_stride, q_rows);
      out[Sm90BwdParams::kKb] =
          encode_tma("kb", a.kb, a.dtype, a.rank, a.seqlen_k, a.heads, a.batch, a.kb_stride, k_rows);
    }
  }
}

namespace {

/// Everything the TMA descriptors encode, compared bytewise: 8-byte fields only, so no padding.
/// dout is the backward's (null in the forward).
struct TmaInputs {
  const void* q;
  const void* k;
  const void* v;
  const void* qb;
  const void* kb;
  const void* dout;
  std::int64_t batch, heads, seqlen_q, seqlen_k, head_dim, rank;
  Strides q_stride, k_stride, v_stride, qb_stride, kb_stride, dout_stride;
  std::int64_t dtype;
};
static_assert(sizeof(TmaInputs) == 6 * 8 + 6 * 8 + 6 * sizeof(Strides) + 8, "TmaInputs must have no padding");

template <class Args>
TmaInputs tma_inputs(const Args& a) {
  TmaInputs t{};
  if constexpr (std::is_same_v<Args, BackwardArgs>) {
    t.dout = a.dout;
    t.dout_stride = a.dout_stride;
  }
  const bool bias = a.rank > 0;
  t.q = a.q;
  t.k = a.k;
  t.v = a.v;
  t.qb = bias ? a.qb : nullptr;
  t.kb = bias ? a.kb : nullptr;
  t.batch = a.batch;
  t.heads = a.heads;
  t.seqlen_q = a.seqlen_q;
  t.seqlen_k = a.seqlen_k;
  t.head_dim = a.head_dim;
  t.rank = a.rank;
  t.q_stride = a.q_stride;
  t.k_stride = a.k_stride;
  t.v_stride = a.v_stride;
  if (bias) {
    t.qb_stride = a.qb_stride;
    t.kb_stride = a.kb_stride;
  }
  t.dtype = std::int64_t(a.dtype);
  return t;
}

}  // namespace

/// The last descriptors a plan encoded and what they encode: a repeated call on the same tensors
/// (the training-loop case) copies them instead of asking the driver again.
struct LaunchPlan::TmaMemo {
  std::mutex mu;
  bool valid = false;
  TmaInputs inputs;
  Sm90FwdParams params;  // the forward's descriptors (its `p` unused)
  Sm90BwdParams bwd;     // the backward's (its `p` unused)
  std::atomic<std::uint64_t> encodes{0};

  /// Copy the descriptors for `in` into `out`, encoding them first (`encode(memo params)`) when
  /// they are not those of the last call.
  template <class Params, class Encode>
  void get(const TmaInputs& in, Params& memo, Params& out, Encode&& encode) {
    std::lock_guard lock(mu);
    if (!valid || std::memcmp(&inputs, &in, sizeof(in)) != 0) {
      valid = false;  // stays invalid if the driver refuses a descriptor
      encode(memo);
      inputs = in;
      valid = true;
      ++encodes;
    }
    const auto common = out.p;
    out = memo;
    out.p = common;
  }
};

std::uint64_t LaunchPlan::tma_encodes() const { return tma_memo_ ? tma_memo_->encodes.load() : 0; }

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

BwdWorkspaceLayout bwd_workspace_layout(const BackwardArgs& a, bool sm90_family) {
  auto align = [](std::size_t v) { return (v + 255) / 256 * 256; };
  auto floats = [&](std::initializer_list<std::int64_t> dims) {
    std::int64_t n = 1;
    for (std::int64_t d : dims)
      if (d <= 0 || __builtin_mul_overflow(n, d, &n))
        throw Error(ErrorCode::invalid_argument, "backward workspace size overflows (batch, heads, seqlen, rank)");
    std::int64_t bytes = 0;
    if (__builtin_mul_overflow(n, std::int64_t{4}, &bytes))
      throw Error(ErrorCode::invalid_argument, "backward workspace size overflows (batch, heads, seqlen, rank)");
    return align(static_cast<std::size_t>(bytes));
  };
  BwdWorkspaceLayout w;
  w.delta = 0;
  w.delta_dq = floats({a.batch, a.heads, a.seqlen_q});
  w.bytes = 2 * w.delta_dq;
  w.lse_dq = w.bytes;
  w.bytes += w.delta_dq;
  if (a.rank > 0) {
    w.has_dqb_accum = a.qb_stride.batch == 0 || a.qb_stride.head == 0;
    w.has_dkb_accum = a.kb_stride.batch == 0 || a.kb_stride.head == 0;
    if (w.has_dqb_accum) {
      w.dqb_accum = w.bytes;
      w.bytes += floats({a.batch, a.heads, a.seqlen_q, a.rank});
    }
    if (w.has_dkb_accum) {
      w.dkb_accum = w.bytes;
      w.bytes += floats({a.batch, a.heads, a.seqlen_k, a.rank});
    }
  }
  // The copy costs a pass over Q in prep; it pays where each query meets enough keys (H100: a
  // 4.6% faster backward on seed_n16k, 16384 keys; 1% slower on af3_tri, 384 keys).
  constexpr std::int64_t kScaledQMinKeys = 1024;
  if (sm90_family && a.seqlen_k >= kScaledQMinKeys &&
      folds_scale_into_q(a.dtype == DType::f16, int(a.rank), effective_scale(a))) {
    w.has_q_scaled = true;
    w.q_scaled = w.bytes;
    w.bytes += floats({a.batch, a.heads, a.seqlen_q, (a.head_dim + 1) / 2});  // 16-bit elements
  }
  return w;
}

bool factor_grads_need_lo(const BackwardArgs& a) {
  return a.rank > 0 && (a.dtype != DType::f16 || a.seqlen_q < 64 || a.seqlen_k < 64);
}

BwdParams make_bwd_params(const BackwardArgs& a, const TileConfig& tile, int slices, void* workspace,
                          const BwdWorkspaceLayout& w) {
  BwdParams p{};
  const bool bias = a.rank > 0;
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.qb = bias ? a.qb : nullptr;
  p.kb = bias ? a.kb : nullptr;
  p.o = a.o;
  p.dout = a.dout;
  p.lse = a.lse;
  p.dq = a.dq;
  p.dk = a.dk;
  p.dv = a.dv;
  p.dqb = bias ? a.dqb : nullptr;
  p.dkb = bias ? a.dkb : nullptr;
  char* ws = static_cast<char*>(workspace);
  p.delta = reinterpret_cast<float*>(ws + w.delta);
  p.delta_dq = reinterpret_cast<float*>(ws + w.delta_dq);
  p.lse_dq = reinterpret_cast<float*>(ws + w.lse_dq);
  p.dqb_accum = w.has_dqb_accum ? reinterpret_cast<float*>(ws + w.dqb_accum) : nullptr;
  p.dkb_accum = w.has_dkb_accum ? reinterpret_cast<float*>(ws + w.dkb_accum) : nullptr;
  auto set = [](long long& b, long long& r, long long& h, const Strides& s) {
    b = s.batch;
    r = s.seq;
    h = s.head;
  };
  set(p.q_batch_stride, p.q_row_stride, p.q_head_stride, a.q_stride);
  set(p.k_batch_stride, p.k_row_stride, p.k_head_stride, a.k_stride);
  set(p.v_batch_stride, p.v_row_stride, p.v_head_stride, a.v_stride);
  set(p.o_batch_stride, p.o_row_stride, p.o_head_stride, a.o_stride);
  set(p.do_batch_stride, p.do_row_stride, p.do_head_stride, a.dout_stride);
  set(p.dq_batch_stride, p.dq_row_stride, p.dq_head_stride, a.dq_stride);
  set(p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, a.dk_stride);
  set(p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, a.dv_stride);
  if (bias) {
    set(p.qb_batch_stride, p.qb_row_stride, p.qb_head_stride, a.qb_stride);
    set(p.kb_batch_stride, p.kb_row_stride, p.kb_head_stride, a.kb_stride);
    set(p.dqb_batch_stride, p.dqb_row_stride, p.dqb_head_stride, a.dqb_stride);
    set(p.dkb_batch_stride, p.dkb_row_stride, p.dkb_head_stride, a.dkb_stride);
    // One slice along a broadcast dimension: only index 0 is ever formed there.
    p.qb_batch_bcast = a.qb_stride.batch == 0;
    p.qb_head_bcast = a.qb_stride.head == 0;
    p.kb_batch_bcast = a.kb_stride.batch == 0;
    p.kb_head_bcast = a.kb_stride.head == 0;
    if (p.qb_batch_bcast) p.dqb_batch_stride = 0;
    if (p.qb_head_bcast) p.dqb_head_stride = 0;
    if (p.kb_batch_bcast) p.dkb_batch_stride = 0;
    if (p.kb_head_bcast) p.dkb_head_stride = 0;
  }
  p.batch = static_cast<int>(a.batch);
  p.heads = static_cast<int>(a.heads);
  p.seqlen_q = static_cast<int>(a.seqlen_q);
  p.seqlen_k = static_cast<int>(a.seqlen_k);
  p.num_m_blocks = static_cast<int>((a.seqlen_q + tile.block_m - 1) / tile.block_m);
  p.num_n_blocks = static_cast<int>((a.seqlen_k + tile.block_n - 1) / tile.block_n);
  p.num_slices = slices;
  p.scale = effective_scale(a);
  return p;
}

LaunchPlan::LaunchPlan(std::shared_ptr<const LoadedKernel> kernel, const KernelSpec& spec)
    : kernel_(std::move(kernel)), spec_(spec), sm90_(spec.key.direction == Direction::fwd && kernel_family(spec.key) == "sm90") {
  if (sm90_) {
    tma_memo_ = std::make_unique<TmaMemo>();
    // setmaxnreg.inc waits for registers the CTA's own warps released: a kernel that ptxas gave
    // fewer registers than the split assumes would hang, so it is refused here instead.
    const Sm90RegisterSplit split = sm90_register_split(spec_.key, spec_.tile);
    const long long have = 1LL * kernel_->attribute(CU_FUNC_ATTRIBUTE_NUM_REGS) * kernel_->threads();
    if (split.active && have < split.required_regs())
      throw Error(ErrorCode::unsupported,
                  fmt::format("kernel {}: its launch allocation ({} registers x {} threads) is smaller than its "
                              "warpgroups' register split ({} + {} x {} registers per thread over 128 threads); "
                              "it would deadlock in setmaxnreg",
                              spec_.str(), kernel_->attribute(CU_FUNC_ATTRIBUTE_NUM_REGS), kernel_->threads(),
                              split.producer, split.consumers, split.consumer));
  }
  if (spec_.key.direction == Direction::bwd) {
    sm90_bwd_ = kernel_family(spec_.key) == "sm90";
    bwd_tma_ = sm90_bwd_ && spec_.tile.get("kTma").value_or(0) != 0;
    if (bwd_tma_) tma_memo_ = std::make_unique<TmaMemo>();
    const BwdSmem smem = bwd_smem_bytes(spec_.key, spec_.tile);
    bwd_dkdv_smem_ = smem.dkdv;
    bwd_dq_smem_ = smem.dq;
    bwd_slices_ = bwd_slices(spec_.key, spec_.tile);
    bwd_dq_ = kernel_->module_function(kBwdEntryDq, smem.dq);
    bwd_prep_ = kernel_->module_function(kBwdEntryPrep, 0);
    bwd_reduce_ = kernel_->module_function(kBwdEntryReduce, 0);
    if (bwd_has_hi_entries(spec_.key)) {
      bwd_dkdv_hi_ = kernel_->module_function(kBwdEntryDkdvHi, smem.dkdv);
      bwd_dq_hi_ = kernel_->module_function(kBwdEntryDqHi, smem.dq);
    }
    for (const auto& [f, name, bytes] : {std::tuple{bwd_dq_, kBwdEntryDq, smem.dq},
                                         std::tuple{bwd_dkdv_hi_, kBwdEntryDkdvHi, smem.dkdv},
                                         std::tuple{bwd_dq_hi_, kBwdEntryDqHi, smem.dq}}) {
      if (f != nullptr && kernel_->max_active_blocks_per_sm(f, bytes) == 0) {
        throw Error(ErrorCode::unsupported,
                    fmt::format("kernel {} entry {} cannot be resident on this device ({} threads, {} bytes dynamic smem)",
                                spec_.str(), name, kernel_->threads(), bytes));
      }
    }
  }
}

LaunchPlan::~LaunchPlan() = default;

namespace {

std::uint32_t checked_grid(std::int64_t blocks, std::int64_t batch_heads, std::int64_t slices, const char* what) {
  std::int64_t ctas = 0;
  if (__builtin_mul_overflow(blocks, batch_heads, &ctas) || __builtin_mul_overflow(ctas, slices, &ctas) ||
      ctas > kMaxGridX) {
    throw Error(ErrorCode::unsupported,
                fmt::format("the {} launch grid {} blocks * {} batch*heads * {} slices exceeds the CUDA grid limit {}",
                            what, blocks, batch_heads, slices, kMaxGridX));
  }
  return static_cast<std::uint32_t>(ctas);
}

}  // namespace

void LaunchPlan::launch_backward(const BackwardArgs& args, void* workspace, CUstream stream,
                                 const BwdWorkspaceLayout* layout) const {
  if (spec_.key.direction != Direction::bwd)
    throw Error(ErrorCode::internal, fmt::format("launch_backward on the forward plan {}", spec_.str()));
  // The sm90 family's dq and dkdv take Sm90BwdParams (__grid_constant__; the descriptors zero
  // without kTma), prep and reduce its common block.
  const BwdWorkspaceLayout w = layout != nullptr ? *layout : bwd_workspace_layout(args);
  Sm90BwdParams sm90_params{};
  sm90_params.p = make_bwd_params(args, spec_.tile, bwd_slices_, workspace, w);
  const BwdParams& params = sm90_params.p;
  // The sm90 fp16 backward with a bias scores with Q scaled once, as the forward does
  // (folds_scale_into_q): prep writes scale * Q into the workspace (p.q_scaled), and dq and dkdv
  // read that copy in place of Q (their `q` and its strides, contiguous, and its TMA descriptors),
  // with p.q_is_scaled telling them that the scores and dK take no further scale.
  BackwardArgs tiled_args = args;
  Sm90BwdParams tiled = sm90_params;
  const bool scaled_q = sm90_bwd_ && w.has_q_scaled;
  if (scaled_q) {
    void* qs = static_cast<char*>(workspace) + w.q_scaled;
    sm90_params.p.q_scaled = qs;
    tiled.p.q = qs;
    tiled.p.q_is_scaled = 1;
    tiled_args.q = qs;
    tiled_args.q_stride = Strides{args.heads * args.seqlen_q * args.head_dim, args.head_dim, args.seqlen_q * args.head_dim};
    tiled.p.q_batch_stride = tiled_args.q_stride.batch;
    tiled.p.q_row_stride = tiled_args.q_stride.seq;
    tiled.p.q_head_stride = tiled_args.q_stride.head;
  }
  if (bwd_tma_)
    tma_memo_->get(tma_inputs(tiled_args), tma_memo_->bwd, tiled,
                   [&](Sm90BwdParams& memo) { encode_sm90_bwd_tma(tiled_args, spec_, memo); });
  void* kernel_params[] = {&sm90_params.p};
  void* tiled_params[] = {sm90_bwd_ ? static_cast<void*>(&tiled) : static_cast<void*>(&sm90_params.p)};
  const std::int64_t bh = args.batch * args.heads;
  const int threads = kernel_->threads();
  const std::int64_t rows = bh * args.seqlen_q;
  const std::int64_t rows_per_cta = threads / 8;
  const std::uint32_t prep_grid = checked_grid((rows + rows_per_cta - 1) / rows_per_cta, 1, 1, "prep");
  const std::uint32_t dkdv_grid = checked_grid(params.num_n_blocks, bh, bwd_slices_, "dK/dV");
  const std::uint32_t dq_grid = checked_grid(params.num_m_blocks, bh, bwd_slices_, "dQ");
  kernel_->launch_function(bwd_prep_, kBwdEntryPrep, prep_grid, 0, stream, kernel_params);
  // dq before dkdv: dq measures each row's Delta from its own P and dP (delta_dq), and dkdv uses
  // that (templates/sm80/bwd_kernel.cuh, "Delta").
  // Where the factor gradients do without the residual of the 16-bit dS, the entries that skip it.
  const bool hi = bwd_dq_hi_ != nullptr && !factor_grads_need_lo(args);
  kernel_->launch_function(hi ? bwd_dq_hi_ : bwd_dq_, hi ? kBwdEntryDqHi : kBwdEntryDq, dq_grid, bwd_dq_smem_,
                           stream, tiled_params);
  kernel_->launch_function(hi ? bwd_dkdv_hi_ : kernel_->function(), hi ? kBwdEntryDkdvHi : kBwdEntryDkdv, dkdv_grid,
                           bwd_dkdv_smem_, stream, tiled_params);
  if (params.dqb_accum != nullptr || params.dkb_accum != nullptr) {
    std::int64_t total = 0;
    if (params.dqb_accum)
      total += (params.qb_batch_bcast ? 1 : args.batch) * (params.qb_head_bcast ? 1 : args.heads) * args.seqlen_q * args.rank;
    if (params.dkb_accum)
      total += (params.kb_batch_bcast ? 1 : args.batch) * (params.kb_head_bcast ? 1 : args.heads) * args.seqlen_k * args.rank;
    const std::int64_t blocks = std::min<std::int64_t>((total + threads - 1) / threads, 65536);
    kernel_->launch_function(bwd_reduce_, kBwdEntryReduce, static_cast<std::uint32_t>(blocks), 0, stream,
                             kernel_params);
  }
}

void LaunchPlan::launch_forward(const ForwardArgs& args, CUstream stream) const {
  if (spec_.key.direction != Direction::fwd)
    throw Error(ErrorCode::internal, fmt::format("launch_forward on the backward plan {}", spec_.str()));
  const std::uint32_t grid = fwd_grid_size(args, spec_.tile.block_m);
  // A plan built for a key (a test, the tuner) rather than by validate_forward's routing.
  if (sm90_ && forward_scale_needs_portable(spec_.key, args.softmax_scale)) {
    throw Error(ErrorCode::unsupported,
                fmt::format("kernel {}: the sm90 fp16 forward with a bias scales Q by softmax_scale in fp16, which "
                            "needs |softmax_scale| in [2^-6, 1] (got {}); other scales run the portable family "
                            "(validate_forward gives them an sm_90 key)",
                            spec_.str(), *args.softmax_scale));
  }
  if (sm90_) {
    Sm90FwdParams params;
    params.p = make_fwd_params(args, spec_.tile.block_m);
    tma_memo_->get(tma_inputs(args), tma_memo_->params, params,
                   [&](Sm90FwdParams& memo) { encode_sm90_tma(args, spec_, memo); });
    void* kernel_params[] = {&params};  // one parameter: Sm90FwdParams by value (__grid_constant__)
    kernel_->launch(grid, 1, 1, stream, kernel_params);
    return;
  }
  FwdParams params = make_fwd_params(args, spec_.tile.block_m);
  void* kernel_params[] = {&params};  // one parameter: FwdParams by value
  kernel_->launch(grid, 1, 1, stream, kernel_params);
}

}  // namespace flashbias
