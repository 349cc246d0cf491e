// Kernel parameter blocks, shared verbatim by the host (which fills them) and the device code
// (which reads them). Plain C++ with fixed-width fields only: no host or CUDA headers.
#pragma once

#if defined(__CUDACC__)
#define FLASHBIAS_HOST_DEVICE __host__ __device__
#else
#define FLASHBIAS_HOST_DEVICE
#endif

namespace flashbias {

/// Whether a forward folds the softmax scale into Q: fp16 inputs with a bias (rank > 0) and
/// 2^-6 <= |scale| <= 1, which every default scale 1/sqrt(D) meets. Both forward families then
/// scale their Q tile in shared memory once (scale * Q in fp32, rounded once to fp16) and score
/// S = (scale Q) K^T + Qb Kb^T, so the sm90 forward runs each tile's scores as one chain of
/// products, with no wait and no multiply per score between Q K^T and the bias. |scale| <= 1
/// cannot overflow fp16, and >= 2^-6 keeps products of ordinary magnitude clear of subnormals.
/// Not bf16: its rounding of scale * Q (2^-9 relative) costs as much as the plain bf16
/// implementation's whole error (the LSE of one-key rows). Every other problem keeps
/// S = scale (Q K^T) + Qb Kb^T (without a bias the scale folds into exp2, exactly); on Hopper the
/// fp16 ones with a bias run the portable forward (validate_forward).
/// The portable backward scores with the exact scale; the sm90 one, where queries meet 1024 keys
/// or more (runtime/launch_plan.cpp, bwd_workspace_layout), scores like the forward, with the
/// scaled Q (BwdParams::q_scaled: no multiply and no wait between its score products), so its
/// gradients are those of the rounded scale * Q, as the forward's output is. Both correct the
/// forward's LSE to their own scores (BwdParams::lse_dq).
FLASHBIAS_HOST_DEVICE constexpr bool folds_scale_into_q(bool f16, int rank, float scale) {
  return f16 && rank > 0 && ((scale >= 0.015625f && scale <= 1.f) || (scale <= -0.015625f && scale >= -1.f));
}

/// Division by a divisor the host knows, as one multiply-high, one add and one shift instead of
/// the thirty-odd instructions of a run-time integer division (the forward's block decode runs
/// two per CTA). Exact for every dividend and divisor in [1, 2^31) with a dividend >= 0: with
/// s = ceil(log2 d) and m = floor(2^32 (2^s - d) / d) + 1, n / d = (hi32(n m) + n) >> s, and the
/// sum stays below 2^32 because hi32(n m) < n < 2^31.
struct FastDivisor {
  unsigned int divisor;
  unsigned int multiplier;
  unsigned int shift;
};

/// The FastDivisor of `d` (1 <= d < 2^31; the host validates the sizes it divides by). d = 0,
/// which no validated launch has, gives the identity instead of a division by zero.
FLASHBIAS_HOST_DEVICE constexpr FastDivisor make_fast_divisor(unsigned int d) {
  if (d == 0) return FastDivisor{0, 0, 0};
  unsigned int s = 0;
  while (s < 31 && (1u << s) < d) ++s;
  const unsigned long long m = ((1ull << 32) * ((1ull << s) - d)) / d + 1;
  return FastDivisor{d, static_cast<unsigned int>(m), s};
}

/// n / div.divisor for 0 <= n < 2^31 (the 64-bit product's high word compiles to one IMAD.HI).
FLASHBIAS_HOST_DEVICE constexpr unsigned int fast_divide(unsigned int n, FastDivisor div) {
  const unsigned int hi = static_cast<unsigned int>((static_cast<unsigned long long>(n) * div.multiplier) >> 32);
  return (hi + n) >> div.shift;
}

/// Forward parameters. Strides are in elements; the last dimension of every tensor is contiguous.
struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* qb;  // null when rank == 0
  const void* kb;
  void* o;
  float* lse;  // [batch, heads, seqlen_q] contiguous; may be null

  long long q_batch_stride, q_row_stride, q_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long qb_batch_stride, qb_row_stride, qb_head_stride;
  long long kb_batch_stride, kb_row_stride, kb_head_stride;
  long long o_batch_stride, o_row_stride, o_head_stride;

  int batch;
  int heads;
  int seqlen_q;
  int seqlen_k;
  int num_m_blocks;  // ceil(seqlen_q / block_m)
  float scale;       // softmax scale, applied to Q K^T only (the bias enters unscaled)
  FastDivisor m_blocks_div;  // num_m_blocks and heads as divisors: the block decode of both
  FastDivisor heads_div;     // forward families (grid <= 2^31 - 1 CTAs, runtime/validate.h)
};

/// A CUtensorMap (TMA descriptor) as the kernel receives it: 128 opaque bytes, aligned like the
/// driver header declares it (128; TMA itself needs 64).
/// The host encodes it with cuTensorMapEncodeTiled and copies it in.
struct alignas(128) TmaDescriptor {
  unsigned long long opaque[16];
};

/// Forward parameters of the sm90 family: the TMA descriptors of Q, K, V and (when the factors'
/// rows are 16-byte aligned) Qb, Kb (4-D: columns, row, head, batch; boxes of one swizzled chunk
/// of columns by block rows; a broadcast factor dimension has extent 1), then the common block.
/// Passed as a __grid_constant__ kernel parameter so the descriptors' addresses are valid for TMA.
struct Sm90FwdParams {
  TmaDescriptor tma_q;
  TmaDescriptor tma_k;
  TmaDescriptor tma_v;
  TmaDescriptor tma_qb;  // zero when unused (no factors, or factors narrower than 16 bytes)
  TmaDescriptor tma_kb;
  FwdParams p;
};

/// Backward parameters (templates/sm80/bwd_kernel.cuh). Strides in elements; last dims contiguous.
struct BwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* qb;  // null when rank == 0
  const void* kb;
  const void* o;
  const void* dout;
  const float* lse;  // [batch, heads, seqlen_q] contiguous, natural log (the forward's)
  void* dq;
  void* dk;
  void* dv;
  void* dqb;  // the caller's gradient of qb (one slice along each broadcast dimension)
  void* dkb;
  float* delta;      // workspace [batch, heads, seqlen_q]: rowsum(dO * O) (prep; the dq pass's Delta)
  float* delta_dq;   // workspace [batch, heads, seqlen_q]: delta + rowsum(dS) = rowsum(P * dP) as the dq
                     // pass measured it (written by dq; the dkdv pass's Delta)
  float* dqb_accum;  // workspace [batch, heads, seqlen_q, rank] fp32 when qb broadcasts, else null
  float* dkb_accum;  // workspace [batch, heads, seqlen_k, rank] fp32 when kb broadcasts, else null
  float* lse_dq;     // workspace [batch, heads, seqlen_q]: the row's LSE (natural log) for the
                     // backward's own scores, lse + ln(sum_j exp(S_ij - lse)) as the dq pass
                     // measured it (written by dq; the dkdv pass's LSE)

  long long q_batch_stride, q_row_stride, q_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long qb_batch_stride, qb_row_stride, qb_head_stride;
  long long kb_batch_stride, kb_row_stride, kb_head_stride;
  long long o_batch_stride, o_row_stride, o_head_stride;
  long long do_batch_stride, do_row_stride, do_head_stride;
  long long dq_batch_stride, dq_row_stride, dq_head_stride;
  long long dk_batch_stride, dk_row_stride, dk_head_stride;
  long long dv_batch_stride, dv_row_stride, dv_head_stride;
  long long dqb_batch_stride, dqb_row_stride, dqb_head_stride;
  long long dkb_batch_stride, dkb_row_stride, dkb_head_stride;

  int batch;
  int heads;
  int seqlen_q;
  int seqlen_k;
  int num_m_blocks;  // ceil(seqlen_q / block_m)
  int num_n_blocks;  // ceil(seqlen_k / block_n)
  int num_slices;    // output slices per (block, batch, head): 1, or split + 1 with a bias
  int qb_batch_bcast, qb_head_bcast;  // 1 where the factor's stride is 0 (its gradient is summed)
  int kb_batch_bcast, kb_head_bcast;
  float scale;  // softmax scale (Q K^T only)
  // sm90 fp16 backward with a bias (folds_scale_into_q): prep writes scale * Q, rounded once to
  // 16 bits as the forward's is, into q_scaled ([batch, heads, seqlen_q, head_dim], contiguous;
  // null otherwise); dq and dkdv then run with q = q_scaled and q_is_scaled = 1: their scores
  // S = (scale Q) K^T + Qb Kb^T take no multiply between the products, and dK no final scale.
  void* q_scaled;
  int q_is_scaled;
};

/// Backward parameters of the sm90 family: the common block, then (tiles with the kTma knob) the
/// TMA descriptors of the tiles its dq and dkdv kernels load. Per tensor two boxes: a block
/// tile (block_m rows: Q, dO, Qb in dq; K, V, Kb in dkdv) and a step tile (step rows: K, V, Kb
/// in dq; Q, dO, Qb in dkdv). 4-D like the forward's (columns, row, head, batch), boxes of one
/// swizzled chunk of columns. Unused descriptors are zero. Passed as a __grid_constant__ kernel
/// parameter to dq and dkdv; prep and reduce take `p` alone.
struct Sm90BwdParams {
  enum Tensor { kQ = 0, kDo = 1, kQb = 2, kK = 3, kV = 4, kKb = 5, kTensors = 6 };
  TmaDescriptor block[kTensors];
  TmaDescriptor step[kTensors];
  BwdParams p;
};

}  // namespace flashbias
