// Global -> shared tile copies for the sm80 family.
//
// A tile is kRows rows of kColsPad elements (kColsValid of them real, the rest zero) stored at a
// row stride of kStride elements. Each thread moves kAlign-byte chunks with cp.async (zero-filling
// rows past the end of the sequence and the padding columns), so the copy overlaps the math.
// kAlign is the widest access every row allows (decided on the host from pointers and strides);
// at 2 bytes cp.async cannot be used and the copy falls back to ordinary loads and stores.
#pragma once

#include "common/sm80_ops.cuh"

namespace flashbias {
namespace sm80 {

template <class Element, int kRows, int kColsValid, int kColsPad, int kStride, int kAlign, int kThreads>
struct TileLoader {
  static_assert(kAlign == 2 || kAlign == 4 || kAlign == 8 || kAlign == 16, "alignment must be 2, 4, 8 or 16 bytes");
  static_assert((kColsValid * 2) % kAlign == 0, "a chunk must not straddle the last valid column");
  static_assert(kColsPad % 8 == 0 && kStride % 8 == 0, "shared rows must start on 16-byte boundaries");
  static constexpr int kElemsPerChunk = kAlign / 2;
  static constexpr int kChunksPerRow = kColsPad / kElemsPerChunk;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static constexpr int kIters = ceil_div(kChunks, kThreads);
  /// Passes per thread up to which a tile that is not row-aligned copies fully unrolled; past it,
  /// narrow chunks copy in a loop (copy_narrow_batched for 2-byte ones; TileWalk the same).
  static constexpr int kMaxUnrolledIters = 8;

  // When a whole number of rows is covered per pass, each thread keeps one column and walks
  // rows with a running pointer: a few live registers instead of one hoisted address per pass.
  static constexpr bool kRowAligned = kThreads % kChunksPerRow == 0;
  static constexpr int kRowsPerPass = kRowAligned ? kThreads / kChunksPerRow : 0;

  /// Copy rows [row0, row0 + kRows) of `g` (row stride `row_stride` elements) into the shared
  /// tile at `s` (a generic pointer) / `s_addr` (the same tile's shared-window address).
  /// Rows at or past `rows_valid` and columns at or past kColsValid become zeros.
  static __device__ __forceinline__ void load(Element* s, u32 s_addr, const Element* g, long long row_stride,
                                              int row0, int rows_valid, int tid) {
    if constexpr (kRowAligned) {
      const int r0 = tid / kChunksPerRow;
      const int c = (tid % kChunksPerRow) * kElemsPerChunk;
      const Element* src = g + (long long)(row0 + r0) * row_stride + c;
      const long long pass_stride = (long long)kRowsPerPass * row_stride;
#pragma unroll
      for (int it = 0; it < ceil_div(kRows, kRowsPerPass); ++it) {
        const int r = r0 + it * kRowsPerPass;
        if (kRows % kRowsPerPass != 0 && r >= kRows) break;
        const bool valid = (row0 + r < rows_valid) && (c < kColsValid);
        copy(s, s_addr, r * kStride + c, valid ? src : g, valid);
        src += pass_stride;
      }
    } else {
      const auto one = [&](int it) {
        const int i = it * kThreads + tid;
        const int r = i / kChunksPerRow;
        const int c = (i % kChunksPerRow) * kElemsPerChunk;
        const bool valid = (row0 + r < rows_valid) && (c < kColsValid);
        // An invalid chunk still needs a mapped source address for cp.async: use the tile base.
        copy(s, s_addr, r * kStride + c, valid ? g + (long long)(row0 + r) * row_stride + c : g, valid);
      };
      if constexpr (kIters <= kMaxUnrolledIters || kAlign == 16) {
#pragma unroll
        for (int it = 0; it < kIters; ++it) {
          if (kChunks % kThreads != 0 && it * kThreads + tid >= kChunks) break;
          one(it);
        }
      } else {
        // Many narrow passes (rows under 16-byte alignment whose chunks do not tile the
        // threads, e.g. odd ranks of 120 padded columns: 60 two-byte copies per thread):
        // unrolled whole they hoisted every pass's address and spilled kilobytes in the backward
        // (compile scan, session 21). 2-byte chunks copy in batches of loads then stores; 4- and
        // 8-byte ones (cp.async) in a rolled loop. 16-byte rows (d72's nine chunks) stay unrolled.
        if constexpr (kAlign == 2) {
          copy_narrow_batched(s, g, row_stride, row0, rows_valid, tid);
        } else {
#pragma unroll 1
          for (int it = 0; it < kIters; ++it) {
            if (kChunks % kThreads != 0 && it * kThreads + tid >= kChunks) break;
            one(it);
          }
        }
      }
    }
  }

  /// Past kMaxUnrolledIters passes, 2-byte chunks (ordinary loads and stores, not cp.async) are copied in a
  /// loop over batches of kNarrowBatch passes, the batch's loads issued before its stores: a
  /// rolled loop of single copies waits out each load's latency before the next (the forward's
  /// walk measured 1.9x slower that way), while the whole unroll hoists every pass's address.
  static constexpr int kNarrowBatch = 4;
  /// Rows [row0, row0 + kRows) of `g` into `s` by kNarrowBatch-pass batches (kAlign 2 only);
  /// kWalked: every row is valid (TileWalk, `g` at the tile's row 0), so only the padding columns are
  /// tested.
  template <bool kWalked = false>
  static __device__ __forceinline__ void copy_narrow_batched(Element* s, const Element* g, long long row_stride,
                                                             int row0, int rows_valid, int tid) {
    static_assert(kAlign == 2, "batched copies are for 2-byte chunks");
#pragma unroll 1
    for (int it0 = 0; it0 < kIters; it0 += kNarrowBatch) {
      u16 v[kNarrowBatch];
      int at[kNarrowBatch];
#pragma unroll
      for (int j = 0; j < kNarrowBatch; ++j) {
        const int i = (it0 + j) * kThreads + tid;
        const int r = i / kChunksPerRow;
        const int c = i - r * kChunksPerRow;  // one element per chunk
        const bool in_tile = (kIters % kNarrowBatch == 0 || it0 + j < kIters) && (kChunks % kThreads == 0 || i < kChunks);
        const bool valid = in_tile && (kWalked || row0 + r < rows_valid) && c < kColsValid;
        v[j] = valid ? g[(long long)(kWalked ? r : row0 + r) * row_stride + c].bits : u16(0);
        at[j] = in_tile ? r * kStride + c : -1;
      }
#pragma unroll
      for (int j = 0; j < kNarrowBatch; ++j)
        if (at[j] >= 0) s[at[j]].bits = v[j];
    }
  }

  static __device__ __forceinline__ void copy(Element* s, u32 s_addr, int offset, const Element* src, bool valid) {
    if constexpr (kAlign >= 4) {
      cp_async<kAlign>(s_addr + offset * 2, src, valid);
    } else {
      s[offset].bits = valid ? src->bits : u16(0);
    }
  }
};

/// Whole tiles of one tensor loaded in order towards row 0, as the forward visits its key tiles
/// (last to first): each thread keeps a running source pointer and steps it back by one tile per
/// load, so a tile costs its copies and a few adds, not the row products, bounds tests and
/// selects of TileLoader::load (which the forward keeps for the tile that may end past the
/// sequence). Every row of a walked tile must be valid.
template <class Element, int kRows, int kColsValid, int kColsPad, int kStride, int kAlign, int kThreads>
struct TileWalk {
  using Loader = TileLoader<Element, kRows, kColsValid, kColsPad, kStride, kAlign, kThreads>;
  static constexpr int kElemsPerChunk = Loader::kElemsPerChunk;
  static constexpr int kChunksPerRow = Loader::kChunksPerRow;
  static constexpr int kRowsPerPass = Loader::kRowsPerPass;

  // Row-aligned tiles: this thread's first chunk of the next tile (column 0 of its row when its
  // chunk lies in the padding columns: it copies zeros, and cp.async still gets an address inside
  // the tensor, as TileLoader::load gives it). Otherwise: the tile's row 0.
  const Element* src;

  /// Point at the tile whose first row is `row0` of `g` (row stride `row_stride` elements).
  __device__ __forceinline__ void start(const Element* g, long long row_stride, int row0, int tid) {
    if constexpr (Loader::kRowAligned) {
      const int c = (tid % kChunksPerRow) * kElemsPerChunk;
      src = g + (long long)(row0 + tid / kChunksPerRow) * row_stride + (c < kColsValid ? c : 0);
    } else {
      src = g + (long long)row0 * row_stride;
    }
  }

  /// Copy the tile `src` points at into the shared tile at `s` / `s_addr` (zero padding columns),
  /// then step back one tile.
  __device__ __forceinline__ void load_and_step_back(Element* s, u32 s_addr, long long row_stride, int tid) {
    if constexpr (Loader::kRowAligned) {
      const int r0 = tid / kChunksPerRow;
      const int c = (tid % kChunksPerRow) * kElemsPerChunk;
      const bool valid = c < kColsValid;
#pragma unroll
      for (int it = 0; it < ceil_div(kRows, kRowsPerPass); ++it) {
        const int r = r0 + it * kRowsPerPass;
        if (kRows % kRowsPerPass != 0 && r >= kRows) break;
        Loader::copy(s, s_addr, r * kStride + c, src + it * ((long long)kRowsPerPass * row_stride), valid);
      }
    } else if constexpr (kAlign == 2 && Loader::kIters > Loader::kMaxUnrolledIters) {
      // Many 2-byte passes (odd ranks past 32: up to 60 per thread): batched, as in the loader.
      Loader::template copy_narrow_batched<true>(s, src, row_stride, 0, kRows, tid);
    } else {
#pragma unroll
      for (int it = 0; it < Loader::kIters; ++it) {
        const int i = it * kThreads + tid;
        if (Loader::kChunks % kThreads != 0 && i >= Loader::kChunks) break;
        const int r = i / kChunksPerRow;
        const int c = (i % kChunksPerRow) * kElemsPerChunk;
        const bool valid = c < kColsValid;
        Loader::copy(s, s_addr, r * kStride + c, valid ? src + (long long)r * row_stride + c : src, valid);
      }
    }
    src -= kRows * row_stride;
  }
};

}  // namespace sm80
}  // namespace flashbias
