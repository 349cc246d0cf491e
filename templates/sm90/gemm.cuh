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

/// A shared-memory address in 16-byte units: the start-address field of a wgmma descriptor.
/// Tiles start on 1024-byte boundaries inside the shared window (under 256 KiB), so the field
/// (14 bits) never carries into the next one, and a descriptor at a compile-time offset from a
/// tile is one 32-bit add (desc_at). Kernels convert each tile's address once (units()), outside
/// their loops; converting at every product would cost a shift and masks per wgmma.
struct SmemUnits {
  u32 v;
};
__device__ __forceinline__ SmemUnits units(u32 byte_addr) { return SmemUnits{byte_addr >> 4}; }
__device__ __forceinline__ SmemUnits operator+(SmemUnits a, u32 units) { return SmemUnits{a.v + units}; }

/// The wgmma descriptor of the operand `byte_off` bytes (a multiple of 16) past `base`: start
/// address (bits 0-13), leading and stride byte offsets kLbo, kSbo (bits 16-29, 32-45, all in
/// 16-byte units) and swizzle code kSwz (bits 62-63, common/sm90_ops.cuh swizzle_code). Every tile
/// starts on a 1024-byte boundary, so the base offset (bits 49-51) is 0.
template <u32 kLbo, u32 kSbo, u64 kSwz>
__device__ __forceinline__ u64 desc_at(SmemUnits base, u32 byte_off) {
  constexpr u32 kLo = ((kLbo & 0x3FFFF) >> 4) << 16;
  constexpr u32 kHi = ((kSbo & 0x3FFFF) >> 4) | u32(kSwz << 30);
  return (u64(kHi) << 32) | u64(base.v + (byte_off >> 4) + kLo);
}

/// acc (+)= A B^T over kK contraction columns (a multiple of 16). A: 64 rows at a_base; B: kN rows
/// at b_base; both K-major in chunks of kChunk columns, kAChunkBytes / kBChunkBytes apart.
/// `accumulate_first` false overwrites acc with the first k step.
template <class Element, int kN, int kK, int kChunk, int kAChunkBytes, int kBChunkBytes>
__device__ __forceinline__ void gemm_ss(float* acc, SmemUnits a_base, SmemUnits b_base, bool accumulate_first) {
  static_assert(kK % 16 == 0, "the contraction runs in k16 steps");
  static_assert(kN % 64 == 0 || (kN % 8 == 0 && kN < 64), "B's rows split into wgmma widths");
  constexpr int kRowBytes = kChunk * 2;
  constexpr u64 kSwz = swizzle_code(kRowBytes);
  constexpr int kPiece = kN % 256 == 0 ? 256 : kN % 128 == 0 ? 128 : kN % 64 == 0 ? 64 : kN;
#pragma unroll
  for (int k0 = 0; k0 < kK; k0 += 16) {
    const u32 koff = (k0 % kChunk) * 2;
    const u64 a = desc_at<16, 8 * kRowBytes, kSwz>(a_base, (k0 / kChunk) * kAChunkBytes + koff);
    const int accumulate = (accumulate_first || k0 > 0) ? 1 : 0;
#pragma unroll
    for (int n = 0; n < kN; n += kPiece) {
      const u64 b = desc_at<16, 8 * kRowBytes, kSwz>(b_base, (k0 / kChunk) * kBChunkBytes + koff + n * kRowBytes);
      Wgmma<Element, kPiece>::ss(acc + n / 2, a, b, accumulate);
    }
  }
}
template <class Element, int kN, int kK, int kChunk, int kAChunkBytes, int kBChunkBytes>
__device__ __forceinline__ void gemm_ss(float* acc, u32 a_base, u32 b_base, bool accumulate_first) {
  gemm_ss<Element, kN, kK, kChunk, kAChunkBytes, kBChunkBytes>(acc, units(a_base), units(b_base), accumulate_first);
}

/// acc[:, kP0 : kNTotal) += A B for one k16 step: A from registers, B the 16 rows starting at
/// b_rows of an MN-major tile whose kNTotal columns come in chunks of kChunk, kChunkBytes apart.
template <class Element, int kNTotal, int kChunk, int kChunkBytes, int kP0 = 0>
__device__ __forceinline__ void gemm_rs(float* acc, const u32 (&a)[4], SmemUnits b_rows) {
  constexpr int kRem = kNTotal - kP0;
  if constexpr (kRem > 0) {
    constexpr int kRowBytes = kChunk * 2;
    constexpr int kN = kRem >= 256 ? 256 : kRem >= 128 ? 128 : kRem >= 64 ? 64 : kRem;
    const u64 d = desc_at<kChunkBytes, 8 * kRowBytes, swizzle_code(kRowBytes)>(b_rows, (kP0 / kChunk) * kChunkBytes);
    Wgmma<Element, kN>::rs(acc + kP0 / 2, a, d);
    gemm_rs<Element, kNTotal, kChunk, kChunkBytes, kP0 + kN>(acc, a, b_rows);
  }
}
template <class Element, int kNTotal, int kChunk, int kChunkBytes>
__device__ __forceinline__ void gemm_rs(float* acc, const u32 (&a)[4], u32 b_rows) {
  gemm_rs<Element, kNTotal, kChunk, kChunkBytes, 0>(acc, a, units(b_rows));
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
