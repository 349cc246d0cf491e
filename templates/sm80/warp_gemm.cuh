// Warp-level tensor-core products on shared-memory tiles for the sm80 family, in the mma.sync
// m16n8k16 register layouts, sized by template arguments (the backward kernels use them with
// several operand shapes per kernel).
//
//   gemm_nt:  acc[MT][NT] += A B^T   A: MT*16 rows of this warp, B: NT*8 rows; both row-major in
//             shared memory with kCols contraction columns (a multiple of 8; a k8 step finishes
//             a contraction that is not a multiple of 16).
//   gemm_rs:  acc[MT][NT] += A B     A: register fragments (MT x KK k16 steps), B: KK*16 rows of
//             NT*8 columns of a row-major shared tile, read transposed by ldmatrix.trans (NT may
//             be odd: the last n8 tile is read with x2). With kSums, also sums[MT] += A ones:
//             each row's sum of A (in every column of the m16n8 result), one more k16 product
//             per m-tile and k16 step, issued among the others so its chain is no longer.
//   pack_a:   fp32 C-layout tile -> 16-bit A fragments (the C layout of two adjacent n8 tiles is
//             the A layout of one k16 step).
#pragma once

#include "common/sm80_ops.cuh"

namespace flashbias {
namespace sm80 {

template <class Element, int MT, int NT, int kCols, int kStride>
__device__ __forceinline__ void gemm_nt(float (&acc)[MT][NT][4], u32 sA, u32 sB, int lane) {
  static_assert(NT % 2 == 0, "gemm_nt takes n8 tiles in pairs");
  constexpr int kRowBytes = kStride * 2;
  const u32 a_lane = sA + (lane & 15) * kRowBytes + (lane >> 4) * 16;
  const u32 b_lane = sB + ((lane & 7) + ((lane >> 4) << 3)) * kRowBytes + ((lane >> 3) & 1) * 16;
#pragma unroll
  for (int k0 = 0; k0 + 16 <= kCols; k0 += 16) {
    u32 a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(a[mt], a_lane + mt * 16 * kRowBytes + k0 * 2);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      u32 b[4];
      ldmatrix_x4(b, b_lane + np * 16 * kRowBytes + k0 * 2);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        Mma<Element>::k16(acc[mt][2 * np], a[mt], b[0], b[1]);
        Mma<Element>::k16(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
      }
    }
  }
  if constexpr (kCols % 16 == 8) {
    constexpr int k0 = kCols - 8;
    const u32 a8_lane = sA + (lane & 15) * kRowBytes;
    const u32 b8_lane = sB + (lane & 15) * kRowBytes;
    u32 a[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) ldmatrix_x2(a[mt], a8_lane + mt * 16 * kRowBytes + k0 * 2);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      u32 b[2];
      ldmatrix_x2(b, b8_lane + np * 16 * kRowBytes + k0 * 2);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        Mma<Element>::k8(acc[mt][2 * np], a[mt], b[0]);
        Mma<Element>::k8(acc[mt][2 * np + 1], a[mt], b[1]);
      }
    }
  }
}

template <class Element, int MT, int KK, int NT, int kStride, bool kSums = false>
__device__ __forceinline__ void gemm_rs(float (&acc)[MT][NT][4], const u32 (&a)[MT][KK][4], u32 sB, int lane,
                                        float (*sums)[4] = nullptr) {
  constexpr u32 kOnes = ElementTraits<Element>::kOnePair;
  constexpr int kRowBytes = kStride * 2;
  const u32 b_lane = sB + ((lane & 7) + ((lane >> 3) & 1) * 8) * kRowBytes + (lane >> 4) * 16;
  const u32 b2_lane = sB + (lane & 15) * kRowBytes;
#pragma unroll
  for (int kk = 0; kk < KK; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      u32 b[4];
      ldmatrix_x4_trans(b, b_lane + kk * 16 * kRowBytes + np * 32);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        Mma<Element>::k16(acc[mt][2 * np], a[mt][kk], b[0], b[1]);
        Mma<Element>::k16(acc[mt][2 * np + 1], a[mt][kk], b[2], b[3]);
      }
    }
    if constexpr (NT % 2 == 1) {
      u32 b[2];
      ldmatrix_x2_trans(b, b2_lane + kk * 16 * kRowBytes + (NT - 1) * 16);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) Mma<Element>::k16(acc[mt][NT - 1], a[mt][kk], b[0], b[1]);
    }
    if constexpr (kSums) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) Mma<Element>::k16(sums[mt], a[mt][kk], kOnes, kOnes);
    }
  }
}

template <class Element, int MT, int NT>
__device__ __forceinline__ void pack_a(u32 (&out)[MT][NT / 2][4], const float (&c)[MT][NT][4]) {
  static_assert(NT % 2 == 0, "a k16 A fragment takes two n8 C tiles");
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk) {
      out[mt][kk][0] = ElementTraits<Element>::pack(c[mt][2 * kk][0], c[mt][2 * kk][1]);
      out[mt][kk][1] = ElementTraits<Element>::pack(c[mt][2 * kk][2], c[mt][2 * kk][3]);
      out[mt][kk][2] = ElementTraits<Element>::pack(c[mt][2 * kk + 1][0], c[mt][2 * kk + 1][1]);
      out[mt][kk][3] = ElementTraits<Element>::pack(c[mt][2 * kk + 1][2], c[mt][2 * kk + 1][3]);
    }
}

/// The rounding error of pack_a, scaled by kLoScale and packed the same way: c = hi + lo / kLoScale
/// to about twice the element's precision. `hi` is pack_a's output for the same c. The scale keeps
/// the residual of small values out of the 16-bit subnormal range (fp16 bottoms out at 2^-24).
template <class Element, int MT, int NT>
__device__ __forceinline__ void pack_a_residual(u32 (&lo)[MT][NT / 2][4], const u32 (&hi)[MT][NT / 2][4],
                                                const float (&c)[MT][NT][4], float lo_scale) {
  using T = ElementTraits<Element>;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int kk = 0; kk < NT / 2; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float a = c[mt][2 * kk + (r >> 1)][2 * (r & 1)];
        const float b = c[mt][2 * kk + (r >> 1)][2 * (r & 1) + 1];
        const u32 h = hi[mt][kk][r];
        lo[mt][kk][r] = T::pack((a - T::to_float(u16(h & 0xffffu))) * lo_scale, (b - T::to_float(u16(h >> 16))) * lo_scale);
      }
}

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
}

}  // namespace sm80
}  // namespace flashbias
