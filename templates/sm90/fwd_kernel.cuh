// FlashBias forward, sm90 family (Hopper, sm_90a): wgmma + TMA + warp specialisation.
//
//   O = softmax(scale * Q K^T + Qb Kb^T + mask) V,   LSE = log sum exp of each row's scores
//
// One CTA owns kBlockM query rows of one (batch, head) and is kBlockM / 64 + 1 warpgroups:
//   - warpgroup 0, the producer: it gives most of its registers back (setmaxnreg) and its first
//     thread issues the TMA loads (its other threads copy narrow factor rows, below). Q, K and V tiles come by TMA (cp.async.bulk.tensor, 128/64/32-byte swizzled
//     chunks of the head dim, out-of-range rows and columns zero-filled by the copy engine) into a
//     ring of kStages stages, each guarded by a "full" mbarrier (TMA bytes + the factor loads) and
//     an "empty" mbarrier (one arrival per consumer warp). The factor tiles Qb, Kb come by TMA too
//     when their rows are 16-byte aligned (the rank padded to 16 by the copy engine's zero fill;
//     a broadcast, stride-0, dimension described with extent 1). Narrower factor rows (rank 1, 2,
//     3, ...), which TMA cannot describe, are copied by the producer's lanes into the same
//     swizzled layout: by cp.async when the rows are 4- or 8-byte aligned (even rank; the rank
//     padding zeroed once at the start; the first warp up to rank 32, all four past it), by
//     ordinary loads and stores otherwise (odd rank; all four warps, few units each); the
//     copying threads then fence the async proxy and arrive on the barrier (kCopyThreads).
//   - warpgroups 1..kBlockM/64, the consumers: each owns 64 query rows and walks the key tiles
//     from last to first (the tiles that need masking first), per tile:
//       S  = Q K^T                  wgmma, A = Q and B = K from shared memory (K-major)
//       S  = scale * S + Qb Kb^T    the bias is R extra contraction columns accumulated into the
//                                   same registers after scaling: exact, never materialised.
//                                   fp16 (kFoldScale; common/params.h, folds_scale_into_q: every
//                                   default scale; the runtime sends fp16 scales outside
//                                   [2^-6, 1] to the portable family) instead scales its Q rows in
//                                   shared memory once, and S = (scale Q) K^T + Qb Kb^T is one
//                                   chain of products with no wait or multiply in between
//       P  = online softmax (fp32, exp2; the sm80 family's OnlineSoftmax, same register layout)
//       O += P V                    wgmma, A = P from registers, B = V from shared memory (MN-major)
//     then O is normalised, staged through the consumer's own rows of the Q tile, and written
//     with 16-byte stores; LSE goes straight out.
// The consumer warpgroups (and, with kMinBlocks > 1, several CTAs) interleave on the SM: one's
// softmax overlaps another's wgmma; with kPingPong they take turns at the score products
// (named barriers in a ring), which makes that overlap the rule. kPvOverlap orders a warpgroup's
// products so that P V of one tile overlaps the next tile's Q K^T issue (1) or its softmax (2).
//
// Products wider than one wgmma, or with a width the instruction set here does not cover, are
// split into the widths of sm90/wgmma.cuh: multiples of 64 up to 256 and one tail under 64 that
// starts on a 64-column boundary (so every split starts on a swizzle-row boundary).
#pragma once

#include "common/manifest.h"
#include "common/params.h"
#include "common/sm90_ops.cuh"
#include "sm80/mask.cuh"
#include "sm80/softmax.cuh"
#include "sm80/warp_gemm.cuh"
#include "sm90/gemm.cuh"

namespace flashbias {
namespace sm90 {

/// The tunable template parameters of FwdKernel and their candidate values (templates/README.md).
struct FwdKnobs {
  static constexpr int kBlockM[] = {128, 192, 64};
  static constexpr int kBlockN[] = {128, 64, 192};
  static constexpr int kWarps[] = {12, 16, 8};
  static constexpr int kStages[] = {2, 3};
  // CTAs per SM (__launch_bounds__). 3 and 4 fit one consumer warpgroup per CTA: on rows of a few
  // key tiles one CTA's start (the wait for its Q tile) then overlaps three others' work.
  static constexpr int kMinBlocks[] = {1, 2, 3, 4};
  static constexpr int kPvOverlap[] = {1, 0, 2};
  // The softmax's row max by FMNMX (0) or by compare and select, FSETP + FSEL (1). Fewer
  // instructions, and 5-9% faster on the d32/d64 benchmark rows and on llm_d128_causal; yet
  // llm_d128 without a mask (pvoverlap 1) ran 2.00-2.10 ms with 1 against 2.11-2.23 with 0 in
  // the same session (H100, docs/PERF_NOTES.md), so it is the tuner's to choose.
  static constexpr int kMaxSelect[] = {0, 1};
  // Consumer warpgroups take turns issuing their score products (1; named barriers in a ring),
  // so that one's softmax runs while another's products occupy the tensor cores.
  static constexpr int kPingPong[] = {0, 1};
};

template <class Element, int kHeadDim, int kRank, bool kCausal, int kQkvAlign, int kBiasAlign,
          int kBlockM = 128, int kBlockN = 128, int kWarps = 12, int kStages = 2, int kMinBlocks = 1, int kPvOverlap = 1,
          int kMaxSelect = 0, int kPingPong = 0>
struct FLASHBIAS_KERNEL("fwd", "sm90") FwdKernel {
  using Knobs = FwdKnobs;

  static_assert(kHeadDim % 8 == 0 && kHeadDim >= 16 && kHeadDim <= 256,
                "head_dim must be a multiple of 8 in [16, 256] on the sm90 path");
  static_assert(kRank >= 0 && kRank <= 128, "rank must be in [0, 128]");
  static_assert(kQkvAlign == 16, "the sm90 path loads Q, K and V by TMA, which needs 16-byte aligned rows (qkv_align 16)");
  static_assert(kRank == 0 || (kRank * 2) % kBiasAlign == 0, "bias_align must divide a row of rank elements");
  static_assert(kBlockM % 64 == 0 && kBlockM >= 64 && kBlockM <= 192,
                "block_m must be 64, 128 or 192 (64 query rows per consumer warpgroup)");
  static_assert(kWarps == 4 * (kBlockM / 64 + 1), "warps must be 4 per 64 query rows plus a producer warpgroup of 4");
  static_assert(kBlockN % 64 == 0 && kBlockN >= 64 && kBlockN <= 256, "block_n must be a multiple of 64 in [64, 256]");
  static_assert(kStages >= 2 && kStages <= 4, "stages must be in [2, 4]");

  static constexpr int kThreads = kWarps * 32;
  static constexpr int kConsumers = kBlockM / 64;
  static constexpr int kMinBlocksPerSm = kMinBlocks;
  static constexpr bool kHasBias = kRank > 0;
  // fp16 with a bias: the scale is folded into Q (common/params.h, folds_scale_into_q), and the
  // scores are one chain of products per tile.
  static constexpr bool kFoldScale = kHasBias && ElementTraits<Element>::kIsF16;
  // Factors whose rows, strides and base are 16-byte aligned come by TMA like Q, K, V (the copy
  // engine zero-fills the rank padding); narrower ones are copied by the producer's lanes.
  static constexpr bool kFactorTma = kHasBias && kBiasAlign == 16;
  // Rows aligned to 4 or 8 bytes (rank 2, 4, 6, ... in a packed tensor) are copied by cp.async,
  // which needs no registers to stage them; rows of 2-byte alignment (odd rank) by the lanes'
  // ordinary loads and stores.
  static constexpr bool kFactorCpAsync = kHasBias && !kFactorTma && kBiasAlign >= 4;
  // Threads of the producer warpgroup that copy factor rows. The lane copies: all four warps, so
  // that each thread holds few units in flight and the producer fits in 32 registers (with one
  // warp it took 56, which left the d64 consumers 152, under which ptxas serialised their wgmma
  // pipeline). cp.async: one warp up to rank 32, all four past it, where one warp's issue rate
  // bound the tile (d64 rank 66: 2.31-2.33 ms with one warp, 1.256-1.259 with four; d32 rank 4:
  // 0.968-0.975 with one, 0.989-0.992 with four; H100, session 22).
  static constexpr int kCopyThreads = kHasBias && !kFactorTma ? (kFactorCpAsync && kRank <= 32 ? 32 : 128) : 32;
  static constexpr int kFullArrivals = kHasBias && !kFactorTma ? 1 + kCopyThreads : 1;  // TMA issuer (+ copying threads)
  // Register split (setmaxnreg). Every warp starts with the launch allocation (the cap that
  // __launch_bounds__(kThreads, kMinBlocks) gives ptxas); the producer's setmaxnreg.dec returns
  // registers to the CTA's pool and the consumers' setmaxnreg.inc draws from that pool only, so
  // the split must fit the CTA's own launch allocation, or the consumers wait forever. One
  // consumer warpgroup alone on the SM keeps the launch allocation.
  static constexpr int kLaunchRegs = (65536 / (kThreads * kMinBlocks)) / 8 * 8;
  // More when its threads copy factor rows (addresses, and for the lane copies the staged units).
  static constexpr int kProducerRegs = kHasBias && !kFactorTma ? 32 : 24;
  static constexpr int kConsumerShare = (kLaunchRegs * (kWarps / 4) - kProducerRegs) / kConsumers / 8 * 8;
  static constexpr int kConsumerRegs =
      kConsumers == 1 && kMinBlocks == 1 ? 0 : (kConsumerShare < 240 ? kConsumerShare : 240);
  static_assert(kMinBlocks >= 1 && kMinBlocks <= 4, "min_blocks must be in [1, 4]");
  static_assert(kPvOverlap >= 0 && kPvOverlap <= 2, "pvoverlap must be 0, 1 or 2");
  static_assert(kMaxSelect == 0 || kMaxSelect == 1, "maxselect must be 0 or 1");
  static_assert(kPingPong == 0 || kPingPong == 1, "pingpong must be 0 or 1");
  static constexpr bool kTakeTurns = kPingPong == 1 && kConsumers > 1;
  // Named barriers: 0 is the CTA's, 1..3 each consumer warpgroup's epilogue, 4..6 the turns.
  static constexpr int kTurnBarrier = 4;
  static_assert(kConsumerRegs == 0 || kConsumerRegs >= 96,
                "block_m and min_blocks leave under 96 registers per consumer thread");
  // ptxas places each wgmma's accumulators within the launch allocation, whatever setmaxnreg
  // grants later (it refuses such kernels: "Insufficient registers").
  static_assert(65536 / (kWarps * 32 * kMinBlocks) / 8 * 8 >= (kHeadDim > kBlockN ? kHeadDim : kBlockN) / 2 + 32,
                "the launch register allocation (65536 / (threads x min_blocks)) must hold the widest wgmma's "
                "accumulators (max(head_dim, block_n) / 2) plus 32");

  // Head dim: kChunkD columns per swizzled row, kDChunks rows of chunks; the contraction of
  // Q K^T runs over kDK columns (the zero-filled tail of the last chunk pads it to 16).
  static constexpr int kChunkD = chunk_elems(kHeadDim);
  static constexpr int kDChunks = (kHeadDim + kChunkD - 1) / kChunkD;
  static constexpr int kDK = round_up(kHeadDim, 16);
  static constexpr int kDRowBytes = kChunkD * 2;
  // Rank: the same for the factor tiles (zero-padded to a multiple of 16 by the producer).
  static constexpr int kRK = kHasBias ? round_up(kRank, 16) : 0;
  static constexpr int kChunkR = chunk_elems(kRK);
  static constexpr int kRChunks = kHasBias ? (kRK + kChunkR - 1) / kChunkR : 0;
  static constexpr int kRRowBytes = kChunkR * 2;

  static constexpr int kNTiles = kBlockN / 8;  // n8 column groups of a score tile
  static constexpr int kDTiles = kHeadDim / 8;  // n8 column groups of the output

  // Shared memory, bytes; every tile starts on a 1024-byte boundary (the swizzle pattern's).
  static constexpr int kQChunkBytes = kBlockM * kDRowBytes;
  static constexpr int kKChunkBytes = kBlockN * kDRowBytes;
  static constexpr int kQbChunkBytes = kBlockM * kRRowBytes;
  static constexpr int kKbChunkBytes = kBlockN * kRRowBytes;
  static constexpr int kQBytes = kDChunks * kQChunkBytes;
  static constexpr int kQbBytes = kRChunks * kQbChunkBytes;
  static constexpr int kKBytes = kDChunks * kKChunkBytes;  // also V
  static constexpr int kKbBytes = kRChunks * kKbChunkBytes;
  static constexpr int kStageBytes = 2 * kKBytes + kKbBytes;
  static constexpr int kBarrierOffset = kQBytes + kQbBytes + kStages * kStageBytes;
  static constexpr int kBarrierBytes = 8 * (1 + 2 * kStages);
  // + 1024: the dynamic shared memory window is aligned up to 1024 bytes at run time.
  static constexpr int kSmemBytes = kBarrierOffset + kBarrierBytes + 1024;

  using Softmax = sm80::OnlineSoftmax<1, kNTiles, kDTiles, kMaxSelect == 1>;
  struct alignas(16) Vec4u { u32 x, y, z, w; };

  // ---- producer ------------------------------------------------------------------------------

  /// Copy rows [0, kRows) of a factor tile (rank kRank, rows `row_stride` elements apart) into
  /// the swizzled tile at `dst` (kRChunks chunks of kRows x kChunkR), zero-filling rows past
  /// `rows_valid` and the rank padding: the path for factor rows of 2-byte alignment (odd rank),
  /// which neither TMA nor cp.async can address. Each of the kCopyThreads threads writes whole
  /// 16-byte units; the loads of a batch of units are all issued before their stores, so their
  /// latencies overlap.
  template <int kRows>
  static __device__ __forceinline__ void copy_factor(u32 dst, const Element* src, long long row_stride, int rows_valid,
                                                     int ptid) {
    static_assert(kBiasAlign == 2, "4-, 8- and 16-byte factor rows go by cp.async or TMA");
    constexpr int kUnitsPerChunkRow = kChunkR / 8;
    constexpr int kUnitsPerRow = kRChunks * kUnitsPerChunkRow;
    constexpr int kUnits = kRows * kUnitsPerRow;
    constexpr int kPerLane = (kUnits + kCopyThreads - 1) / kCopyThreads;
    constexpr int kBatch = kPerLane < 2 ? kPerLane : 2;
#pragma unroll 1
    for (int i0 = 0; i0 < kPerLane; i0 += kBatch) {
      u32 w[kBatch][4];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int u = (i0 + i) * kCopyThreads + ptid;
        const int r = u / kUnitsPerRow;
        const int col0 = (u - r * kUnitsPerRow) * 8;
        w[i][0] = w[i][1] = w[i][2] = w[i][3] = 0u;
        if (u < kUnits && r < rows_valid) {
          const Element* row = src + r * row_stride;
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            if (col0 + e < kRank) {
              const u32 bits = *reinterpret_cast<const u16*>(row + col0 + e);
              w[i][e / 2] |= (e & 1) ? bits << 16 : bits;
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int u = (i0 + i) * kCopyThreads + ptid;
        if (u < kUnits) {
          const int r = u / kUnitsPerRow;
          const int cu = u - r * kUnitsPerRow;
          const int chunk = cu / kUnitsPerChunkRow;
          const int j = cu - chunk * kUnitsPerChunkRow;
          const u32 off = chunk * kRows * kRRowBytes + swizzle<kRRowBytes>(u32(r * kRRowBytes + j * 16));
          asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(dst + off), "r"(w[i][0]), "r"(w[i][1]),
                       "r"(w[i][2]), "r"(w[i][3]));
        }
      }
    }
  }

  /// copy_factor by cp.async (factor rows aligned to kBiasAlign = 4 or 8 bytes): each lane moves
  /// kBiasAlign bytes per instruction straight into shared memory, rows past `rows_valid` are
  /// zero-filled by the copy (src-size 0), and the rank padding was zeroed once at the start
  /// (zero_factor_padding) since only the rank's columns are ever written.
  template <int kRows>
  static __device__ __forceinline__ void copy_factor_async(u32 dst, const Element* src, long long row_stride,
                                                           int rows_valid, int ptid) {
    constexpr int kUnitsPerChunkRow = kChunkR / 8;
    constexpr int kDataUnitsPerRow = (kRank + 7) / 8;  // 16-byte units that hold factor columns
    constexpr int kUnits = kRows * kDataUnitsPerRow;
    constexpr int kVec = kBiasAlign / 2;  // elements per cp.async
    const auto copy_units = [&](int u0) {
      const int u = u0 + ptid;
      if (kUnits % kCopyThreads == 0 || u < kUnits) {
        const int r = u / kDataUnitsPerRow;
        const int ju = u - r * kDataUnitsPerRow;
        const int chunk = ju / kUnitsPerChunkRow;
        const int j = ju - chunk * kUnitsPerChunkRow;
        const u32 off = chunk * kRows * kRRowBytes + swizzle<kRRowBytes>(u32(r * kRRowBytes + j * 16));
        const bool valid = r < rows_valid;
        const Element* row = src + (valid ? r : 0) * row_stride + ju * 8;
#pragma unroll
        for (int e = 0; e < 8; e += kVec)
          if (ju * 8 + e < kRank) cp_async<kBiasAlign>(dst + off + e * 2, row + e, valid);
      }
    };
    // Unrolled whole, a long copy (high rank, tall tile) keeps every unit's address live and
    // spilled under the producer's 32 registers (hundreds of bytes at ranks 66-100 with one warp,
    // 24-80 at d32 ranks 66-100 with four); past eight units per thread of one warp, or past two
    // of four warps, it is a loop.
    if constexpr (kUnits <= (kCopyThreads == 32 ? 8 : 2) * kCopyThreads) {
#pragma unroll
      for (int u0 = 0; u0 < kUnits; u0 += kCopyThreads) copy_units(u0);
    } else {
#pragma unroll 1
      for (int u0 = 0; u0 < kUnits; u0 += kCopyThreads) copy_units(u0);
    }
  }

  /// Zero the factor tiles (Q's and every stage's) once: copy_factor_async writes only the rank's
  /// columns, and the contraction runs over the rank padded to 16.
  static __device__ __forceinline__ void zero_factor_padding(u32 smem, int tid) {
    const u32 sQb = smem + kQBytes;
    const u32 sStage0 = sQb + kQbBytes;
    for (int i = tid * 16; i < kQbBytes; i += kThreads * 16)
      asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(sQb + i), "r"(0u));
#pragma unroll 1
    for (int st = 0; st < kStages; ++st)
      for (int i = tid * 16; i < kKbBytes; i += kThreads * 16)
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(sStage0 + st * kStageBytes + 2 * kKBytes + i),
                     "r"(0u));
    fence_proxy_async();  // read by wgmma (the async proxy)
  }

  static __device__ __forceinline__ void producer(const Sm90FwdParams& prm, u32 smem, int b, int h, int m0,
                                                  int n_blocks, int ptid) {
    const FwdParams& p = prm.p;
    const u32 sQ = smem;
    const u32 sQb = sQ + kQBytes;
    const u32 sStage0 = sQb + kQbBytes;
    const u32 bar_q = smem + kBarrierOffset;
    auto bar_full = [&](int s) { return bar_q + 8 * (1 + s); };
    auto bar_empty = [&](int s) { return bar_q + 8 * (1 + kStages + s); };
    // Factor coordinates: a broadcast (stride-0) dimension is encoded with extent 1 (host side).
    const int qb_b = p.qb_batch_stride == 0 ? 0 : b, qb_h = p.qb_head_stride == 0 ? 0 : h;
    const int kb_b = p.kb_batch_stride == 0 ? 0 : b, kb_h = p.kb_head_stride == 0 ? 0 : h;

    if (ptid == 0) {
      tma_prefetch_desc(&prm.tma_q);
      tma_prefetch_desc(&prm.tma_k);
      tma_prefetch_desc(&prm.tma_v);
      mbar_arrive_expect_tx(bar_q, kQBytes + (kFactorTma ? kQbBytes : 0));
#pragma unroll
      for (int c = 0; c < kDChunks; ++c) tma_load_4d(sQ + c * kQChunkBytes, &prm.tma_q, bar_q, c * kChunkD, m0, h, b);
      if constexpr (kFactorTma) {
#pragma unroll
        for (int c = 0; c < kRChunks; ++c)
          tma_load_4d(sQb + c * kQbChunkBytes, &prm.tma_qb, bar_q, c * kChunkR, m0, qb_h, qb_b);
      }
    }
    const Element* gKb = nullptr;
    if constexpr (kHasBias && !kFactorTma) {
      const Element* gQb =
          static_cast<const Element*>(p.qb) + b * p.qb_batch_stride + h * p.qb_head_stride + m0 * p.qb_row_stride;
      gKb = static_cast<const Element*>(p.kb) + b * p.kb_batch_stride + h * p.kb_head_stride;
      if constexpr (kFactorCpAsync) {
        copy_factor_async<kBlockM>(sQb, gQb, p.qb_row_stride, p.seqlen_q - m0, ptid);
        cp_async_commit();
        cp_async_wait<0>();
      } else {
        copy_factor<kBlockM>(sQb, gQb, p.qb_row_stride, p.seqlen_q - m0, ptid);
      }
      fence_proxy_async();
      mbar_arrive(bar_q);
    }

    for (int it = 0; it < n_blocks; ++it) {
      const int nb = n_blocks - 1 - it;
      const int n0 = nb * kBlockN;
      const int s = it % kStages;
      const u32 phase = u32(it / kStages) & 1u;
      mbar_wait(bar_empty(s), phase ^ 1u);  // the consumers released this stage (free on the first lap)
      const u32 sK = sStage0 + s * kStageBytes;
      const u32 sV = sK + kKBytes;
      const u32 sKb = sV + kKBytes;
      if (ptid == 0) {
        mbar_arrive_expect_tx(bar_full(s), 2 * kKBytes + (kFactorTma ? kKbBytes : 0));
#pragma unroll
        for (int c = 0; c < kDChunks; ++c) tma_load_4d(sK + c * kKChunkBytes, &prm.tma_k, bar_full(s), c * kChunkD, n0, h, b);
        if constexpr (kFactorTma) {
#pragma unroll
          for (int c = 0; c < kRChunks; ++c)
            tma_load_4d(sKb + c * kKbChunkBytes, &prm.tma_kb, bar_full(s), c * kChunkR, n0, kb_h, kb_b);
        }
#pragma unroll
        for (int c = 0; c < kDChunks; ++c) tma_load_4d(sV + c * kKChunkBytes, &prm.tma_v, bar_full(s), c * kChunkD, n0, h, b);
      }
      if constexpr (kHasBias && !kFactorTma) {
        if constexpr (kFactorCpAsync) {
          copy_factor_async<kBlockN>(sKb, gKb + n0 * p.kb_row_stride, p.kb_row_stride, p.seqlen_k - n0, ptid);
          cp_async_commit();
          cp_async_wait<0>();
        } else {
          copy_factor<kBlockN>(sKb, gKb + n0 * p.kb_row_stride, p.kb_row_stride, p.seqlen_k - n0, ptid);
        }
        fence_proxy_async();
        mbar_arrive(bar_full(s));
      }
    }
  }

  // ---- consumer ------------------------------------------------------------------------------

  /// Rewrites this warpgroup's 64 rows of the Q tile in shared memory, word by word (two
  /// elements each), through f, then hands them to wgmma: the swizzle permutes 16-byte units
  /// within a row, so per D chunk the 64 rows' bytes are contiguous and rewritten in place.
  template <class F>
  static __device__ __forceinline__ void transform_q_rows(Element* smem_ptr, int wg, int tid_wg, F&& f) {
    constexpr int kUnits = 64 * kDRowBytes / 16;  // per D chunk
#pragma unroll 1
    for (int c = 0; c < kDChunks; ++c) {
      Vec4u* const rows =
          reinterpret_cast<Vec4u*>(reinterpret_cast<char*>(smem_ptr) + c * kQChunkBytes + wg * 64 * kDRowBytes);
#pragma unroll 2
      for (int u = tid_wg; u < kUnits; u += 128) {
        Vec4u v = rows[u];
        v.x = f(v.x);
        v.y = f(v.y);
        v.z = f(v.z);
        v.w = f(v.w);
        rows[u] = v;
      }
    }
    fence_proxy_async();  // generic-proxy writes, before wgmma (the async proxy) reads them
    named_sync(1 + wg, 128);
  }

  /// A consumer warpgroup. With kFoldScale it scales its Q rows first (folds_scale_into_q): the
  /// runtime sends the fp16 scales that cannot fold to the portable family and refuses to launch
  /// this kernel with them (LaunchPlan::launch_forward).
  static __device__ __forceinline__ void consumer(const FwdParams& p, u32 smem, Element* smem_ptr, int wg, int b,
                                                  int h, int m0, int n_blocks, int tid_wg) {
    const int lane = tid_wg & 31;
    const int warp = tid_wg >> 5;  // within the warpgroup
    const int g = lane >> 2, t = lane & 3;
    const int row0 = m0 + wg * 64;  // the warpgroup's first query row
    const u32 sQ = smem + wg * 64 * kDRowBytes;
    const u32 sQb = smem + kQBytes + wg * 64 * kRRowBytes;
    const u32 sStage0 = smem + kQBytes + kQbBytes;
    const u32 bar_q = smem + kBarrierOffset;
    auto bar_full = [&](int s) { return bar_q + 8 * (1 + s); };
    auto bar_empty = [&](int s) { return bar_q + 8 * (1 + kStages + s); };

    const sm80::Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    // With a bias the scale is in Q (kFoldScale, below) or applied before the bias is added;
    // without, it folds into exp2 (a scale <= 0 through the Q transform below,
    // sm80::nobias_scale_log2).
    const float scale_log2 = kHasBias ? kLog2e : sm80::nobias_scale_log2(p.scale);

    float o[1][kDTiles][4];
#pragma unroll
    for (int i = 0; i < kDTiles; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[0][i][e] = 0.f;
    Softmax softmax;
    softmax.init();
    float s[1][kNTiles][4];
    u32 pa[1][kBlockN / 16][4];

    // kPvOverlap (the order of a warpgroup's products; the tensor cores run them back to back):
    //  0: each tile waits for its own P V.
    //  1: O += P V of tile j stays in flight while tile j + 1's wait and Q K^T issue.
    //  2: P V of tile j is issued behind tile j + 1's score products (Q K^T and the bias) and
    //     runs while tile j + 1's softmax turns its scores into probabilities; O is rescaled, and
    //     P's registers rewritten, only after it completes.
    // A stage is released, and P's registers (read asynchronously by the instruction) reused,
    // only after the P V that reads them has completed.
    int pv_stage = -1;
    auto release = [&](int stage) {
      warp_sync();
      if (lane == 0) mbar_arrive(bar_empty(stage));
    };
    auto pv_done = [&] {
      fence_regs(o);
      fence_regs(pa);
      if (pv_stage >= 0) release(pv_stage);
      pv_stage = -1;
    };
    auto issue_pv = [&](int stage) {
      const u32 sV = sStage0 + stage * kStageBytes + kKBytes;
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) gemm_rs<Element, kHeadDim, kChunkD, kKChunkBytes>(&o[0][0][0], pa[0][kk], sV + kk * 16 * kDRowBytes);
      wgmma_commit();
      pv_stage = stage;
    };
    int pv_next = -1;  // kPvOverlap 2: the stage whose P V waits for the next tile's score products
    // kPingPong: warpgroup w issues a tile's score products only after warpgroup w - 1 (mod the
    // consumer count) has issued its own (named barrier kTurnBarrier + w over both warpgroups).
    // The last warpgroup opens the ring and does not arrive after its last tile, so every
    // barrier sees exactly n_blocks arrivals; skipped (masked) tiles take their turn too.
    auto turn_begin = [&] {
      if constexpr (kTakeTurns) named_sync(kTurnBarrier + wg, 256);
    };
    auto turn_end = [&](int it) {
      if constexpr (kTakeTurns)
        if (wg != kConsumers - 1 || it != n_blocks - 1) named_arrive(kTurnBarrier + (wg + 1) % kConsumers, 256);
    };
    if constexpr (kTakeTurns)
      if (wg == kConsumers - 1 && n_blocks > 0) named_arrive(kTurnBarrier, 256);
    mbar_wait(bar_q, 0);
    // kFoldScale: Q scaled once, so that S = (scale Q) K^T + Qb Kb^T is one chain of products per
    // tile, with no multiply per score and no wait between the products. Without a bias and a
    // scale <= 0: Q's signs flipped (or Q zeroed) once (sm80::nobias_scale_log2).
    if constexpr (kFoldScale) {
      transform_q_rows(smem_ptr, wg, tid_wg, [&](u32 w) { return scale_pair<Element>(w, p.scale); });
    } else if constexpr (!kHasBias) {
      if (!(p.scale > 0.f))
        transform_q_rows(smem_ptr, wg, tid_wg, [&](u32 w) { return sm80::q_for_nonpositive_scale(w, p.scale); });
    }
    // Key tiles wholly right of this warpgroup's causal diagonal contribute nothing. The loop
    // visits the tiles right to left, so they are its first ones. Under kPvOverlap 2 they are
    // consumed (and take their turn) in a loop of their own: skipped inside the main loop, their
    // path made ptxas serialise every wgmma of the kernel (its C7515 note, d64 causal; 0.433 ->
    // 0.380 ms on b=4,h=16,n=4096,d=64,r=16, H100). The other product orders keep the skip in
    // the main loop (alibi_gpt2 ran 0.3-1.3% slower with the separate loop).
    constexpr bool kSkipLoop = kCausal && kPvOverlap == 2;
    int it = 0;
    if constexpr (kSkipLoop) {
      for (; it < n_blocks; ++it) {
        if (!((n_blocks - 1 - it) * kBlockN > row0 + 63 + mask.diag_offset)) break;
        const int st = it % kStages;
        mbar_wait(bar_full(st), u32(it / kStages) & 1u);
        release(st);
        turn_begin();
        turn_end(it);
      }
    }
    for (; it < n_blocks; ++it) {
      const int nb = n_blocks - 1 - it;
      const int n0 = nb * kBlockN;
      const int st = it % kStages;
      mbar_wait(bar_full(st), u32(it / kStages) & 1u);
      const u32 sK = sStage0 + st * kStageBytes;
      const u32 sKb = sK + 2 * kKBytes;
      if (kCausal && !kSkipLoop && n0 > row0 + 63 + mask.diag_offset) {
        release(st);
        turn_begin();
        turn_end(it);
        continue;
      }
      turn_begin();
      wgmma_fence();
      gemm_ss<Element, kBlockN, kDK, kChunkD, kQChunkBytes, kKChunkBytes>(&s[0][0][0], sQ, sK, false);
      if constexpr (kFoldScale) gemm_ss<Element, kBlockN, kRK, kChunkR, kQbChunkBytes, kKbChunkBytes>(&s[0][0][0], sQb, sKb, true);
      wgmma_commit();
      if constexpr (kHasBias && !kFoldScale) {  // the scale applies to Q K^T only: scale, then add the bias
        wgmma_wait<0>();
        fence_regs(s);
        if constexpr (kPvOverlap != 2) pv_done();
#pragma unroll
        for (int i = 0; i < kNTiles; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[0][i][e] *= p.scale;
        wgmma_fence();
        gemm_ss<Element, kBlockN, kRK, kChunkR, kQbChunkBytes, kKbChunkBytes>(&s[0][0][0], sQb, sKb, true);
        wgmma_commit();
      }
      turn_end(it);
      if (kPvOverlap == 2 && pv_next >= 0) {
        issue_pv(pv_next);
        pv_next = -1;
        wgmma_wait<1>();  // the score products are done; P V may still run
      } else {
        wgmma_wait<0>();
      }
      fence_regs(s);
      if constexpr (kPvOverlap != 2) pv_done();
      if (mask.tile_needs_mask(row0, n0, kBlockN)) {
#pragma unroll
        for (int i = 0; i < kNTiles; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = row0 + warp * 16 + g + (e >= 2 ? 8 : 0);
            const int col = n0 + i * 8 + 2 * t + (e & 1);
            if (mask.masked(row, col)) s[0][i][e] = neg_inf();
          }
      }
      if constexpr (kPvOverlap == 2) {
        float corr[1][2];
        softmax.probabilities(s, scale_log2, corr);
        wgmma_wait<0>();
        pv_done();
        softmax.rescale(o, corr);
        sm80::pack_a<Element, 1, kNTiles>(pa, s);
        pv_next = st;
      } else {
        softmax.update(s, o, scale_log2);
        sm80::pack_a<Element, 1, kNTiles>(pa, s);
        issue_pv(st);
        if constexpr (!kPvOverlap) {
          wgmma_wait<0>();
          pv_done();
        }
      }
    }
    if (pv_next >= 0) issue_pv(pv_next);
    wgmma_wait<0>();
    pv_done();

    // Epilogue: normalise, stage O in this warpgroup's own rows of the Q tile (swizzled like Q;
    // no other warpgroup reads them, and every wgmma reading them has completed), then write
    // whole 16-byte units.
    softmax.finalize();
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const float inv = softmax.inv_sum(0, hh);
      const int r = warp * 16 + g + 8 * hh;  // row within the warpgroup
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        const int c = i * 8 + 2 * t;
        const u32 packed = ElementTraits<Element>::pack(o[0][i][2 * hh] * inv, o[0][i][2 * hh + 1] * inv);
        const u32 off = (c / kChunkD) * kQChunkBytes + swizzle<kDRowBytes>(u32(r * kDRowBytes + (c % kChunkD) * 2));
        asm volatile("st.shared.u32 [%0], %1;" ::"r"(sQ + off), "r"(packed) : "memory");
      }
      if (t == 0 && p.lse != nullptr && row0 + r < p.seqlen_q)
        p.lse[((long long)b * p.heads + h) * p.seqlen_q + row0 + r] = softmax.lse(0, hh, scale_log2);
    }
    named_sync(1 + wg, 128);
    constexpr int kUnitsPerRow = kHeadDim / 8;
    Element* gO = static_cast<Element*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride + row0 * p.o_row_stride;
    const Element* sQp = smem_ptr + wg * 64 * kChunkD;
#pragma unroll 4
    for (int u = tid_wg; u < 64 * kUnitsPerRow; u += 128) {
      const int r = u / kUnitsPerRow;
      const int c = (u - r * kUnitsPerRow) * 8;
      if (row0 + r < p.seqlen_q) {
        const u32 off = (c / kChunkD) * kQChunkBytes + swizzle<kDRowBytes>(u32(r * kDRowBytes + (c % kChunkD) * 2));
        *reinterpret_cast<Vec4u*>(gO + r * p.o_row_stride + c) =
            *reinterpret_cast<const Vec4u*>(reinterpret_cast<const char*>(sQp) + off);
      }
    }
  }

  static __device__ void run(const Sm90FwdParams& prm) {
    const FwdParams& p = prm.p;
    extern __shared__ Vec4u smem_raw[];
    // Align the window to 1024 bytes (the swizzle pattern's period; kSmemBytes reserves the slack).
    const u32 raw = smem_addr(smem_raw);
    const u32 pad = ((raw + 1023u) & ~1023u) - raw;
    const u32 smem = raw + pad;
    Element* const smem_ptr = reinterpret_cast<Element*>(reinterpret_cast<char*>(smem_raw) + pad);

    const int tid = int(thread_idx());
    const int warp = tid >> 5;
    const int wg = warp >> 2;

    const int bid = int(block_idx());
    const int bh = int(fast_divide(u32(bid), p.m_blocks_div));  // bid / num_m_blocks, from host constants
    int m_block = bid - bh * p.num_m_blocks;
    if (kCausal) m_block = p.num_m_blocks - 1 - m_block;  // heaviest first
    const int b = int(fast_divide(u32(bh), p.heads_div));
    const int h = bh - b * p.heads;
    const int m0 = m_block * kBlockM;
    const sm80::Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    const int key_end = mask.key_end(m0, kBlockM);
    const int n_blocks = key_end > 0 ? ceil_div(key_end, kBlockN) : 0;

    const u32 bar_q = smem + kBarrierOffset;
    if (tid == 0) {
      mbar_init(bar_q, kFullArrivals);
#pragma unroll
      for (int s = 0; s < kStages; ++s) {
        mbar_init(bar_q + 8 * (1 + s), kFullArrivals);
        mbar_init(bar_q + 8 * (1 + kStages + s), kConsumers * 4);  // empty: one per consumer warp
      }
      mbar_fence_init();
    }
    if constexpr (kFactorCpAsync) zero_factor_padding(smem, tid);
    block_sync();

    if (wg == 0) {
      if constexpr (kConsumerRegs > 0) regs_dealloc<kProducerRegs>();
      // One copying warp: warp 0 with its lane (tid & 31 == tid there; this spelling keeps those
      // kernels' cubins as they were). Four: the whole warpgroup.
      if (kCopyThreads == 128 || warp == 0) producer(prm, smem, b, h, m0, n_blocks, kCopyThreads == 128 ? tid : tid & 31);
    } else {
      if constexpr (kConsumerRegs > 0) regs_alloc<kConsumerRegs>();
      consumer(p, smem, smem_ptr, wg - 1, b, h, m0, n_blocks, tid - 128 * wg);
    }
  }
};

}  // namespace sm90
}  // namespace flashbias
