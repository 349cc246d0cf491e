// Masking component. Causal masks are aligned to the bottom-right corner (FlashAttention-2's
// convention): query i sees key j iff j <= i + (Nk - Nq); for Nq == Nk that is the usual
// top-left causal mask. Keys at or past Nk (the ragged last tile) are masked for every kind.
#pragma once

#include "common/types.cuh"

namespace flashbias {
namespace sm80 {

template <bool kCausal>
struct Mask {
  int seqlen_k;
  int diag_offset;  // Nk - Nq

  /// Does the key tile [n0, n0 + block_n) need any masking for query rows starting at m0?
  /// Only those tiles pay for the per-element test.
  __device__ __forceinline__ bool tile_needs_mask(int m0, int n0, int block_n) const {
    if (n0 + block_n > seqlen_k) return true;
    return kCausal && (n0 + block_n - 1 > m0 + diag_offset);
  }

  __device__ __forceinline__ bool masked(int row, int col) const {
    return col >= seqlen_k || (kCausal && col > row + diag_offset);
  }

  /// Exclusive end of the keys any of the rows [m0, m0 + block_m) can see.
  __device__ __forceinline__ int key_end(int m0, int block_m) const {
    if (!kCausal) return seqlen_k;
    const int end = m0 + block_m + diag_offset;
    return end < seqlen_k ? end : seqlen_k;
  }
};

}  // namespace sm80
}  // namespace flashbias
