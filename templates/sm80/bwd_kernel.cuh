// FlashBias backward, sm80 family (mma.sync + ldmatrix + cp.async; runs on sm_80 and newer).
//
//   S = scale Q K^T + Qb Kb^T (+ mask),  P = exp(S - LSE),  dV = P^T dO,  dP = dO V^T,
//   Delta = rowsum(dO * O),  dS = P * (dP - Delta),
//   dQ = scale dS K,  dK = scale dS^T Q,  dQb = dS Kb,  dKb = dS^T Qb.
//
// Deterministic by construction: every output element is summed by exactly one thread in a fixed
// order, with no atomics. Four entry points share one module (generated together, one cubin):
//   prep:   Delta per query row.
//   dq:     one CTA per (query block, batch, head, slice); warps own query rows; walks the key
//           blocks and accumulates dQ (and dQb), and the LSE of its own scores ("LSE" below). It
//           recomputes S and dP instead of sharing dS with dkdv through atomics or a global
//           buffer (the cost of determinism: two extra products of the seven).
//   dkdv:   one CTA per (key block, batch, head, slice); warps own key rows; walks the query
//           blocks that see the key block and accumulates dK, dV (and dKb) in registers.
//   reduce: sums the fp32 factor gradients over broadcast batch/head dimensions (fixed order)
//           into the caller's dQb/dKb; only launched when a factor broadcasts.
// The bias is R extra contraction columns of S and R extra output columns of dQ/dK, padded to a
// multiple of 8 in shared memory only.
//
// Delta. rowsum(dO * O) takes the caller's 16-bit O, whose rounding moves Delta off the exact
// rowsum(P * dP) by ~1e-4 relative; every dS of the row shifts by P times that, and sum_j dS_ij
// no longer cancels to zero. The factor gradients are such cancelling sums: on short or broadcast
// rows (a few keys, or a factor shared over everything) that shift alone cost dKb and dQb up to
// 1e-1 relative error in fp64 simulation. So the passes run prep, dq, dkdv:
//   dq adds up Sigma_i = sum_j dS_ij (zero when Delta is exact) and writes delta_dq = Delta +
//      Sigma, which is rowsum(P * dP) with the kernel's own P and dP; its dQb becomes exact with
//      dQb_i -= Sigma_i * sum_j P_ij Kb_j (one more R-column product, P times Kb);
//   dkdv takes delta_dq, so dK, dV and dKb see the exact Delta.
// dQ keeps the shift. It is a cancelling sum too, but over D columns and every row, so it stays
// within 6e-4 on the test matrix's shapes in the same simulation; a problem of one or two rows of
// two or three keys each errs like the plain implementation (4-14% of random inputs over 2e-3).
// When a CTA's rows see a single key tile (short sequences), dq measures Delta = rowsum(P * dP)
// in that tile before forming dS, which makes all five gradients exact there at no cost.
// Without a bias there is no factor gradient, and dK is no cancelling sum over keys, so Sigma
// is not formed (delta_dq = Delta); the row sums cost the dq kernel an add per score.
//
// LSE. The forward's LSE is the log-sum-exp of the forward's own scores, which may differ from
// the backward's S = scale Q K^T + Qb Kb^T by the rounding of scale * Q (an fp16 forward with a
// bias folds the scale into Q: common/params.h, folds_scale_into_q) and by the approximate exp2
// and log2. P' = exp(S - LSE) then sums to 1 + O(1e-4) per row, which single-key rows and the
// cancelling factor gradients turn into errors of a few 1e-3. So dq also adds up
// c_i = rowsum(P') (one add per score) and takes its sums from P' to P = P' / c_i at the end:
// dQ, dQb, Sigma and P Kb scale by 1 / c_i (a single-tile row's measured Delta too), and it writes
// lse_dq = LSE + ln c_i, with which dkdv's P is exact.
// Cost with a bias (H100, A/B in one session, fwd+bwd): +7.6% on seed_n16k (this family), +6.5%
// on llm_d64 (sm90), about +3% there once the sm90 dq was back at three CTAs per SM.
//
// kSplit > 1 cuts the output columns into slices computed by separate CTAs: kSplit slices of the
// head dim (dK and dV, or dQ) plus one for the factor gradient (which also gets its own slice at
// rank > 32). Each slice recomputes S and dP, and holds only its own accumulators: how wide heads
// (d > 128) and wide factors avoid spilling.
#pragma once

#include "common/manifest.h"
#include "common/params.h"
#include "common/sm80_ops.cuh"
#include "sm80/mask.cuh"
#include "sm80/tile_loader.cuh"
#include "sm80/warp_gemm.cuh"

namespace flashbias {
namespace sm80 {

/// Dynamic shared memory is declared in 16-byte words so that cp.async destinations are aligned.
struct alignas(16) BwdSmemWord { u32 w[4]; };

__device__ __forceinline__ u32 grid_dim() { u32 r; asm("mov.u32 %0, %%nctaid.x;" : "=r"(r)); return r; }

/// The main loop of the backward's tiled kernels (both families) over tiles [begin, end):
/// load(i, buf) issues tile i's cp.async copies (committed here), body(i, buf) runs once they have
/// landed and, after visible() (sm90: the proxy fence that hands them to wgmma) and a CTA barrier,
/// are visible to every thread. Two stages prefetch tile i + 1 during body(i) and need a second
/// barrier after it (before its buffer is refilled); three stages prefetch tile i + 2 into the
/// buffer of tile i - 1, which the one barrier before body(i) already frees; one stage loads after
/// body(i). The first commit group also carries what the caller issued before (the tiles it keeps).
template <int kStages, class Visible, class Load, class Body>
__device__ __forceinline__ void bwd_pipeline(int begin, int end, Visible&& visible, Load&& load, Body&& body) {
  static_assert(kStages >= 1 && kStages <= 3, "stages must be 1, 2 or 3");
  if (begin < end) load(begin, 0);
  cp_async_commit();
  if constexpr (kStages == 3) {
    if (begin + 1 < end) load(begin + 1, 1);
    cp_async_commit();
  }
  for (int i = begin; i < end; ++i) {
    const int buf = (i - begin) % kStages;
    if constexpr (kStages == 3) {
      cp_async_wait<1>();  // tile i landed (tile i + 1 may be in flight)
      visible();
      block_sync();        // ... for every thread, and every warp is done with body(i - 1)
      if (i + 2 < end) load(i + 2, (i - begin + 2) % 3);
      cp_async_commit();
      body(i, buf);
      continue;
    }
    if constexpr (kStages == 2) {
      if (i + 1 < end) load(i + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    visible();
    block_sync();  // tile i (and on the first pass the kept tiles) landed
    body(i, buf);
    block_sync();  // every warp is done with buffer `buf`
    if constexpr (kStages == 1) {
      if (i + 1 < end) load(i + 1, 0);
      cp_async_commit();
    }
  }
  cp_async_wait<0>();
}

/// The tunable template parameters of BwdKernel and their candidate values (templates/README.md).
struct BwdKnobs {
  static constexpr int kBlockM[] = {32, 64, 128};
  static constexpr int kBlockN[] = {32, 64, 128};
  static constexpr int kWarps[] = {2, 4, 8};
  static constexpr int kStages[] = {1, 2};
  static constexpr int kSplit[] = {1, 2, 4};
  static constexpr int kMinBlocks[] = {1, 2};
};

template <class Element, int kHeadDim, int kRank, bool kCausal, int kQkvAlign, int kBiasAlign,
          int kBlockM = 128, int kBlockN = 64, int kWarps = 4, int kStages = 1, int kSplit = 1, int kMinBlocks = 1>
struct FLASHBIAS_KERNEL("bwd", "sm80") BwdKernel {
  using Knobs = BwdKnobs;

  static_assert(kHeadDim % 8 == 0 && kHeadDim >= 8 && kHeadDim <= 256, "head_dim must be a multiple of 8 in [8, 256]");
  static_assert(kRank >= 0 && kRank <= 128, "rank must be in [0, 128]");
  static_assert(kWarps >= 1 && kWarps <= 16, "warps must be in [1, 16]");
  static_assert(kBlockM % (kWarps * 16) == 0, "block_m must be a multiple of 16 * warps (the dq kernel's warps own whole m16 tiles of queries)");
  static_assert(kBlockN % (kWarps * 16) == 0, "block_n must be a multiple of 16 * warps (the dkdv kernel's warps own whole m16 tiles of keys)");
  static_assert(kStages == 1 || kStages == 2, "stages must be 1 or 2");
  static_assert(kSplit == 1 || kSplit == 2 || kSplit == 4, "split must be 1, 2 or 4");
  static_assert(kHeadDim % (8 * kSplit) == 0, "head_dim must be a multiple of 8 * split (each slice owns whole n8 tiles)");
  static_assert(kMinBlocks >= 1 && kMinBlocks <= 4, "min_blocks must be in [1, 4]");
  static_assert((kHeadDim * 2) % kQkvAlign == 0, "qkv_align must divide a row of head_dim elements");
  static_assert(kRank == 0 || (kRank * 2) % kBiasAlign == 0, "bias_align must divide a row of rank elements");

  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMinBlocksPerSm = kMinBlocks;
  static constexpr int kDqMinBlocksPerSm = kMinBlocks;  // the dq entry's (__launch_bounds__)
  static constexpr bool kHasBias = kRank > 0;
  static constexpr int kRankPad = round_up(kRank, 8);
  static constexpr int kRowPad = 8;
  static constexpr int kDStride = kHeadDim + kRowPad;
  static constexpr int kRStride = kRankPad + kRowPad;
  static constexpr int kDOut = kHeadDim / kSplit;  // head-dim columns of one slice
  // The factor gradient gets its own slice (CTAs) when the head dim is split, or when its two
  // accumulators (below) would crowd the head-dim ones out of registers (rank > 32).
  static constexpr bool kBiasSlice = kHasBias && (kSplit > 1 || kRank > 32);
  static constexpr int kSlices = kSplit + (kBiasSlice ? 1 : 0);
  // The factor gradients sum dS over a whole sequence, and sum_j dS_ij = 0 exactly, so they cancel:
  // dS rounded to 16 bits alone costs them up to ~1e-2 relative error on a short row. They take dS
  // as hi + lo / kLoScale (two products into two accumulators): about 22 bits of dS. That is
  // needed on rows of few queries or keys; fp16 problems of 64 or more of both run the entries
  // instantiated with kLo = false, which take the 16-bit dS alone (at most 5e-4 more error there:
  // bench/probes/factor_grad_lo_sim.py; the host picks: factor_grads_need_lo).
  static constexpr float kLoScale = 2048.f;

  // Shared memory, in bytes. dkdv: K | V | Kb, then per stage Q | dO | Qb | lse | delta (fp32).
  // dq: Q | dO | Qb, then per stage K | V | Kb.
  static constexpr int kRElemsM = kHasBias ? kBlockM * kRStride : 0;
  static constexpr int kRElemsN = kHasBias ? kBlockN * kRStride : 0;
  static constexpr int kDkdvFixedElems = 2 * kBlockN * kDStride + kRElemsN;
  static constexpr int kDkdvStageBytes = 2 * (2 * kBlockM * kDStride + kRElemsM) + 8 * kBlockM;
  static constexpr int kDkdvSmemBytes = 2 * kDkdvFixedElems + kStages * kDkdvStageBytes;
  static constexpr int kDqFixedElems = 2 * kBlockM * kDStride + kRElemsM;
  static constexpr int kDqStageElems = 2 * kBlockN * kDStride + kRElemsN;
  // dq with a bias: then P Kb (the dQb correction, "Delta" above) in fp32, kBlockM x kRankPad, each
  // thread's own elements only (kept out of registers: dq's factor slice is near the register cap).
  static constexpr int kDqKbarOffset = 2 * (kDqFixedElems + kStages * kDqStageElems);
  static constexpr int kDqSmemBytes = kDqKbarOffset + (kHasBias ? 4 * kBlockM * kRankPad : 0);

  using Traits = ElementTraits<Element>;
  using LoadM = TileLoader<Element, kBlockM, kHeadDim, kHeadDim, kDStride, kQkvAlign, kThreads>;
  using LoadN = TileLoader<Element, kBlockN, kHeadDim, kHeadDim, kDStride, kQkvAlign, kThreads>;
  using LoadBM = TileLoader<Element, kBlockM, kRank, kRankPad, kRStride, kBiasAlign, kThreads>;
  using LoadBN = TileLoader<Element, kBlockN, kRank, kRankPad, kRStride, kBiasAlign, kThreads>;

  /// Which outputs a CTA of slice `slice` accumulates: head-dim columns [col0, col0 + kDOut) and/or
  /// the factor gradient.
  struct Slice {
    bool d;
    bool bias;
    int col0;
  };
  static __device__ __forceinline__ Slice slice_of(int slice) {
    if (slice < kSplit) return Slice{true, kHasBias && !kBiasSlice, slice * kDOut};
    return Slice{false, true, 0};
  }

  /// A natural-log LSE (`lse`: the forward's, p.lse, in dq; the dq pass's, p.lse_dq, in dkdv) in
  /// base-2 units; a row that saw no key (LSE = -inf) or lies past the end gets +inf, so that
  /// every probability of it is exp2(-inf) = 0.
  static __device__ __forceinline__ float lse_log2(const BwdParams& p, const float* lse, long long bh, int row) {
    if (row >= p.seqlen_q) return pos_inf();
    const float l = lse[bh * p.seqlen_q + row];
    return l == neg_inf() ? pos_inf() : l * kLog2e;
  }

  /// One element (or two adjacent ones, when the access allows) of a C-layout accumulator pair
  /// to a 16-bit tensor.
  template <int kAlign>
  static __device__ __forceinline__ void store_pair(Element* dst, float a, float b, bool second) {
    const u32 v = Traits::pack(a, b);
    if (kAlign >= 4 && second) {
      *reinterpret_cast<u32*>(dst) = v;
    } else {
      dst[0].bits = u16(v & 0xffffu);
      if (second) dst[1].bits = u16(v >> 16);
    }
  }

  /// Write rows [row0 + warp rows) x cols [col0, col0 + NT*8) of an accumulator, times `mul`, to a
  /// 16-bit tensor (rows < rows_valid, cols < cols_valid), or as fp32 to `accum` (row stride
  /// `accum_stride` floats) when it is not null.
  template <int MT, int NT, int kAlign>
  static __device__ __forceinline__ void write_acc(const float (&acc)[MT][NT][4], float mul, Element* g,
                                                   long long row_stride, float* accum, long long accum_stride,
                                                   int row0, int rows_valid, int col0, int cols_valid, int lane) {
    const int gq = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = row0 + mt * 16 + gq + 8 * hh;
        if (r >= rows_valid) continue;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const int c = col0 + nt * 8 + 2 * t;
          if (c >= cols_valid) continue;
          const float a = acc[mt][nt][2 * hh] * mul, b = acc[mt][nt][2 * hh + 1] * mul;
          const bool second = c + 1 < cols_valid;
          if (accum != nullptr) {
            float* dst = accum + r * accum_stride + c;
            dst[0] = a;
            if (second) dst[1] = b;
          } else {
            store_pair<kAlign>(g + r * row_stride + c, a, b, second);
          }
        }
      }
  }

  /// f(mt, nt, e, element) over an accumulator, fully unrolled.
  template <int MT, int NT, class F>
  static __device__ __forceinline__ void for_each_acc(float (&acc)[MT][NT][4], F&& f) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) f(mt, nt, e, acc[mt][nt][e]);
  }

  template <int MT, int NT>
  static __device__ __forceinline__ void combine_residual(float (&acc)[MT][NT][4], const float (&lo)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] += lo[mt][nt][e] * (1.f / kLoScale);
  }

  /// The (block, batch, head, slice) a CTA of a tiled kernel owns: blockIdx.x enumerates the
  /// blocks of one (batch, head) fastest (so the CTAs on the GPU at once share K and V in L2),
  /// then (batch, head), then the slice. `reverse` walks each head's blocks from the last: under
  /// the causal mask the last query blocks see the most keys, so dq starts each head with its
  /// heaviest block and the grid ends on light ones (dkdv's heaviest key blocks are its first).
  struct Work {
    int block;
    long long bh;
    int b, h;
    Slice sl;
  };
  static __device__ __forceinline__ Work decode(const BwdParams& p, int num_blocks, bool reverse = false) {
    const long long bid = block_idx();
    const long long rest = bid / num_blocks;
    const long long heads = (long long)p.batch * p.heads;
    Work w;
    w.block = int(bid % num_blocks);
    if (reverse) w.block = num_blocks - 1 - w.block;
    w.bh = rest % heads;
    w.sl = slice_of(int(rest / heads));
    w.b = int(w.bh / p.heads);
    w.h = int(w.bh - (long long)w.b * p.heads);
    return w;
  }

  /// The inputs of one (batch, head), row 0.
  struct HeadInputs {
    const Element *q, *k, *v, *dout, *qb, *kb;
  };
  static __device__ __forceinline__ HeadInputs head_inputs(const BwdParams& p, int b, int h) {
    auto at = [&](const void* base, long long bs, long long hs) {
      return static_cast<const Element*>(base) + b * bs + h * hs;
    };
    HeadInputs in{at(p.q, p.q_batch_stride, p.q_head_stride), at(p.k, p.k_batch_stride, p.k_head_stride),
                  at(p.v, p.v_batch_stride, p.v_head_stride), at(p.dout, p.do_batch_stride, p.do_head_stride),
                  nullptr, nullptr};
    if constexpr (kHasBias) {
      in.qb = at(p.qb, p.qb_batch_stride, p.qb_head_stride);
      in.kb = at(p.kb, p.kb_batch_stride, p.kb_head_stride);
    }
    return in;
  }

  /// The factor gradient's epilogue: hi + lo combined, then fp32 into the per-(batch, head)
  /// workspace when the factor broadcasts (reduce() sums it), else straight into the caller's
  /// gradient. `rows` is Nq for dQb, Nk for dKb.
  template <int MT, int NT>
  static __device__ __forceinline__ void write_factor_grad(float (&acc)[MT][NT][4], const float (&lo)[MT][NT][4],
                                                           float* accum, void* grad, long long batch_stride,
                                                           long long row_stride, long long head_stride, int b, int h,
                                                           long long bh, int rows, int row0, int lane) {
    combine_residual(acc, lo);
    if (accum != nullptr) {
      write_acc<MT, NT, kBiasAlign>(acc, 1.f, nullptr, 0, accum + bh * rows * kRank, kRank, row0, rows, 0, kRank, lane);
    } else {
      Element* g = static_cast<Element*>(grad) + b * batch_stride + h * head_stride;
      write_acc<MT, NT, kBiasAlign>(acc, 1.f, g, row_stride, nullptr, 0, row0, rows, 0, kRank, lane);
    }
  }

  /// Sigma (see "Delta" above): this thread's share of sum_j dS_ij for its rows (mt, hh), added
  /// up tile by tile in a fixed order.
  template <int MT, int NT>
  static __device__ __forceinline__ void add_row_sums(float (&sum)[MT][2], const float (&ds)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sum[mt][e >> 1] += ds[mt][nt][e];
  }

  /// Delta = rowsum(P * dP) over one key tile, for rows that see no other tile: summed over the
  /// quad that shares each row, replacing the caller's `delta`. `pr` is P' (see "LSE" above), so
  /// the sum is divided by rowsum(P').
  template <int MT, int NT>
  static __device__ __forceinline__ void measure_delta(float (&delta)[MT][2], const float (&pr)[MT][NT][4],
                                                       const float (&dp)[MT][NT][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float sum = 0.f, psum = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          sum += pr[mt][nt][2 * hh] * dp[mt][nt][2 * hh] + pr[mt][nt][2 * hh + 1] * dp[mt][nt][2 * hh + 1];
          psum += pr[mt][nt][2 * hh] + pr[mt][nt][2 * hh + 1];
        }
        sum = quad_sum(sum);
        psum = quad_sum(psum);
        delta[mt][hh] = psum > 0.f ? sum / psum : 0.f;
      }
  }

  /// The end of the dq pass's row sums of P' (see "LSE" above): summed over the quad that shares
  /// each row, then turned into the factor 1 / rowsum(P') that takes P' to P (0 for a row that
  /// saw no key, whose sums are all 0). `c` keeps the row sums.
  template <int MT>
  static __device__ __forceinline__ void finish_row_sums(float (&c)[MT][2], float (&inv)[MT][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        c[mt][hh] = quad_sum(c[mt][hh]);
        inv[mt][hh] = c[mt][hh] > 0.f ? 1.f / c[mt][hh] : 0.f;
      }
  }

  /// acc *= inv of each element's row (C layout: rows mt, e / 2).
  template <int MT, int NT>
  static __device__ __forceinline__ void scale_rows(float (&acc)[MT][NT][4], const float (&inv)[MT][2]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= inv[mt][e >> 1];
  }

  /// The end of the dq pass's Delta measurement: Sigma summed over the quad that shares each row
  /// and taken from P' to P (`c`, `inv`: finish_row_sums); when `correct`, dQb -= Sigma * (P Kb)
  /// (kbar(mt, nt, e): P' Kb in the layout of `dqb`, which already holds P's units); when `write`,
  /// delta_dq = Delta + Sigma and lse_dq = LSE + ln rowsum(P') for rows [row0, row0 + MT * 16) of
  /// this warp.
  template <int MT, int NT, class Kbar>
  static __device__ __forceinline__ void finish_delta(const BwdParams& p, float (&sum)[MT][2],
                                                      const float (&delta)[MT][2], const float (&c)[MT][2],
                                                      const float (&inv)[MT][2], float (&dqb)[MT][NT][4],
                                                      Kbar&& kbar, bool correct, bool write, long long bh,
                                                      int row0, int lane) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        sum[mt][hh] = quad_sum(sum[mt][hh]) * inv[mt][hh];
      }
    if (correct) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) dqb[mt][nt][e] -= sum[mt][e >> 1] * (kbar(mt, nt, e) * inv[mt][e >> 1]);
    }
    if (write && (lane & 3) == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          const int row = row0 + mt * 16 + (lane >> 2) + 8 * hh;
          if (row < p.seqlen_q) {
            const long long i = bh * p.seqlen_q + row;
            p.delta_dq[i] = delta[mt][hh] + sum[mt][hh];
            const float l = p.lse[i];
            p.lse_dq[i] = c[mt][hh] > 0.f && l != neg_inf() ? l + fast_log2(c[mt][hh]) * kLn2 : l;
          }
        }
    }
  }

  // ---------------------------------------------------------------------------------------------
  /// Delta = rowsum(dO * O) in fp32 for every (batch, head, query row): 8 lanes per row.
  static __device__ void prep(const BwdParams& p) {
    const int tid = int(thread_idx());
    const long long rows = (long long)p.batch * p.heads * p.seqlen_q;
    const long long row = (long long)block_idx() * (kThreads / 8) + tid / 8;
    const int sub = tid & 7;
    float acc = 0.f;
    if (row < rows) {
      const long long bh = row / p.seqlen_q;
      const int i = int(row - bh * p.seqlen_q);
      const int b = int(bh / p.heads), h = int(bh - (long long)b * p.heads);
      const Element* o = static_cast<const Element*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride + i * p.o_row_stride;
      const Element* d = static_cast<const Element*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride + i * p.do_row_stride;
      for (int c = sub; c < kHeadDim; c += 8) acc += Traits::to_float(o[c].bits) * Traits::to_float(d[c].bits);
    }
    acc += shfl_xor(acc, 1);
    acc += shfl_xor(acc, 2);
    acc += shfl_xor(acc, 4);
    if (row < rows && sub == 0) p.delta[row] = acc;
  }

  // ---------------------------------------------------------------------------------------------
  static constexpr int kKvWarpRows = kBlockN / kWarps;
  static constexpr int kKvMt = kKvWarpRows / 16;
  static constexpr int kQCols = kBlockM / 8;

  template <bool kLo = true>
  static __device__ void dkdv(const BwdParams& p) {
    extern __shared__ BwdSmemWord smem_raw[];
    Element* const sK = reinterpret_cast<Element*>(smem_raw);
    Element* const sV = sK + kBlockN * kDStride;
    Element* const sKb = sV + kBlockN * kDStride;
    char* const stage0 = reinterpret_cast<char*>(sK + kDkdvFixedElems);
    const u32 aK = smem_addr(sK);
    const u32 aV = aK + kBlockN * kDStride * 2;
    const u32 aKb = aV + kBlockN * kDStride * 2;
    const u32 aStage0 = aK + kDkdvFixedElems * 2;
    // Per stage: Q | dO | Qb (16-bit) | lse | delta (fp32)
    auto sQ = [&](int buf) { return reinterpret_cast<Element*>(stage0 + buf * kDkdvStageBytes); };
    auto sDo = [&](int buf) { return sQ(buf) + kBlockM * kDStride; };
    auto sQb = [&](int buf) { return sQ(buf) + 2 * kBlockM * kDStride; };
    auto sLse = [&](int buf) { return reinterpret_cast<float*>(sQ(buf) + 2 * kBlockM * kDStride + kRElemsM); };
    auto aQ = [&](int buf) { return aStage0 + buf * kDkdvStageBytes; };
    auto aDo = [&](int buf) { return aQ(buf) + kBlockM * kDStride * 2; };
    auto aQb = [&](int buf) { return aQ(buf) + 2 * kBlockM * kDStride * 2; };

    const int tid = int(thread_idx());
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_row0 = warp * kKvWarpRows;
    const int gq = lane >> 2, t = lane & 3;

    const Work w = decode(p, p.num_n_blocks);
    const Slice sl = w.sl;
    const long long bh = w.bh;
    const int b = w.b, h = w.h;
    const int n0 = w.block * kBlockN;
    const HeadInputs in = head_inputs(p, b, h);

    const Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    // Query rows that see key n0 or later: i >= n0 - (Nk - Nq) under the causal mask.
    int m_begin = 0;
    if (kCausal) {
      const int first_row = n0 - (p.seqlen_k - p.seqlen_q);
      m_begin = first_row > 0 ? first_row / kBlockM : 0;
    }
    const int m_end = p.num_m_blocks;
    // With the bias the scale is applied before the bias is added; without, folded into exp2.
    const float s_log2 = kHasBias ? kLog2e : p.scale * kLog2e;

    float acc_dk[kKvMt][kDOut / 8][4];
    float acc_dv[kKvMt][kDOut / 8][4];
    float acc_dkb[kKvMt][kRankPad / 8 > 0 ? kRankPad / 8 : 1][4];
    float acc_dkb_lo[kKvMt][kRankPad / 8 > 0 ? kRankPad / 8 : 1][4];
    zero(acc_dk);
    zero(acc_dv);
    zero(acc_dkb);
    zero(acc_dkb_lo);

    auto load_stage = [&](int mb, int buf) {
      const int m0 = mb * kBlockM;
      LoadM::load(sQ(buf), aQ(buf), in.q, p.q_row_stride, m0, p.seqlen_q, tid);
      LoadM::load(sDo(buf), aDo(buf), in.dout, p.do_row_stride, m0, p.seqlen_q, tid);
      if constexpr (kHasBias) LoadBM::load(sQb(buf), aQb(buf), in.qb, p.qb_row_stride, m0, p.seqlen_q, tid);
      float* lse = sLse(buf);
      for (int i = tid; i < kBlockM; i += kThreads) {
        const int row = m0 + i;
        lse[i] = lse_log2(p, p.lse_dq, bh, row);
        lse[kBlockM + i] = row < p.seqlen_q ? p.delta_dq[bh * p.seqlen_q + row] : 0.f;
      }
    };

    LoadN::load(sK, aK, in.k, p.k_row_stride, n0, p.seqlen_k, tid);
    LoadN::load(sV, aV, in.v, p.v_row_stride, n0, p.seqlen_k, tid);
    if constexpr (kHasBias) LoadBN::load(sKb, aKb, in.kb, p.kb_row_stride, n0, p.seqlen_k, tid);

    bwd_pipeline<kStages>(m_begin, m_end, [] {}, load_stage, [&](int mb, int buf) {
      const int m0 = mb * kBlockM;

      // S^T = scale K Q^T + Kb Qb^T for this warp's key rows and all query columns.
      float st[kKvMt][kQCols][4];
      zero(st);
      gemm_nt<Element, kKvMt, kQCols, kHeadDim, kDStride>(st, aK + warp_row0 * kDStride * 2, aQ(buf), lane);
      if constexpr (kHasBias) {
#pragma unroll
        for (int mt = 0; mt < kKvMt; ++mt)
#pragma unroll
          for (int nt = 0; nt < kQCols; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[mt][nt][e] *= p.scale;
        gemm_nt<Element, kKvMt, kQCols, kRankPad, kRStride>(st, aKb + warp_row0 * kRStride * 2, aQb(buf), lane);
      }
      const bool need_mask = mask.tile_needs_mask(m0, n0, kBlockN);
      const float* lse = sLse(buf);
      // P^T = exp(S^T - LSE[query]), masked entries 0.
#pragma unroll
      for (int mt = 0; mt < kKvMt; ++mt)
#pragma unroll
        for (int nt = 0; nt < kQCols; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qc = nt * 8 + 2 * t + (e & 1);
            const int key = n0 + warp_row0 + mt * 16 + gq + (e >= 2 ? 8 : 0);
            float x = st[mt][nt][e] * s_log2 - lse[qc];
            if (need_mask && mask.masked(m0 + qc, key)) x = neg_inf();
            st[mt][nt][e] = fast_exp2(x);
          }
      if (sl.d) {
        // dV += P^T dO
        u32 pa[kKvMt][kQCols / 2][4];
        pack_a<Element, kKvMt, kQCols>(pa, st);
        gemm_rs<Element, kKvMt, kQCols / 2, kDOut / 8, kDStride>(acc_dv, pa, aDo(buf) + sl.col0 * 2, lane);
      }
      // dP^T = V dO^T, then dS^T = P^T (dP^T - Delta[query]).
      float dpt[kKvMt][kQCols][4];
      zero(dpt);
      gemm_nt<Element, kKvMt, kQCols, kHeadDim, kDStride>(dpt, aV + warp_row0 * kDStride * 2, aDo(buf), lane);
#pragma unroll
      for (int mt = 0; mt < kKvMt; ++mt)
#pragma unroll
        for (int nt = 0; nt < kQCols; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qc = nt * 8 + 2 * t + (e & 1);
            dpt[mt][nt][e] = st[mt][nt][e] * (dpt[mt][nt][e] - lse[kBlockM + qc]);
          }
      u32 dsa[kKvMt][kQCols / 2][4];
      pack_a<Element, kKvMt, kQCols>(dsa, dpt);
      if (sl.d) gemm_rs<Element, kKvMt, kQCols / 2, kDOut / 8, kDStride>(acc_dk, dsa, aQ(buf) + sl.col0 * 2, lane);
      if constexpr (kHasBias) {
        if (sl.bias) {
          gemm_rs<Element, kKvMt, kQCols / 2, kRankPad / 8, kRStride>(acc_dkb, dsa, aQb(buf), lane);
          if constexpr (kLo) {
            u32 dsa_lo[kKvMt][kQCols / 2][4];
            pack_a_residual<Element, kKvMt, kQCols>(dsa_lo, dsa, dpt, kLoScale);
            gemm_rs<Element, kKvMt, kQCols / 2, kRankPad / 8, kRStride>(acc_dkb_lo, dsa_lo, aQb(buf), lane);
          }
        }
      }
    });

    const int row0 = n0 + warp_row0;
    if (sl.d) {
      Element* gdk = static_cast<Element*>(p.dk) + b * p.dk_batch_stride + h * p.dk_head_stride;
      Element* gdv = static_cast<Element*>(p.dv) + b * p.dv_batch_stride + h * p.dv_head_stride;
      write_acc<kKvMt, kDOut / 8, kQkvAlign>(acc_dk, p.scale, gdk, p.dk_row_stride, nullptr, 0, row0, p.seqlen_k,
                                            sl.col0, kHeadDim, lane);
      write_acc<kKvMt, kDOut / 8, kQkvAlign>(acc_dv, 1.f, gdv, p.dv_row_stride, nullptr, 0, row0, p.seqlen_k,
                                            sl.col0, kHeadDim, lane);
    }
    if constexpr (kHasBias) {
      if (sl.bias)
        write_factor_grad(acc_dkb, acc_dkb_lo, p.dkb_accum, p.dkb, p.dkb_batch_stride, p.dkb_row_stride,
                          p.dkb_head_stride, b, h, bh, p.seqlen_k, row0, lane);
    }
  }

  // ---------------------------------------------------------------------------------------------
  static constexpr int kQWarpRows = kBlockM / kWarps;
  static constexpr int kQMt = kQWarpRows / 16;
  static constexpr int kKCols = kBlockN / 8;

  template <bool kLo = true>
  static __device__ void dq(const BwdParams& p) {
    extern __shared__ BwdSmemWord smem_raw[];
    Element* const sQ = reinterpret_cast<Element*>(smem_raw);
    Element* const sDo = sQ + kBlockM * kDStride;
    Element* const sQb = sDo + kBlockM * kDStride;
    Element* const stage0 = sQ + kDqFixedElems;
    const u32 aQ = smem_addr(sQ);
    const u32 aDo = aQ + kBlockM * kDStride * 2;
    const u32 aQb = aDo + kBlockM * kDStride * 2;
    const u32 aStage0 = aQ + kDqFixedElems * 2;
    auto sK = [&](int buf) { return stage0 + buf * kDqStageElems; };
    auto sV = [&](int buf) { return sK(buf) + kBlockN * kDStride; };
    auto sKb = [&](int buf) { return sK(buf) + 2 * kBlockN * kDStride; };
    auto aK = [&](int buf) { return aStage0 + buf * kDqStageElems * 2; };
    auto aV = [&](int buf) { return aK(buf) + kBlockN * kDStride * 2; };
    auto aKb = [&](int buf) { return aK(buf) + 2 * kBlockN * kDStride * 2; };

    const int tid = int(thread_idx());
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_row0 = warp * kQWarpRows;
    const int gq = lane >> 2, t = lane & 3;

    const Work w = decode(p, p.num_m_blocks, kCausal);
    const Slice sl = w.sl;
    const long long bh = w.bh;
    const int b = w.b, h = w.h;
    const int m0 = w.block * kBlockM;
    const HeadInputs in = head_inputs(p, b, h);

    const Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    const int key_end = mask.key_end(m0, kBlockM);
    const int n_blocks = key_end > 0 ? ceil_div(key_end, kBlockN) : 0;
    const float s_log2 = kHasBias ? kLog2e : p.scale * kLog2e;

    // This thread's rows: warp_row0 + mt * 16 + gq + 8 * hh.
    float lse2[kQMt][2], delta[kQMt][2];
#pragma unroll
    for (int mt = 0; mt < kQMt; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = m0 + warp_row0 + mt * 16 + gq + 8 * hh;
        lse2[mt][hh] = lse_log2(p, p.lse, bh, row);
        delta[mt][hh] = row < p.seqlen_q ? p.delta[bh * p.seqlen_q + row] : 0.f;
      }

    float acc_dq[kQMt][kDOut / 8][4];
    float acc_dqb[kQMt][kRankPad / 8 > 0 ? kRankPad / 8 : 1][4];
    float acc_dqb_lo[kQMt][kRankPad / 8 > 0 ? kRankPad / 8 : 1][4];
    float dsum[kQMt][2];  // Sigma
    float psum[kQMt][2];  // rowsum(P') (see "LSE" above)
    zero(acc_dq);
    zero(acc_dqb);
    zero(acc_dqb_lo);
#pragma unroll
    for (int mt = 0; mt < kQMt; ++mt) dsum[mt][0] = dsum[mt][1] = psum[mt][0] = psum[mt][1] = 0.f;
    // P Kb lives in shared memory between key tiles (kDqKbarOffset), element (mt, nt, e) of this
    // thread at [(mt, nt, e)][tid]: only this thread touches it, so no barrier.
    constexpr int kRTiles = kRankPad / 8 > 0 ? kRankPad / 8 : 1;
    float* const sKbar = reinterpret_cast<float*>(reinterpret_cast<char*>(smem_raw) + kDqKbarOffset) + tid;
    auto kbar_at = [&](int mt, int nt, int e) -> float& { return sKbar[((mt * kRTiles + nt) * 4 + e) * kThreads]; };
    if constexpr (kHasBias) {
      if (sl.bias)
        for (int i = 0; i < kQMt * kRTiles * 4; ++i) sKbar[i * kThreads] = 0.f;
    }

    auto load_stage = [&](int nb, int buf) {
      const int n0 = nb * kBlockN;
      LoadN::load(sK(buf), aK(buf), in.k, p.k_row_stride, n0, p.seqlen_k, tid);
      LoadN::load(sV(buf), aV(buf), in.v, p.v_row_stride, n0, p.seqlen_k, tid);
      if constexpr (kHasBias) LoadBN::load(sKb(buf), aKb(buf), in.kb, p.kb_row_stride, n0, p.seqlen_k, tid);
    };

    LoadM::load(sQ, aQ, in.q, p.q_row_stride, m0, p.seqlen_q, tid);
    LoadM::load(sDo, aDo, in.dout, p.do_row_stride, m0, p.seqlen_q, tid);
    if constexpr (kHasBias) LoadBM::load(sQb, aQb, in.qb, p.qb_row_stride, m0, p.seqlen_q, tid);

    bwd_pipeline<kStages>(0, n_blocks, [] {}, load_stage, [&](int nb, int buf) {
      const int n0 = nb * kBlockN;

      float s[kQMt][kKCols][4];
      zero(s);
      gemm_nt<Element, kQMt, kKCols, kHeadDim, kDStride>(s, aQ + warp_row0 * kDStride * 2, aK(buf), lane);
      if constexpr (kHasBias) {
#pragma unroll
        for (int mt = 0; mt < kQMt; ++mt)
#pragma unroll
          for (int nt = 0; nt < kKCols; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][nt][e] *= p.scale;
        gemm_nt<Element, kQMt, kKCols, kRankPad, kRStride>(s, aQb + warp_row0 * kRStride * 2, aKb(buf), lane);
      }
      const bool need_mask = mask.tile_needs_mask(m0, n0, kBlockN);
#pragma unroll
      for (int mt = 0; mt < kQMt; ++mt)
#pragma unroll
        for (int nt = 0; nt < kKCols; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hh = e >> 1;
            const int row = m0 + warp_row0 + mt * 16 + gq + 8 * hh;
            const int key = n0 + nt * 8 + 2 * t + (e & 1);
            float x = s[mt][nt][e] * s_log2 - lse2[mt][hh];
            if (need_mask && mask.masked(row, key)) x = neg_inf();
            s[mt][nt][e] = fast_exp2(x);
          }
      add_row_sums(psum, s);
      if constexpr (kHasBias) {
        if (sl.bias) {  // P Kb now, while dP's accumulators are not live yet
          u32 pa[kQMt][kKCols / 2][4];
          pack_a<Element, kQMt, kKCols>(pa, s);
          // 32 factor columns at a time: a wide factor's whole row would not fit next to P. The
          // rank's last n8 tiles (kRTiles % 4 of them: ranks 33-56, 65-88, 97-120) form a
          // narrower chunk of their own.
          auto kbar_chunk = [&](auto width, int c) {
            constexpr int kWidth = decltype(width)::value;
            float kbar[kQMt][kWidth][4];
            for_each_acc(kbar, [&](int mt, int nt, int e, float& v) { v = kbar_at(mt, c + nt, e); });
            gemm_rs<Element, kQMt, kKCols / 2, kWidth, kRStride>(kbar, pa, aKb(buf) + c * 16, lane);
            for_each_acc(kbar, [&](int mt, int nt, int e, float& v) { kbar_at(mt, c + nt, e) = v; });
          };
          constexpr int kChunk = kRTiles < 4 ? kRTiles : 4;
          constexpr int kWhole = kRTiles / kChunk * kChunk;
#pragma unroll
          for (int c = 0; c < kWhole; c += kChunk) kbar_chunk(IntConstant<kChunk>{}, c);
          if constexpr (kWhole < kRTiles) kbar_chunk(IntConstant<kRTiles - kWhole>{}, kWhole);
        }
      }
      float dp[kQMt][kKCols][4];
      zero(dp);
      gemm_nt<Element, kQMt, kKCols, kHeadDim, kDStride>(dp, aDo + warp_row0 * kDStride * 2, aV(buf), lane);
      if (n_blocks == 1) measure_delta(delta, s, dp);  // these rows see this tile only
#pragma unroll
      for (int mt = 0; mt < kQMt; ++mt)
#pragma unroll
        for (int nt = 0; nt < kKCols; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) dp[mt][nt][e] = s[mt][nt][e] * (dp[mt][nt][e] - delta[mt][e >> 1]);
      if constexpr (kHasBias) add_row_sums(dsum, dp);  // Sigma: see "Delta" above
      u32 dsa[kQMt][kKCols / 2][4];
      pack_a<Element, kQMt, kKCols>(dsa, dp);
      if (sl.d) gemm_rs<Element, kQMt, kKCols / 2, kDOut / 8, kDStride>(acc_dq, dsa, aK(buf) + sl.col0 * 2, lane);
      if constexpr (kHasBias) {
        if (sl.bias) {
          gemm_rs<Element, kQMt, kKCols / 2, kRankPad / 8, kRStride>(acc_dqb, dsa, aKb(buf), lane);
          if constexpr (kLo) {
            u32 dsa_lo[kQMt][kKCols / 2][4];
            pack_a_residual<Element, kQMt, kKCols>(dsa_lo, dsa, dp, kLoScale);
            gemm_rs<Element, kQMt, kKCols / 2, kRankPad / 8, kRStride>(acc_dqb_lo, dsa_lo, aKb(buf), lane);
          }
        }
      }
    });

    const int row0 = m0 + warp_row0;
    // P' to P: every slice measures rowsum(P') and Sigma; the first one writes delta_dq and
    // lse_dq, the factor's slice corrects dQb.
    float inv_c[kQMt][2];
    finish_row_sums(psum, inv_c);
    scale_rows(acc_dq, inv_c);
    if constexpr (kHasBias) {
      scale_rows(acc_dqb, inv_c);
      scale_rows(acc_dqb_lo, inv_c);
    }
    finish_delta(p, dsum, delta, psum, inv_c, acc_dqb, kbar_at, kHasBias && sl.bias, sl.d && sl.col0 == 0, bh, row0,
                 lane);
    if (sl.d) {
      Element* gdq = static_cast<Element*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride;
      write_acc<kQMt, kDOut / 8, kQkvAlign>(acc_dq, p.scale, gdq, p.dq_row_stride, nullptr, 0, row0, p.seqlen_q,
                                           sl.col0, kHeadDim, lane);
    }
    if constexpr (kHasBias) {
      if (sl.bias)
        write_factor_grad(acc_dqb, acc_dqb_lo, p.dqb_accum, p.dqb, p.dqb_batch_stride, p.dqb_row_stride,
                          p.dqb_head_stride, b, h, bh, p.seqlen_q, row0, lane);
    }
  }

  // ---------------------------------------------------------------------------------------------
  /// dQb/dKb of broadcast factors: the fp32 per-(batch, head) gradients summed over the broadcast
  /// dimensions in a fixed order. Grid-stride over the output elements of both factors.
  static __device__ void reduce(const BwdParams& p) {
    if constexpr (kHasBias) {
      const int qB = p.qb_batch_bcast ? 1 : p.batch, qH = p.qb_head_bcast ? 1 : p.heads;
      const int kB = p.kb_batch_bcast ? 1 : p.batch, kH = p.kb_head_bcast ? 1 : p.heads;
      const long long nq = p.dqb_accum != nullptr ? (long long)qB * qH * p.seqlen_q * kRank : 0;
      const long long nk = p.dkb_accum != nullptr ? (long long)kB * kH * p.seqlen_k * kRank : 0;
      const long long stride = (long long)grid_dim() * kThreads;
      for (long long i = (long long)block_idx() * kThreads + thread_idx(); i < nq + nk; i += stride) {
        const bool is_q = i < nq;
        const long long j = is_q ? i : i - nq;
        const int seqlen = is_q ? p.seqlen_q : p.seqlen_k;
        const int outH = is_q ? qH : kH;
        const int r = int(j % kRank);
        const long long rowidx = j / kRank;
        const int n = int(rowidx % seqlen);
        const long long bho = rowidx / seqlen;
        const int ho = int(bho % outH), bo = int(bho / outH);
        const bool bb = is_q ? p.qb_batch_bcast : p.kb_batch_bcast;
        const bool hb = is_q ? p.qb_head_bcast : p.kb_head_bcast;
        const float* src = is_q ? p.dqb_accum : p.dkb_accum;
        float sum = 0.f;
        for (int bi = bb ? 0 : bo; bi < (bb ? p.batch : bo + 1); ++bi)
          for (int hi = hb ? 0 : ho; hi < (hb ? p.heads : ho + 1); ++hi)
            sum += src[(((long long)bi * p.heads + hi) * seqlen + n) * kRank + r];
        Element* dst = is_q ? static_cast<Element*>(p.dqb) + bo * p.dqb_batch_stride + ho * p.dqb_head_stride +
                                  n * p.dqb_row_stride + r
                            : static_cast<Element*>(p.dkb) + bo * p.dkb_batch_stride + ho * p.dkb_head_stride +
                                  n * p.dkb_row_stride + r;
        dst->bits = u16(Traits::pack(sum, 0.f) & 0xffffu);
      }
    }
  }
};

}  // namespace sm80
}  // namespace flashbias
