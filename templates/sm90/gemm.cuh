// Warpgroup matrix products of the sm90 family over swizzled shared-memory tiles.
//
// Tile layout (what TMA writes with CU_TENSOR_MAP_SWIZZLE_32B/64B/128B, and what the cp.async
// loaders of the backward write by hand): a tile of `rows` x `cols` 16-bit elements is stored as
// ceil(cols / kChunk) chunks, each `rows` x kChunk elements, rows kChunk * 2 bytes wide and
// swizzled (sm90_ops.cuh, swizzle()). kChunk is 16, 32 or 64 elements (chunk_elems); a chunk of
// R rows takes R * kChunk * 2 bytes, and every tile starts on a 1024-byte boundary.
//
//  - gemm_ss: acc (+)= A B^T, A (64 rows) and B (kN rows) both K-major tiles (rows are the M / N
//    index, columns the contraction): Q K^T, dO V^T, and their transposes K Q^T, V dO^T.
//  - gemm_rs: acc += A B for one k16 step, A from registers (sm80::pack_a of an accumulator), B
//    an MN-major tile (rows are the contraction index, columns the output): P V, dS K, P^T dO,
//    dS^T Q and the factor products.
// Widths the instruction set covers (sm90/wgmma.cuh): multiples of 64 up to 256 split in pieces
// of 256/128/64, and one piece under 64 starting on a 64-column boundary.
#pragma once

#include "common/sm90_ops.cuh"
#include "sm90/wgmma.cuh"

namespace flashbias {
namespace sm90 {

/// Elements per swizzled shared-memory row for a contraction width: 16, 32 or 64 (32, 64 or 128
/// bytes, the TMA and wgmma swizzle modes).
__host__ __device__ constexpr int chunk_elems(int width) { return width <= 16 ? 16 : width <= 32 ? 32 : 64; }

/// acc (+)= A B^T over kK contraction columns (a multiple of 16). A: 64 rows at a_base; B: kN rows
/// at b_base; both K-major in chunks of kChunk columns, kAChunkBytes / kBChunkBytes apart.
/// `accumulate_first` false overwrites acc with the first k step.
template <class Element, int kN, int kK, int kChunk, int kAChunkBytes, int kBChunkBytes>
__device__ __forceinline__ void gemm_ss(float* acc, u32 a_base, u32 b_base, bool accumulate_first) {
  static_assert(kK % 16 == 0, "the contraction runs in k16 steps");
  static_assert(kN % 64 == 0 || (kN % 8 == 0 && kN < 64), "B's rows split into wgmma widths");
  constexpr int kRowBytes = kChunk * 2;
  constexpr u64 kSwz = swizzle_code(kRowBytes);
  constexpr int kPiece = kN % 256 == 0 ? 256 : kN % 128 == 0 ? 128 : kN % 64 == 0 ? 64 : kN;
  const u64 da = make_desc(a_base, 16, 8 * kRowBytes, kSwz);
  const u64 db = make_desc(b_base, 16, 8 * kRowBytes, kSwz);
#pragma unroll
  for (int k0 = 0; k0 < kK; k0 += 16) {
    const u32 koff = (k0 % kChunk) * 2;
    const u64 a = da + ((u64((k0 / kChunk) * kAChunkBytes) + koff) >> 4);
    const u64 b = db + ((u64((k0 / kChunk) * kBChunkBytes) + koff) >> 4);
    const int accumulate = (accumulate_first || k0 > 0) ? 1 : 0;
#pragma unroll
    for (int n = 0; n < kN; n += kPiece) Wgmma<Element, kPiece>::ss(acc + n / 2, a, b + ((n * kRowBytes) >> 4), accumulate);
  }
}

/// acc[:, kP0 : kNTotal) += A B for one k16 step: A from registers, B the 16 rows starting at
/// b_rows of an MN-major tile whose kNTotal columns come in chunks of kChunk, kChunkBytes apart.
template <class Element, int kNTotal, int kChunk, int kChunkBytes, int kP0 = 0>
__device__ __forceinline__ void gemm_rs(float* acc, const u32 (&a)[4], u32 b_rows) {
  constexpr int kRem = kNTotal - kP0;
  if constexpr (kRem > 0) {
    constexpr int kRowBytes = kChunk * 2;
    constexpr int kN = kRem >= 256 ? 256 : kRem >= 128 ? 128 : kRem >= 64 ? 64 : kRem;
    const u64 d = make_desc(b_rows + (kP0 / kChunk) * kChunkBytes, kChunkBytes, 8 * kRowBytes, swizzle_code(kRowBytes));
    Wgmma<Element, kN>::rs(acc + kP0 / 2, a, d);
    gemm_rs<Element, kNTotal, kChunk, kChunkBytes, kP0 + kN>(acc, a, b_rows);
  }
}

/// Pin an accumulator (float) or A fragments (u32) across the asynchronous wgmma window.
template <class T, int kN>
__device__ __forceinline__ void fence_regs(T (&r)[1][kN][4]) {
#pragma unroll
  for (int i = 0; i < kN; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) reg_fence(r[0][i][e]);
}

}  // namespace sm90
}  // namespace flashbias
