// Online softmax in fp32 for accumulators in the mma.sync C layout.
//
// Each thread holds, for every 16-row m-tile, two rows (g and g + 8, g = lane / 4); a row's
// values are spread over the 4 lanes of a quad, so row reductions are two butterfly shuffles.
// Scores are kept in "raw" units x and exponentiated as exp2(x * scale_log2 - max * scale_log2),
// one FFMA and one ex2 per element: with no bias the softmax scale is folded into scale_log2;
// with a bias the scale was applied to Q K^T before the bias was added, and scale_log2 = log2(e).
// A row whose running max is -inf (fully masked so far) subtracts 0 instead, so no inf - inf.
#pragma once

#include "common/sm80_ops.cuh"

namespace flashbias {
namespace sm80 {

/// A forward without a bias folds the softmax scale into exp2, keeping scores in raw units. That
/// needs a positive scale: for a negative one the raw row max is the smallest exponent (large
/// score ranges overflow) and a masked score, -inf in raw units, would turn into +inf (into NaN
/// for a zero scale). So for scale <= 0 the kernels transform the Q tile in shared memory once per
/// CTA (flip every element's sign for scale < 0, zero it for scale == 0: both exact) and run the
/// unchanged tile loop with this exponent scale, |scale| log2(e) (log2(e) for 0).
__device__ __forceinline__ float nobias_scale_log2(float scale) {
  return scale > 0.f ? scale * kLog2e : (scale < 0.f ? -scale * kLog2e : kLog2e);
}

/// Two 16-bit elements of Q transformed for a scale <= 0 (see nobias_scale_log2).
__device__ __forceinline__ u32 q_for_nonpositive_scale(u32 w, float scale) {
  return scale < 0.f ? (w ^ 0x80008000u) : 0u;
}

// kSelectMax: the row max by compare and select (FSETP + FSEL) instead of max_ (one FMNMX); see
// sm90::FwdKnobs::kMaxSelect.
// kLazyRescale: a row keeps the max it exponentiates against until a tile raises it by more than
// kRescaleLog2 (in log2 units), so its probabilities stay below 2^kRescaleLog2 (exact in fp32,
// and far from the 16-bit formats' range when packed for P V); update() rescales the output
// accumulator only when some row of the warp moved (one vote per tile). Past the first tiles the
// max of random or biased scores rarely jumps that far, so the O *= corr multiplies (D / 4 per
// thread and row each tile: twice the thread's scores at d128 with 64-key tiles) are mostly
// skipped. The result is the same function: O, the row sum and the LSE all refer to the kept max.
// kMmaSum: the row sums come from the tensor cores instead of one FADD per score: the packed
// 16-bit P (the A operand of P V) times a B fragment of ones, accumulated in fp32 beside O inside
// the P V product (gemm_rs with kSums, on sum_acc), so the denominator sums exactly the
// probabilities that P V multiplies, and the quad reduction at the end goes away (each row's full
// sum lands in every column of the product).
template <int kMTiles, int kNTiles, int kDTiles, bool kSelectMax = false, bool kLazyRescale = false,
          bool kMmaSum = false>
struct OnlineSoftmax {
  static constexpr float kRescaleLog2 = 8.f;
  float row_max[kMTiles][2];  // raw units
  float row_sum[kMTiles][2];  // this thread's partial sum; reduced over the quad at the end
  // kMmaSum: the sums as an m16n8 accumulator (c0 is row g's sum, c2 row g + 8's; all 8 columns
  // hold the same sums). Only c0 and c2 are rescaled and read.
  float sum_acc[kMTiles][4];  // untouched (and so not allocated) without kMmaSum

  static __device__ __forceinline__ float larger(float a, float b) {
    if constexpr (kSelectMax)
      return a > b ? a : b;
    else
      return max_(a, b);
  }

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        row_max[mt][h] = neg_inf();
        row_sum[mt][h] = 0.f;
      }
    if constexpr (kMmaSum) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sum_acc[mt][e] = 0.f;
    }
  }

  /// Fold one tile of scores into the running max and sum, turn `s` into probabilities
  /// (unnormalised), and rescale the output accumulator by exp(old max - new max).
  __device__ __forceinline__ void update(float (&s)[kMTiles][kNTiles][4], float (&o)[kMTiles][kDTiles][4],
                                         float scale_log2) {
    float corr[kMTiles][2];
    const bool moved = probabilities(s, scale_log2, corr);
    if (!kLazyRescale || warp_any(moved)) rescale(o, corr);
  }

  /// update() without touching the output accumulator: `corr` receives the factor that rescale()
  /// applies to it later (so that a product still accumulating into it can run meanwhile).
  /// Returns whether any of this thread's rows changed its max (with kLazyRescale, corr is exactly
  /// 1 for the rows that did not).
  __device__ __forceinline__ bool probabilities(float (&s)[kMTiles][kNTiles][4], float scale_log2,
                                                float (&corr)[kMTiles][2]) {
    bool moved = false;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = row_max[mt][h];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) mx = larger(mx, larger(s[mt][nt][2 * h], s[mt][nt][2 * h + 1]));
        mx = larger(mx, shfl_xor(mx, 1));
        mx = larger(mx, shfl_xor(mx, 2));
        if constexpr (kLazyRescale) {
          // -inf - -inf is NaN: a row that has seen no key yet keeps -inf until one arrives.
          const bool keep = !(mx * scale_log2 - row_max[mt][h] * scale_log2 > kRescaleLog2);
          if (keep) mx = row_max[mt][h];
          moved |= !keep;
        }
        const float m_scaled = mx == neg_inf() ? 0.f : mx * scale_log2;
        corr[mt][h] = fast_exp2(row_max[mt][h] * scale_log2 - m_scaled);
        if constexpr (kLazyRescale) {
          if (mx == row_max[mt][h]) corr[mt][h] = 1.f;
        }
        row_max[mt][h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          s[mt][nt][2 * h] = fast_exp2(s[mt][nt][2 * h] * scale_log2 - m_scaled);
          s[mt][nt][2 * h + 1] = fast_exp2(s[mt][nt][2 * h + 1] * scale_log2 - m_scaled);
          if constexpr (!kMmaSum) sum += s[mt][nt][2 * h] + s[mt][nt][2 * h + 1];
        }
        if constexpr (!kMmaSum) row_sum[mt][h] = row_sum[mt][h] * corr[mt][h] + sum;
      }
    }
    return kLazyRescale ? moved : true;
  }

  __device__ __forceinline__ void rescale(float (&o)[kMTiles][kDTiles][4], const float (&corr)[kMTiles][2]) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][dt][e] *= corr[mt][e >> 1];
    if constexpr (kMmaSum) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        sum_acc[mt][0] *= corr[mt][0];
        sum_acc[mt][2] *= corr[mt][1];
      }
    }
  }

  /// Complete the row sums across the quad. Afterwards inv_sum() and lse() are final.
  __device__ __forceinline__ void finalize() {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) row_sum[mt][h] = kMmaSum ? sum_acc[mt][2 * h] : quad_sum(row_sum[mt][h]);
  }

  /// 1 / row sum, or 0 for a row that saw no key (its output is then 0).
  __device__ __forceinline__ float inv_sum(int mt, int h) const {
    return row_sum[mt][h] > 0.f ? 1.f / row_sum[mt][h] : 0.f;
  }

  /// Natural-log log-sum-exp of the row's scores; -inf for a row that saw no key.
  __device__ __forceinline__ float lse(int mt, int h, float scale_log2) const {
    if (!(row_sum[mt][h] > 0.f)) return neg_inf();
    return (row_max[mt][h] * scale_log2 + fast_log2(row_sum[mt][h])) * kLn2;
  }
};

}  // namespace sm80
}  // namespace flashbias
