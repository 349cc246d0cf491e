// FlashBias backward, sm90 family (Hopper, sm_90a): wgmma over swizzled shared-memory tiles.
//
//   S = scale Q K^T + Qb Kb^T (+ mask),  P = exp(S - LSE),  dV = P^T dO,  dP = dO V^T,
//   Delta = rowsum(dO * O),  dS = P * (dP - Delta),
//   dQ = scale dS K,  dK = scale dS^T Q,  dQb = dS Kb,  dKb = dS^T Qb.
//
// The same four entry points, launch order (prep, dq, dkdv, reduce) and deterministic split as
// the portable family (sm80/bwd_kernel.cuh, whose prep and reduce kernels and epilogue helpers
// this one reuses):
//   dkdv: one CTA per (key block of kBlockN rows, batch, head). Each warpgroup owns 64 key rows
//         and keeps dK, dV (and dKb) in registers; the CTA walks the query tiles of kStep rows
//         that see its keys. Per tile, per warpgroup:
//           S^T  = K Q^T, dP^T = V dO^T         wgmma, both operands from shared memory
//           S^T  = scale S^T + Kb Qb^T          the bias after the scale, as in the forward
//           P^T  = exp2(S^T - LSE[query]),  dS^T = P^T (dP^T - Delta[query])
//           dV  += P^T dO,  dK += dS^T Q,  dKb += dS^T Qb     wgmma, A = P^T / dS^T from registers
//         Delta is delta_dq, the one the dq pass measured (sm80/bwd_kernel.cuh, "Delta"), and LSE
//         lse_dq, the LSE of the backward's own scores that dq measured ("LSE" there).
//   dq:   one CTA per (query block of kBlockM rows, batch, head); warpgroups own 64 query rows
//         and walk the key tiles of kKeyStep rows (the kDqStep knob; 0: kStep): S, dP, dS as
//         above (row-wise LSE and Delta), then dQ += dS K, dQb += dS Kb, and P Kb with the row
//         sums of dS for the Delta correction, and the row sums of P for the LSE.
//         It recomputes S and dP rather than sharing dS with dkdv through atomics: every output
//         element is summed by one thread in a fixed order, so the results are bitwise identical
//         run to run.
// Factor gradients take dS as hi + lo / kLoScale (two products), as in the portable family: the
// rows of dS sum to zero, so on rows of few queries or keys with shared factors 16-bit dS alone
// would cost them up to ~5e-3 relative error. fp16 problems of 64 or more queries and keys skip
// lo (the entries instantiated with kLo = false; the host picks them): there 16-bit dS alone adds
// at most 5e-4 (fp64 simulation, bench/probes/factor_grad_lo_sim.py), and the residual is about
// half of a d32 step's FP32 work.
//
// Loads, two forms (the kTma knob):
//   kTma 0: every thread copies its share of the next tile with cp.async (16-byte units, zero fill
//           past the sequence and the head dim) straight into the swizzled layout wgmma reads;
//           narrow factor rows (under 16-byte aligned) are copied with ordinary loads. A proxy
//           fence and a CTA barrier hand a landed tile to the tensor cores.
//   kTma 1: thread 0 issues TMA copies (the same swizzled layout; the copy engine zero-fills past
//           the sequence, the head dim and the rank) onto one mbarrier per stage, kStages - 1
//           tiles ahead; the other threads spend no instructions on addresses. One CTA barrier per
//           step still frees the buffer the previous step read. dkdv's per-query LSE and Delta
//           are read into registers one step before they are stored into the stage, so that no
//           warp waits on a global load in the step that needs them. Needs 16-byte factor rows.
#pragma once

#include "common/manifest.h"
#include "common/params.h"
#include "common/sm90_ops.cuh"
#include "sm80/bwd_kernel.cuh"
#include "sm80/mask.cuh"
#include "sm80/warp_gemm.cuh"
#include "sm90/gemm.cuh"

namespace flashbias {
namespace sm90 {

/// The tunable template parameters of BwdKernel and their candidate values (templates/README.md).
struct BwdKnobs {
  static constexpr int kBlockM[] = {128, 64, 192};
  static constexpr int kBlockN[] = {128, 64, 192};
  static constexpr int kWarps[] = {8, 4, 12};
  static constexpr int kStages[] = {2, 1, 3};
  static constexpr int kStep[] = {64, 32, 128, 48};
  static constexpr int kMinBlocks[] = {1, 2, 3};
  static constexpr int kTma[] = {0, 1};
  static constexpr int kDqStep[] = {0, 64};
};

template <class Element, int kHeadDim, int kRank, bool kCausal, int kQkvAlign, int kBiasAlign,
          int kBlockM = 128, int kBlockN = 128, int kWarps = 8, int kStages = 2, int kStep = 64, int kMinBlocks = 1,
          int kTma = 0, int kDqStep = 0>
struct FLASHBIAS_KERNEL("bwd", "sm90") BwdKernel {
  using Knobs = BwdKnobs;

  static_assert(kHeadDim % 8 == 0 && kHeadDim >= 16 && kHeadDim <= 128,
                "head_dim must be a multiple of 8 in [16, 128] on the sm90 backward (dK and dV live in registers)");
  static_assert(kRank >= 0 && kRank <= 32, "rank must be in [0, 32] on the sm90 backward (dKb lives in registers)");
  static_assert(kQkvAlign == 16, "the sm90 backward copies 16-byte units of Q, K, V and dO (qkv_align 16)");
  static_assert(kRank == 0 || (kRank * 2) % kBiasAlign == 0, "bias_align must divide a row of rank elements");
  static_assert(kBlockM == kBlockN, "block_m and block_n must be equal (both kernels run warps / 4 warpgroups of 64 rows)");
  static_assert(kBlockM % 64 == 0 && kBlockM >= 64 && kBlockM <= 192, "block_m must be 64, 128 or 192");
  static_assert(kWarps == kBlockM / 16, "warps must be 4 per 64 rows of block_m (one warpgroup each)");
  static_assert(kStages >= 1 && kStages <= 3, "stages must be 1, 2 or 3");
  static_assert(kStep == 32 || kStep == 48 || kStep == 64 || kStep == 128, "step must be 32, 48, 64 or 128");
  static_assert(kMinBlocks >= 1 && kMinBlocks <= 3, "min_blocks must be 1, 2 or 3");
  static_assert(kDqStep == 0 || kDqStep == 64, "dqstep must be 0 (the step) or 64");
  static_assert(kDqStep != kStep, "dqstep equal to step is dqstep 0 (one name per tile)");
  // The dq kernel's key tile rows: its own knob, since the two kernels' best steps differ (dkdv at
  // d64 fits three CTAs per SM with 48-row query tiles, where dq runs best with 64-row key tiles,
  // as it does at every head dim: only 64 is offered, to keep the tuner's space small).
  static constexpr int kKeyStep = kDqStep == 0 ? kStep : kDqStep;
  // ptxas places each wgmma's accumulators within the launch allocation (the cap that
  // __launch_bounds__(threads, min_blocks) gives): dK and dV take head_dim / 2 registers, S and dP
  // step / 2; it refuses ("Insufficient registers") what does not fit.
  // (Written in the parameters alone, so that the host evaluates it too: kDqStep 0 is under kStep.)
  static_assert(65536 / (kWarps * 32 * kMinBlocks) / 8 * 8 >=
                    (kHeadDim > kStep ? (kHeadDim > kDqStep ? kHeadDim : kDqStep)
                                      : (kStep > kDqStep ? kStep : kDqStep)) / 2 + 32,
                "the launch register allocation (65536 / (threads x min_blocks)) must hold the widest wgmma's "
                "accumulators (max(head_dim, step, dqstep) / 2) plus 32");
  static_assert(kTma == 0 || kTma == 1, "tma must be 0 or 1");
  static_assert(kTma == 0 || kRank == 0 || kBiasAlign == 16, "tma needs 16-byte aligned factor rows (bias_align 16)");
  static_assert(kTma == 0 || kStages >= 2, "tma needs 2 or 3 stages");

  static constexpr int kThreads = kWarps * 32;
  static constexpr int kMinBlocksPerSm = kMinBlocks;
  // The dq entry's: with one warpgroup per CTA three CTAs fit an SM when dq stays at 168
  // registers or fewer, which it does without spilling up to d64 and rank 16 with key tiles of
  // up to 64 rows (183 unconstrained; rank 32 would spill 224 bytes, 128-row tiles 800).
  static constexpr int kDqMinBlocksPerSm =
      kWarps == 4 && kHeadDim <= 64 && kRank <= 16 && kKeyStep <= 64 && kMinBlocks < 3 ? 3 : kMinBlocks;
  static constexpr int kSlices = 1;
  static constexpr bool kHasBias = kRank > 0;
  // fp16 with a bias: the host may have prep write scale * Q (BwdParams::q_scaled, common/params.h
  // folds_scale_into_q) and run dq and dkdv on it (q_is_scaled).
  static constexpr bool kScaledQ = kHasBias && ElementTraits<Element>::kIsF16;

  /// The portable family's kernel of the same problem: its prep and reduce entry points (they
  /// depend on the block size only) and its epilogue helpers.
  using Portable = sm80::BwdKernel<Element, kHeadDim, kRank, kCausal, kQkvAlign, kBiasAlign, kBlockM, kBlockM, kWarps,
                                   1, 1, 1>;
  static_assert(Portable::kThreads == kThreads, "prep and reduce run with this kernel's block size");
  static constexpr float kLoScale = Portable::kLoScale;

  // Head dim and rank in swizzled chunks (sm90/gemm.cuh); contractions padded to 16.
  static constexpr int kChunkD = chunk_elems(kHeadDim);
  static constexpr int kDChunks = (kHeadDim + kChunkD - 1) / kChunkD;
  static constexpr int kDK = round_up(kHeadDim, 16);
  static constexpr int kDRowBytes = kChunkD * 2;
  static constexpr int kRK = kHasBias ? round_up(kRank, 16) : 0;
  static constexpr int kChunkR = chunk_elems(kRK);
  static constexpr int kRChunks = kHasBias ? (kRK + kChunkR - 1) / kChunkR : 0;
  static constexpr int kRRowBytes = kChunkR * 2;
  static constexpr int kDTiles = kHeadDim / 8;
  static constexpr int kRTiles = kHasBias ? kRK / 8 : 2;  // dummy width without a bias
  static constexpr int kStepTiles = kStep / 8;
  static constexpr int kKeyStepTiles = kKeyStep / 8;

  // Shared memory (bytes): a block tile (kBlockM = kBlockN rows) and a step tile (kStep rows), per
  // head-dim / factor chunk. Each chunk is a whole number of its swizzle period (8 rows).
  static constexpr int kBlockChunkD = kBlockM * kDRowBytes;
  static constexpr int kBlockChunkR = kBlockM * kRRowBytes;
  static constexpr int kStepChunkD = kStep * kDRowBytes;
  static constexpr int kStepChunkR = kStep * kRRowBytes;
  static constexpr int kBlockD = kDChunks * kBlockChunkD;
  static constexpr int kBlockR = kRChunks * kBlockChunkR;
  static constexpr int kStepD = kDChunks * kStepChunkD;
  static constexpr int kStepR = kRChunks * kStepChunkR;
  // The same for dq's key tiles (kKeyStep rows).
  static constexpr int kKeyChunkD = kKeyStep * kDRowBytes;
  static constexpr int kKeyChunkR = kKeyStep * kRRowBytes;
  static constexpr int kKeyD = kDChunks * kKeyChunkD;
  static constexpr int kKeyR = kRChunks * kKeyChunkR;
  // dkdv: K | V | Kb, then per stage Q | dO | Qb | lse, delta (fp32); each stage padded to 1024
  // bytes (a 48-row factor tile is not a multiple of it).
  static constexpr int kLseBytes = 8 * kStep;
  static constexpr int kDkdvStageBytes = round_up(2 * kStepD + kStepR + kLseBytes, 1024);
  // kTma: the stages' mbarriers and the block tile's after the stages.
  static constexpr int kBarrierBytes = kTma ? 8 * (kStages + 1) : 0;
  static constexpr int kDkdvSmemBytes = 2 * kBlockD + kBlockR + kStages * kDkdvStageBytes + kBarrierBytes + 1024;
  // dq: Q | dO | Qb, then per stage K | V | Kb (padded to 1024 bytes).
  static constexpr int kDqStageBytes = round_up(2 * kKeyD + kKeyR, 1024);
  static constexpr int kDqSmemBytes = 2 * kBlockD + kBlockR + kStages * kDqStageBytes + kBarrierBytes + 1024;

  struct alignas(16) Vec4u { u32 x, y, z, w; };
  struct alignas(8) Vec2u { u32 x, y; };

  /// The dynamic shared memory window, aligned up to 1024 bytes (the swizzle period; the sizes
  /// above reserve the slack).
  static __device__ __forceinline__ u32 smem_base() {
    extern __shared__ Vec4u smem_raw[];
    const u32 raw = static_cast<u32>(__cvta_generic_to_shared(smem_raw));
    return (raw + 1023u) & ~1023u;
  }

  /// Copy rows [0, kRows) of a tile (kCols valid columns, rows `row_stride` elements apart) into
  /// the swizzled chunks at `dst`, zero-filling rows at or past `rows_valid` and columns past
  /// kCols. 16-byte aligned rows go by cp.async (the caller commits and waits); narrower rows
  /// (factors only) by ordinary loads and stores.
  template <int kRows, int kCols, int kChunk, int kAlign>
  static __device__ __forceinline__ void load_tile(u32 dst, const Element* src, long long row_stride, int rows_valid,
                                                   int tid) {
    constexpr int kRowBytes = kChunk * 2;
    constexpr int kChunks = (kCols + kChunk - 1) / kChunk;
    constexpr int kUnitsPerChunkRow = kChunk / 8;
    constexpr int kUnitsPerRow = kChunks * kUnitsPerChunkRow;
    constexpr int kUnits = kRows * kUnitsPerRow;
#pragma unroll 4
    for (int u = tid; u < kUnits; u += kThreads) {
      const int r = u / kUnitsPerRow;
      const int cu = u - r * kUnitsPerRow;
      const int c = cu / kUnitsPerChunkRow;
      const int j = cu - c * kUnitsPerChunkRow;
      const int col = c * kChunk + j * 8;
      const u32 off = dst + c * kRows * kRowBytes + swizzle<kRowBytes>(u32(r * kRowBytes + j * 16));
      const bool valid = r < rows_valid && col < kCols;
      const Element* s = src + r * row_stride + col;
      if constexpr (kAlign == 16) {
        cp_async<16>(off, valid ? s : src, valid);
      } else {
        constexpr int kVec = kAlign / 2;  // elements per load
        u32 w[4] = {0u, 0u, 0u, 0u};
        if (valid) {
#pragma unroll
          for (int e = 0; e < 8; e += kVec) {
            if (col + e < kCols) {
              if constexpr (kVec == 4) {
                const Vec2u v = *reinterpret_cast<const Vec2u*>(s + e);
                w[e / 2] = v.x;
                w[e / 2 + 1] = v.y;
              } else if constexpr (kVec == 2) {
                w[e / 2] = *reinterpret_cast<const u32*>(s + e);
              } else {
                const u32 bits = s[e].bits;
                w[e / 2] |= (e & 1) ? bits << 16 : bits;
              }
            }
          }
        }
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(off), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                     : "memory");
      }
    }
  }

  /// The cp.async form of tma_tile: kRows rows from `row` on of two head-dim tensors (a, b) and
  /// the factor of the same rows (f), each at its own row stride; `rows` = the sequence length.
  template <int kRows>
  static __device__ __forceinline__ void cp_async_tile(u32 dst_a, u32 dst_b, u32 dst_f, const Element* a, long long sa,
                                                       const Element* b, long long sb, const Element* f, long long sf,
                                                       int row, int rows, int tid) {
    load_tile<kRows, kHeadDim, kChunkD, 16>(dst_a, a + row * sa, sa, rows - row, tid);
    load_tile<kRows, kHeadDim, kChunkD, 16>(dst_b, b + row * sb, sb, rows - row, tid);
    if constexpr (kHasBias) load_tile<kRows, kRank, kChunkR, kBiasAlign>(dst_f, f + row * sf, sf, rows - row, tid);
  }

  /// The two score products of a step, the same in both kernels: s = scale (A B^T) + Ab Bb^T (the
  /// head dim, then the factor columns after the scale, as in the forward) and dp = dA dB^T, all
  /// operands in shared memory (A, Ab, dA this warpgroup's 64 rows). Returns once s is complete;
  /// dp may still be running, so the exponentials of P overlap it. With the bias, s is waited for
  /// and scaled before the factor product joins it (one more round trip). kRows: the step tile's
  /// rows (kStep in dkdv, kKeyStep in dq).
  template <int kRows>
  static __device__ __forceinline__ void score_products(float (&s)[1][kRows / 8][4], float (&dp)[1][kRows / 8][4],
                                                        SmemUnits a, SmemUnits b, SmemUnits ab, SmemUnits bb, SmemUnits da,
                                                        SmemUnits db, float scale, bool q_is_scaled) {
    constexpr int kChunkBytesD = kRows * kDRowBytes;
    constexpr int kChunkBytesR = kRows * kRRowBytes;
    wgmma_fence();
    gemm_ss<Element, kRows, kDK, kChunkD, kBlockChunkD, kChunkBytesD>(&s[0][0][0], a, b, false);
    wgmma_commit();
    if constexpr (kHasBias) {
      // With Q scaled (kScaledQ and q_is_scaled) the factor product follows in the same chain.
      if (!(kScaledQ && q_is_scaled)) {
        wgmma_wait<0>();
        fence_regs(s);
#pragma unroll
        for (int i = 0; i < kRows / 8; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[0][i][e] *= scale;
      }
      wgmma_fence();
      gemm_ss<Element, kRows, kRK, kChunkR, kBlockChunkR, kChunkBytesR>(&s[0][0][0], ab, bb, true);
      wgmma_commit();
    }
    gemm_ss<Element, kRows, kDK, kChunkD, kBlockChunkD, kChunkBytesD>(&dp[0][0][0], da, db, false);
    wgmma_commit();
    wgmma_wait<1>();
    fence_regs(s);
  }

  // ---- kTma loads -----------------------------------------------------------------------------
  /// The kStages stage mbarriers at `bars` and the block tile's after them, one arrival each
  /// (thread 0's, which also announces the TMA bytes); then a CTA barrier.
  static __device__ __forceinline__ void init_barriers(u32 bars, int tid) {
    if (tid == 0) {
#pragma unroll
      for (int s = 0; s <= kStages; ++s) mbar_init(bars + 8 * s, 1);
      mbar_fence_init();
    }
    block_sync();
  }

  /// Thread 0's TMA copies of one tile of kRows rows from `row` on: two head-dim tensors (a, b:
  /// Q and dO, or K and V) and the factor of the same rows (f), onto `bar`, which is told their
  /// bytes first. f_h and f_b are the factor's head and batch (0 along a broadcast dimension).
  template <int kRows>
  static __device__ __forceinline__ void tma_tile(u32 dst_a, u32 dst_b, u32 dst_f, const TmaDescriptor& ta,
                                                  const TmaDescriptor& tb, const TmaDescriptor& tf, u32 bar, int row,
                                                  int h, int b, int f_h, int f_b) {
    constexpr int kChunkBytesD = kRows * kDRowBytes;
    constexpr int kChunkBytesR = kRows * kRRowBytes;
    mbar_arrive_expect_tx(bar, 2 * kDChunks * kChunkBytesD + kRChunks * kChunkBytesR);
#pragma unroll
    for (int c = 0; c < kDChunks; ++c) {
      tma_load_4d(dst_a + c * kChunkBytesD, &ta, bar, c * kChunkD, row, h, b);
      tma_load_4d(dst_b + c * kChunkBytesD, &tb, bar, c * kChunkD, row, h, b);
    }
    if constexpr (kHasBias) {
#pragma unroll
      for (int c = 0; c < kRChunks; ++c) tma_load_4d(dst_f + c * kChunkBytesR, &tf, bar, c * kChunkR, row, f_h, f_b);
    }
  }

  /// The kTma form of sm80::bwd_pipeline over step tiles [begin, end) in kStages buffers, with one
  /// CTA barrier per step: after it every warp is done with body(i - 1), so its buffer takes the
  /// load of tile i + kStages - 1 (issue(tile, buffer, true)); then tile i's mbarrier is waited
  /// for, body(i, buffer) runs and finish(buffer of that issue) stores what the issue staged in
  /// registers (only after an issue). The first kStages - 1 tiles are issued before the loop
  /// (issue(tile, buffer, false)), and are visible to every thread after the first barrier; then
  /// the block tile (bars + 8 kStages, issued by the caller) is waited for, also when there is no
  /// step, so that no copy is in flight when the CTA exits.
  template <class Issue, class Body, class Finish>
  static __device__ __forceinline__ void tma_pipeline(int begin, int end, u32 bars, Issue&& issue, Body&& body,
                                                      Finish&& finish) {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s)
      if (begin + s < end) issue(begin + s, s, false);
    mbar_wait(bars + 8 * kStages, 0);
    for (int i = begin; i < end; ++i) {
      const int j = i - begin;
      const int buf = j % kStages;
      block_sync();
      const bool ahead = i + kStages - 1 < end;
      const int ahead_buf = (j + kStages - 1) % kStages;
      if (ahead) issue(i + kStages - 1, ahead_buf, true);
      mbar_wait(bars + 8 * buf, u32(j / kStages) & 1u);
      body(i, buf);
      if (ahead) finish(ahead_buf);
    }
  }

  /// x = exp2(x * s_log2 - lse(i, e)) over a score tile, with masked(i, e) scores set to zero
  /// when the tile needs the mask (a test uniform over the tile: it selects between two straight
  /// loops, where a test per score compiled to a branch per four scores).
  template <int kTiles, class Lse, class Masked>
  static __device__ __forceinline__ void exponentials(float (&x)[1][kTiles][4], float s_log2, bool masked_tile,
                                                      Lse&& lse, Masked&& masked) {
    auto run = [&](auto with_mask) {
#pragma unroll
      for (int i = 0; i < kTiles; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = x[0][i][e] * s_log2 - lse(i, e);
          if constexpr (decltype(with_mask)::value)
            if (masked(i, e)) v = neg_inf();
          x[0][i][e] = fast_exp2(v);
        }
    };
    if (masked_tile)
      run(BoolConstant<true>{});
    else
      run(BoolConstant<false>{});
  }

  /// A factor's head and batch coordinates for TMA: 0 along a broadcast (stride-0) dimension,
  /// which the host encodes with extent 1.
  static __device__ __forceinline__ int factor_coord(long long stride, int i) { return stride == 0 ? 0 : i; }

  /// This thread's warpgroup, in a form the compiler knows to be the same across the warp (a
  /// shuffle from lane 0; 0 outright with one warpgroup), so that the shared-memory addresses
  /// and wgmma descriptors derived from it stay in uniform registers.
  static __device__ __forceinline__ int warpgroup_index(int tid) {
    if constexpr (kWarps == 4) return 0;
    else return __shfl_sync(0xffffffffu, tid >> 7, 0);
  }

  // ---------------------------------------------------------------------------------------------
  /// Delta (the portable family's prep) and, when the host asks for it (p.q_scaled), the scaled
  /// copy of Q that dq and dkdv then read: row r = (b * heads + h) * seqlen_q + i of
  /// [batch, heads, seqlen_q, head_dim], by the eight threads that sum that row's Delta, in 16-byte
  /// units (kQkvAlign 16), scaled as the forward scales its Q tile (scale_pair).
  static __device__ void prep(const BwdParams& p) {
    Portable::prep(p);
    if constexpr (kScaledQ) {
      if (p.q_scaled == nullptr) return;
      const int tid = int(thread_idx());
      const long long rows = (long long)p.batch * p.heads * p.seqlen_q;
      const long long row = (long long)block_idx() * (kThreads / 8) + tid / 8;
      if (row >= rows) return;
      const long long bh = row / p.seqlen_q;
      const int i = int(row - bh * p.seqlen_q);
      const int b = int(bh / p.heads), h = int(bh - (long long)b * p.heads);
      const Element* q = static_cast<const Element*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + i * p.q_row_stride;
      Element* qs = static_cast<Element*>(p.q_scaled) + row * kHeadDim;
      for (int c = (tid & 7) * 8; c < kHeadDim; c += 64) {
        Vec4u v = *reinterpret_cast<const Vec4u*>(q + c);
        v.x = scale_pair<Element>(v.x, p.scale);
        v.y = scale_pair<Element>(v.y, p.scale);
        v.z = scale_pair<Element>(v.z, p.scale);
        v.w = scale_pair<Element>(v.w, p.scale);
        *reinterpret_cast<Vec4u*>(qs + c) = v;
      }
    }
  }
  static __device__ void reduce(const BwdParams& p) { Portable::reduce(p); }

  // ---------------------------------------------------------------------------------------------
  template <bool kLo = true>
  static __device__ void dkdv(const Sm90BwdParams& prm) {
    const BwdParams& p = prm.p;
    const u32 smem = smem_base();
    const u32 sK = smem;
    const u32 sV = sK + kBlockD;
    const u32 sKb = sV + kBlockD;
    const u32 stage0 = sKb + kBlockR;
    auto sQ = [&](int buf) { return stage0 + buf * kDkdvStageBytes; };
    auto sDo = [&](int buf) { return sQ(buf) + kStepD; };
    auto sQb = [&](int buf) { return sQ(buf) + 2 * kStepD; };
    auto sLse = [&](int buf) { return sQ(buf) + 2 * kStepD + kStepR; };  // lse (log2 units) | delta

    const int tid = int(thread_idx());
    const int wg = warpgroup_index(tid);
    const int tid_wg = tid & 127;
    const int lane = tid & 31;
    const int warp = tid_wg >> 5;  // within the warpgroup
    const int g = lane >> 2, t = lane & 3;

    const typename Portable::Work w = Portable::decode(p, p.num_n_blocks);
    const long long bh = w.bh;
    const int b = w.b, h = w.h;
    const int n0 = w.block * kBlockN;
    const int wn0 = n0 + wg * 64;  // this warpgroup's first key
    const typename Portable::HeadInputs in = Portable::head_inputs(p, b, h);

    const sm80::Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    // Query rows that see key n0 or later: i >= n0 - (Nk - Nq) under the causal mask.
    int m_begin = 0;
    if (kCausal) {
      const int first_row = n0 - (p.seqlen_k - p.seqlen_q);
      m_begin = first_row > 0 ? first_row / kStep : 0;
    }
    const int m_end = ceil_div(p.seqlen_q, kStep);
    const float s_log2 = kHasBias ? kLog2e : p.scale * kLog2e;
    // dKb takes the residual of the 16-bit dS as a second product (kLo; the host picks the
    // entry: factor_grads_need_lo in runtime/launch_plan.cpp).
    constexpr bool factor_lo = kHasBias && kLo;

    float dk[1][kDTiles][4], dv[1][kDTiles][4];
    float dkb[1][kRTiles][4], dkb_lo[1][kRTiles][4];
    sm80::zero(dk);
    sm80::zero(dv);
    sm80::zero(dkb);
    sm80::zero(dkb_lo);

    auto load_stage = [&](int mb, int buf) {
      const int m0 = mb * kStep;
      cp_async_tile<kStep>(sQ(buf), sDo(buf), sQb(buf), in.q, p.q_row_stride, in.dout, p.do_row_stride, in.qb,
                           p.qb_row_stride, m0, p.seqlen_q, tid);
      if (tid < kStep) {
        const int row = m0 + tid;
        const float l = Portable::lse_log2(p, p.lse_dq, bh, row);
        const float d = row < p.seqlen_q ? p.delta_dq[bh * p.seqlen_q + row] : 0.f;
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(sLse(buf) + 4 * tid), "f"(l) : "memory");
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(sLse(buf) + 4 * (kStep + tid)), "f"(d) : "memory");
      }
    };

    // The wgmma operands' addresses in 16-byte units (sm90/gemm.cuh, SmemUnits).
    const SmemUnits sKw = units(sK + wg * 64 * kDRowBytes);
    const SmemUnits sVw = units(sV + wg * 64 * kDRowBytes);
    const SmemUnits sKbw = units(sKb + wg * 64 * kRRowBytes);
    const SmemUnits stage0_u = units(stage0);
    auto uQ = [&](int buf) { return stage0_u + u32(buf * (kDkdvStageBytes >> 4)); };
    auto uDo = [&](int buf) { return uQ(buf) + u32(kStepD >> 4); };
    auto uQb = [&](int buf) { return uQ(buf) + u32((2 * kStepD) >> 4); };

    auto body = [&](int mb, int buf) {
      const int m0 = mb * kStep;
      // Keys wholly right of every query row's causal reach contribute nothing here.
      if (kCausal && wn0 > m0 + kStep - 1 + mask.diag_offset) return;
      // S^T = K Q^T (+ bias), then dP^T = V dO^T.
      // This thread's queries' LSE (columns i * 8 + 2t + {0, 1}), read before the products so
      // that the exponentials do not wait on shared memory.
      const u32 lse_at = sLse(buf) + 8 * t;
      float lse[kStepTiles][2];
#pragma unroll
      for (int i = 0; i < kStepTiles; ++i)
        asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(lse[i][0]), "=f"(lse[i][1]) : "r"(lse_at + 32 * i));
      float st[1][kStepTiles][4], dpt[1][kStepTiles][4];
      score_products<kStep>(st, dpt, sKw, uQ(buf), sKbw, uQb(buf), sVw, uDo(buf), p.scale, p.q_is_scaled != 0);

      // P^T = exp2(S^T - LSE[query]); element (i, e) is key wn0 + warp * 16 + g (+ 8 for e >= 2)
      // and query m0 + i * 8 + 2t + (e & 1).
      exponentials(
          st, s_log2, mask.tile_needs_mask(m0, wn0, 64), [&](int i, int e) { return lse[i][e & 1]; },
          [&](int i, int e) { return mask.masked(m0 + i * 8 + 2 * t + (e & 1), wn0 + warp * 16 + g + (e >= 2 ? 8 : 0)); });
      // dV += P^T dO, issued before dS is formed so that the product overlaps it.
      u32 pa[1][kStep / 16][4];
      sm80::pack_a<Element, 1, kStepTiles>(pa, st);
      wgmma_wait<0>();  // dP^T
      fence_regs(dpt);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kStep / 16; ++kk)
        gemm_rs<Element, kHeadDim, kChunkD, kStepChunkD>(&dv[0][0][0], pa[0][kk], uDo(buf) + u32(kk * kDRowBytes));
      wgmma_commit();
      // dS^T = P^T (dP^T - Delta[query]).
      const u32 delta_at = lse_at + 4 * kStep;
#pragma unroll
      for (int i = 0; i < kStepTiles; ++i) {
        float d0, d1;
        asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(d0), "=f"(d1) : "r"(delta_at + 32 * i));
#pragma unroll
        for (int e = 0; e < 4; ++e) dpt[0][i][e] = st[0][i][e] * (dpt[0][i][e] - ((e & 1) ? d1 : d0));
      }
      u32 dsa[1][kStep / 16][4];
      sm80::pack_a<Element, 1, kStepTiles>(dsa, dpt);
      u32 dsa_lo[1][kStep / 16][4];
      if constexpr (factor_lo) sm80::pack_a_residual<Element, 1, kStepTiles>(dsa_lo, dsa, dpt, kLoScale);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kStep / 16; ++kk) {
        gemm_rs<Element, kHeadDim, kChunkD, kStepChunkD>(&dk[0][0][0], dsa[0][kk], uQ(buf) + u32(kk * kDRowBytes));
        if constexpr (kHasBias) {
          const SmemUnits qb_at = uQb(buf) + u32(kk * kRRowBytes);  // 16 rows of kRRowBytes
          gemm_rs<Element, kRK, kChunkR, kStepChunkR>(&dkb[0][0][0], dsa[0][kk], qb_at);
          if constexpr (factor_lo) gemm_rs<Element, kRK, kChunkR, kStepChunkR>(&dkb_lo[0][0][0], dsa_lo[0][kk], qb_at);
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(dv);
      fence_regs(dk);
      fence_regs(dkb);
      fence_regs(dkb_lo);
      fence_regs(pa);
      fence_regs(dsa);
      if constexpr (factor_lo) fence_regs(dsa_lo);
    };

    if constexpr (kTma) {
      const u32 bars = stage0 + kStages * kDkdvStageBytes;
      const u32 bar_block = bars + 8 * kStages;
      const int kb_h = factor_coord(p.kb_head_stride, h), kb_b = factor_coord(p.kb_batch_stride, b);
      const int qb_h = factor_coord(p.qb_head_stride, h), qb_b = factor_coord(p.qb_batch_stride, b);
      init_barriers(bars, tid);
      if (tid == 0)
        tma_tile<kBlockN>(sK, sV, sKb, prm.block[Sm90BwdParams::kK], prm.block[Sm90BwdParams::kV],
                          prm.block[Sm90BwdParams::kKb], bar_block, n0, h, b, kb_h, kb_b);
      // Each query's LSE and Delta, staged in registers by the first kStep threads as loaded:
      // the LSE's conversion to base 2 waits for its load, so it runs in finish(), after the
      // step's body, and no warp of the step stalls on the load.
      float staged_l = 0.f, staged_d = 0.f;
      auto store_lse = [&](u32 at, float raw_l, float d) {
        const float l = raw_l == neg_inf() ? pos_inf() : raw_l * kLog2e;  // Portable::lse_log2
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(at), "f"(l) : "memory");
        asm volatile("st.shared.f32 [%0], %1;" ::"r"(at + 4 * kStep), "f"(d) : "memory");
      };
      auto issue = [&](int mb, int buf, bool defer) {
        const int m0 = mb * kStep;
        if (tid == 0)
          tma_tile<kStep>(sQ(buf), sDo(buf), sQb(buf), prm.step[Sm90BwdParams::kQ], prm.step[Sm90BwdParams::kDo],
                          prm.step[Sm90BwdParams::kQb], bars + 8 * buf, m0, h, b, qb_h, qb_b);
        if (tid < kStep) {
          const int row = m0 + tid;
          const bool in_rows = row < p.seqlen_q;
          const float l = in_rows ? p.lse_dq[bh * p.seqlen_q + row] : neg_inf();
          const float d = in_rows ? p.delta_dq[bh * p.seqlen_q + row] : 0.f;
          if (defer) {
            staged_l = l;
            staged_d = d;
          } else {
            store_lse(sLse(buf) + 4 * tid, l, d);
          }
        }
      };
      auto finish = [&](int buf) {
        if (tid < kStep) store_lse(sLse(buf) + 4 * tid, staged_l, staged_d);
      };
      tma_pipeline(m_begin, m_end, bars, issue, body, finish);
    } else {
      cp_async_tile<kBlockN>(sK, sV, sKb, in.k, p.k_row_stride, in.v, p.v_row_stride, in.kb, p.kb_row_stride, n0,
                             p.seqlen_k, tid);
      sm80::bwd_pipeline<kStages>(m_begin, m_end, [] { fence_proxy_async(); }, load_stage, body);
    }

    const int row0 = wn0 + warp * 16;
    Element* gdk = static_cast<Element*>(p.dk) + b * p.dk_batch_stride + h * p.dk_head_stride;
    Element* gdv = static_cast<Element*>(p.dv) + b * p.dv_batch_stride + h * p.dv_head_stride;
    // dK = scale dS^T Q; with Q scaled (q_is_scaled) the products already hold the scale.
    const float dk_scale = kScaledQ && p.q_is_scaled ? 1.f : p.scale;
    Portable::template write_acc<1, kDTiles, kQkvAlign>(dk, dk_scale, gdk, p.dk_row_stride, nullptr, 0, row0,
                                                        p.seqlen_k, 0, kHeadDim, lane);
    Portable::template write_acc<1, kDTiles, kQkvAlign>(dv, 1.f, gdv, p.dv_row_stride, nullptr, 0, row0, p.seqlen_k,
                                                        0, kHeadDim, lane);
    if constexpr (kHasBias)
      Portable::write_factor_grad(dkb, dkb_lo, p.dkb_accum, p.dkb, p.dkb_batch_stride, p.dkb_row_stride,
                                  p.dkb_head_stride, b, h, bh, p.seqlen_k, row0, lane);
  }

  // ---------------------------------------------------------------------------------------------
  template <bool kLo = true>
  static __device__ void dq(const Sm90BwdParams& prm) {
    const BwdParams& p = prm.p;
    const u32 smem = smem_base();
    const u32 sQ = smem;
    const u32 sDo = sQ + kBlockD;
    const u32 sQb = sDo + kBlockD;
    const u32 stage0 = sQb + kBlockR;
    auto sK = [&](int buf) { return stage0 + buf * kDqStageBytes; };
    auto sV = [&](int buf) { return sK(buf) + kKeyD; };
    auto sKb = [&](int buf) { return sK(buf) + 2 * kKeyD; };

    const int tid = int(thread_idx());
    const int wg = warpgroup_index(tid);
    const int tid_wg = tid & 127;
    const int lane = tid & 31;
    const int warp = tid_wg >> 5;
    const int g = lane >> 2, t = lane & 3;

    const typename Portable::Work w = Portable::decode(p, p.num_m_blocks, kCausal);
    const long long bh = w.bh;
    const int b = w.b, h = w.h;
    const int m0 = w.block * kBlockM;
    const int wm0 = m0 + wg * 64;  // this warpgroup's first query row
    const typename Portable::HeadInputs in = Portable::head_inputs(p, b, h);

    const sm80::Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    const int key_end = mask.key_end(m0, kBlockM);
    const int n_blocks = key_end > 0 ? ceil_div(key_end, kKeyStep) : 0;
    const float s_log2 = kHasBias ? kLog2e : p.scale * kLog2e;
    constexpr bool factor_lo = kHasBias && kLo;  // as in dkdv

    // This thread's rows: wm0 + warp * 16 + g + 8 * hh.
    float lse2[2], delta[1][2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int row = wm0 + warp * 16 + g + 8 * hh;
      lse2[hh] = Portable::lse_log2(p, p.lse, bh, row);
      delta[0][hh] = row < p.seqlen_q ? p.delta[bh * p.seqlen_q + row] : 0.f;
    }

    float dq[1][kDTiles][4];
    float dqb[1][kRTiles][4], dqb_lo[1][kRTiles][4];
    float kbar[1][kRTiles][4];        // P Kb (the dQb correction, sm80/bwd_kernel.cuh "Delta")
    float dsum[1][2] = {{0.f, 0.f}};  // Sigma
    float psum[1][2] = {{0.f, 0.f}};  // rowsum(P') (sm80/bwd_kernel.cuh "LSE")
    sm80::zero(dq);
    sm80::zero(dqb);
    sm80::zero(dqb_lo);
    sm80::zero(kbar);

    auto load_stage = [&](int nb, int buf) {
      const int n0 = nb * kKeyStep;
      cp_async_tile<kKeyStep>(sK(buf), sV(buf), sKb(buf), in.k, p.k_row_stride, in.v, p.v_row_stride, in.kb,
                              p.kb_row_stride, n0, p.seqlen_k, tid);
    };

    // The wgmma operands' addresses in 16-byte units (sm90/gemm.cuh, SmemUnits).
    const SmemUnits sQw = units(sQ + wg * 64 * kDRowBytes);
    const SmemUnits sDow = units(sDo + wg * 64 * kDRowBytes);
    const SmemUnits sQbw = units(sQb + wg * 64 * kRRowBytes);
    const SmemUnits stage0_u = units(stage0);
    auto uK = [&](int buf) { return stage0_u + u32(buf * (kDqStageBytes >> 4)); };
    auto uV = [&](int buf) { return uK(buf) + u32(kKeyD >> 4); };
    auto uKb = [&](int buf) { return uK(buf) + u32((2 * kKeyD) >> 4); };

    auto body = [&](int nb, int buf) {
      const int n0 = nb * kKeyStep;
      // A key tile wholly right of this warpgroup's causal diagonal contributes nothing.
      if (kCausal && n0 > wm0 + 63 + mask.diag_offset) return;
      // S = Q K^T (+ bias), then dP = dO V^T.
      float s[1][kKeyStepTiles][4], dp[1][kKeyStepTiles][4];
      score_products<kKeyStep>(s, dp, sQw, uK(buf), sQbw, uKb(buf), sDow, uV(buf), p.scale, p.q_is_scaled != 0);

      // P = exp2(S - LSE[row]); element (i, e) is row wm0 + warp * 16 + g (+ 8 for e >= 2) and
      // key n0 + i * 8 + 2t + (e & 1).
      exponentials(
          s, s_log2, mask.tile_needs_mask(wm0, n0, kKeyStep), [&](int, int e) { return lse2[e >> 1]; },
          [&](int i, int e) { return mask.masked(wm0 + warp * 16 + g + 8 * (e >> 1), n0 + i * 8 + 2 * t + (e & 1)); });
      // The row sums of P and of dS run while products are in flight: the register fences pin
      // them before the waits (the compiler would otherwise sink them past).
      auto row_sums = [](float (&sum)[1][2], const float (&x)[1][kKeyStepTiles][4]) {
        Portable::add_row_sums(sum, x);
        reg_fence(sum[0][0]);
        reg_fence(sum[0][1]);
      };
      // With the bias, P Kb (the dQb correction) is issued behind dP, and waited for before dS is
      // packed, so that P's packed copy is free again by then (the register peak). With TMA loads
      // and ranks up to 16 (kLateKbarWait) dS's arithmetic waits for dP only, the older group,
      // and runs while P Kb is in flight. That holds P's copy longer (5-9 more registers): with
      // cp.async copies it spills 4-40 bytes at d64 (ranks 1-3, under the 168-register cap of
      // three CTAs), and at d32 rank 32 it crosses that line (164 to 171 registers).
      constexpr bool kLateKbarWait = kTma != 0 && kRank <= 16;
      u32 pa[1][kHasBias ? kKeyStep / 16 : 1][4];
      if constexpr (kHasBias) {
        sm80::pack_a<Element, 1, kKeyStepTiles>(pa, s);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kKeyStep / 16; ++kk)
          gemm_rs<Element, kRK, kChunkR, kKeyChunkR>(&kbar[0][0][0], pa[0][kk], uKb(buf) + u32(kk * kRRowBytes));
        wgmma_commit();
        fence_regs(s);
        row_sums(psum, s);
        if constexpr (kLateKbarWait) {
          wgmma_wait<1>();  // dP
        } else {
          wgmma_wait<0>();  // dP and P Kb
          fence_regs(kbar);
          fence_regs(pa);
        }
      } else {
        row_sums(psum, s);
        wgmma_wait<0>();  // dP
      }
      fence_regs(dp);
      if (n_blocks == 1) Portable::measure_delta(delta, s, dp);  // these rows see this tile only
#pragma unroll
      for (int i = 0; i < kKeyStepTiles; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[0][i][e] = s[0][i][e] * (dp[0][i][e] - delta[0][e >> 1]);
      if constexpr (kHasBias && kLateKbarWait) {
        fence_regs(dp);   // dS formed before the wait
        wgmma_wait<0>();  // P Kb
        fence_regs(kbar);
        fence_regs(pa);
      }
      u32 dsa[1][kKeyStep / 16][4];
      sm80::pack_a<Element, 1, kKeyStepTiles>(dsa, dp);
      u32 dsa_lo[1][kKeyStep / 16][4];
      if constexpr (factor_lo) sm80::pack_a_residual<Element, 1, kKeyStepTiles>(dsa_lo, dsa, dp, kLoScale);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kKeyStep / 16; ++kk) {
        gemm_rs<Element, kHeadDim, kChunkD, kKeyChunkD>(&dq[0][0][0], dsa[0][kk], uK(buf) + u32(kk * kDRowBytes));
        if constexpr (kHasBias) {
          const SmemUnits kb_at = uKb(buf) + u32(kk * kRRowBytes);  // 16 rows of kRRowBytes
          gemm_rs<Element, kRK, kChunkR, kKeyChunkR>(&dqb[0][0][0], dsa[0][kk], kb_at);
          if constexpr (factor_lo) gemm_rs<Element, kRK, kChunkR, kKeyChunkR>(&dqb_lo[0][0][0], dsa_lo[0][kk], kb_at);
        }
      }
      wgmma_commit();
      if constexpr (kHasBias) {
        fence_regs(dp);  // keeps the sum below the products' issue
        row_sums(dsum, dp);  // Sigma (sm80 "Delta"), while dS K runs
      }
      wgmma_wait<0>();
      fence_regs(dq);
      fence_regs(dqb);
      fence_regs(dqb_lo);
      fence_regs(dsa);
      if constexpr (factor_lo) fence_regs(dsa_lo);
    };

    if constexpr (kTma) {
      const u32 bars = stage0 + kStages * kDqStageBytes;
      const int qb_h = factor_coord(p.qb_head_stride, h), qb_b = factor_coord(p.qb_batch_stride, b);
      const int kb_h = factor_coord(p.kb_head_stride, h), kb_b = factor_coord(p.kb_batch_stride, b);
      init_barriers(bars, tid);
      if (tid == 0)
        tma_tile<kBlockM>(sQ, sDo, sQb, prm.block[Sm90BwdParams::kQ], prm.block[Sm90BwdParams::kDo],
                          prm.block[Sm90BwdParams::kQb], bars + 8 * kStages, m0, h, b, qb_h, qb_b);
      auto issue = [&](int nb, int buf, bool) {
        if (tid == 0)
          tma_tile<kKeyStep>(sK(buf), sV(buf), sKb(buf), prm.step[Sm90BwdParams::kK], prm.step[Sm90BwdParams::kV],
                             prm.step[Sm90BwdParams::kKb], bars + 8 * buf, nb * kKeyStep, h, b, kb_h, kb_b);
      };
      tma_pipeline(0, n_blocks, bars, issue, body, [](int) {});
    } else {
      cp_async_tile<kBlockM>(sQ, sDo, sQb, in.q, p.q_row_stride, in.dout, p.do_row_stride, in.qb, p.qb_row_stride, m0,
                             p.seqlen_q, tid);
      sm80::bwd_pipeline<kStages>(0, n_blocks, [] { fence_proxy_async(); }, load_stage, body);
    }

    const int row0 = wm0 + warp * 16;
    // P' to P (sm80/bwd_kernel.cuh "LSE"); delta_dq and lse_dq out.
    float inv_c[1][2];
    Portable::finish_row_sums(psum, inv_c);
    Portable::scale_rows(dq, inv_c);
    if constexpr (kHasBias) {
      Portable::scale_rows(dqb, inv_c);
      Portable::scale_rows(dqb_lo, inv_c);
    }
    Portable::finish_delta(p, dsum, delta, psum, inv_c, dqb, [&](int mt, int nt, int e) { return kbar[mt][nt][e]; },
                           kHasBias, true, bh, row0, lane);
    Element* gdq = static_cast<Element*>(p.dq) + b * p.dq_batch_stride + h * p.dq_head_stride;
    Portable::template write_acc<1, kDTiles, kQkvAlign>(dq, p.scale, gdq, p.dq_row_stride, nullptr, 0, row0,
                                                        p.seqlen_q, 0, kHeadDim, lane);
    if constexpr (kHasBias)
      Portable::write_factor_grad(dqb, dqb_lo, p.dqb_accum, p.dqb, p.dqb_batch_stride, p.dqb_row_stride,
                                  p.dqb_head_stride, b, h, bh, p.seqlen_q, row0, lane);
  }
};

}  // namespace sm90
}  // namespace flashbias
