// FlashBias forward, sm80 family (mma.sync + ldmatrix + cp.async; runs on sm_80 and newer).
//
//   O = softmax(scale * Q K^T + Qb Kb^T + mask) V,   LSE = log sum exp of each row's scores
//
// Algorithm (FlashAttention-2 style): one CTA owns kBlockM query rows of one (batch, head); each
// warp owns kBlockM / kWarps of those rows, so softmax statistics never leave a warp. The CTA walks
// the key tiles from last to first (the tiles that need masking come first), and per tile:
//   S  = Q K^T            tensor cores, fp32 accumulators
//   S  = scale * S + Qb Kb^T   the low-rank bias is R extra contraction columns accumulated into
//                         the same registers after scaling, so it is exact and never materialised
//                         (fp16 with |scale| in [2^-6, 1]: Q is scaled once in shared memory
//                         instead, S = (scale Q) K^T + Qb Kb^T, as the sm90 forward does:
//                         common/params.h, folds_scale_into_q)
//   P  = online softmax (fp32, exp2)     O = O * corr + P V
// Head dims and ranks that are multiples of 8 but not 16 finish with an m16n8k8 step; the rank is
// zero-padded to a multiple of 8 in shared memory only, never in the caller's tensors.
//
// Pipelines: kStages == 1 keeps one K and one V buffer and overlaps the V load with Q K^T and the
// next K load with P V. kStages == 2 double-buffers K, Kb and V and prefetches two tiles ahead.
//
// kMinBlocks is the CTAs per SM the entry point's __launch_bounds__ asks for: ptxas then caps the
// registers (65536 / (threads * kMinBlocks)). At small head dims the tensor-core, exp (MUFU) and
// FP32 work of one warp run nearly back to back, so more resident warps per SM is what overlaps
// them (docs/PERF_NOTES.md).
//
// kLazyRescale: the softmax keeps each row's max until a tile raises it by more than 2^8, and
// rescales O only when a row of the warp moved (sm80/softmax.cuh): at d128 that skips the 128 O
// multiplies per thread and 64-key tile, twice the FP32 work of the thread's 64 scores
// (llm_d128 -4%); at d <= 64 the vote and branch in the tile loop cost more than the few
// multiplies they skip (d32 +5-7%, d64 +2.5%; docs/PERF_NOTES.md, sm80 forward step 8).
//
// kAhead: the scores of key tile j + 1 are computed in the same stretch of code as the softmax
// and P V of tile j (two score buffers, kStages == 2 only). The two are independent, so ptxas
// interleaves one's tensor-core products with the other's exponentials and FP32 work inside a
// warp, which in-order issue otherwise runs one after the other (docs/PERF_NOTES.md, sm80
// forward step 10). K and V are then loaded one tile apart: K(j + 2) and V(j + 1) at the top of
// iteration j. The score buffers double the score registers, so it suits narrow tiles (d32 with
// 64-key tiles: 2 x 64 score registers per thread).
//
// kMmaSum: the softmax's row sums on the tensor cores (P times ones, one more k16 product per
// m-tile and k16 step of P V, issued among P V's own; sm80/softmax.cuh) instead of one FP32 add
// per score.
#pragma once

#include "common/manifest.h"
#include "common/params.h"
#include "common/sm80_ops.cuh"
#include "sm80/mask.cuh"
#include "sm80/softmax.cuh"
#include "sm80/tile_loader.cuh"
#include "sm80/warp_gemm.cuh"

namespace flashbias {
namespace sm80 {

/// The tunable template parameters of FwdKernel and their candidate values (see templates/README.md).
struct FwdKnobs {
  static constexpr int kBlockM[] = {64, 128};
  static constexpr int kBlockN[] = {32, 64, 128};
  static constexpr int kWarps[] = {4, 8};
  static constexpr int kStages[] = {1, 2};
  static constexpr int kMinBlocks[] = {1, 2, 3, 4};
  static constexpr int kLazyRescale[] = {0, 1};
  static constexpr int kAhead[] = {0, 1};
  static constexpr int kMmaSum[] = {0, 1};
};

struct alignas(16) Vec16 { u32 x, y, z, w; };
struct alignas(8) Vec8 { u32 x, y; };

/// Copy one chunk of kBytes between global and shared memory through registers (epilogue).
template <int kBytes>
__device__ __forceinline__ void copy_chunk(void* dst, const void* src) {
  if constexpr (kBytes == 16) *static_cast<Vec16*>(dst) = *static_cast<const Vec16*>(src);
  else if constexpr (kBytes == 8) *static_cast<Vec8*>(dst) = *static_cast<const Vec8*>(src);
  else if constexpr (kBytes == 4) *static_cast<u32*>(dst) = *static_cast<const u32*>(src);
  else *static_cast<u16*>(dst) = *static_cast<const u16*>(src);
}

template <class Element, int kHeadDim, int kRank, bool kCausal, int kQkvAlign, int kBiasAlign,
          int kBlockM = 128, int kBlockN = 64, int kWarps = 4, int kStages = 1, int kMinBlocks = 1,
          int kLazyRescale = 0, int kAhead = 0, int kMmaSum = 0>
struct FLASHBIAS_KERNEL("fwd", "sm80") FwdKernel {
  using Knobs = FwdKnobs;

  static_assert(kHeadDim % 8 == 0 && kHeadDim >= 8 && kHeadDim <= 256, "head_dim must be a multiple of 8 in [8, 256]");
  static_assert(kRank >= 0 && kRank <= 128, "rank must be in [0, 128]");
  static_assert(kWarps >= 1 && kWarps <= 16, "warps must be in [1, 16]");
  static_assert(kBlockM % (kWarps * 16) == 0, "block_m must be a multiple of 16 * warps (each warp owns whole m16 tiles)");
  static_assert(kBlockN % 16 == 0, "block_n must be a multiple of 16 (the k step of P V)");
  static_assert(kStages == 1 || kStages == 2, "stages must be 1 or 2");
  static_assert(kMinBlocks >= 1 && kMinBlocks <= 4, "min_blocks must be in [1, 4]");
  static_assert(kLazyRescale == 0 || kLazyRescale == 1, "lazyrescale must be 0 or 1");
  static_assert(kAhead == 0 || kAhead == 1, "ahead must be 0 or 1");
  static_assert(kMmaSum == 0 || kMmaSum == 1, "mmasum must be 0 or 1");
  static_assert(kAhead == 0 || kStages == 2, "ahead needs stages 2 (K and V are loaded one tile apart into two buffers)");
  static_assert((kHeadDim * 2) % kQkvAlign == 0, "qkv_align must divide a row of head_dim elements");
  static_assert(kRank == 0 || (kRank * 2) % kBiasAlign == 0, "bias_align must divide a row of rank elements");

  static constexpr int kThreads = kWarps * 32;
  // The trims of the per-CTA work (sm80 forward step 14 of docs/PERF_NOTES.md): the block decode
  // by FastDivisor, the Q rewrite in 16-byte vectors over the head_dim columns, and the walked
  // (TileWalk) loads of the whole key tiles. They matter where rows are short and a CTA runs
  // few key tiles. The look-ahead tiles (kAhead) with 64- and 128-key tiles sit at the
  // 255-register cap: there these changes move ptxas's allocation into spills (d32 ranks 2 and 8,
  // causal), so they keep the plain forms. On 32-key tiles the look-ahead loop's score buffers are
  // half as large (d32: 155-168 registers at three CTAs per SM, 178-192 at two, no spills with
  // mmasum, docs/PERF_NOTES.md sm80 forward step 18), and it takes the lean forms, walks included.
  static constexpr bool kLeanPrologue = kAhead == 0 || kBlockN <= 32;
  // Walked key-tile loads: the two-buffer loops only. The one-buffer loop keeps the checked loads:
  // walked there, seed_n16k's 128x128 d32 tile ran 6% slower (1.257 against 1.180-1.188 ms, H100,
  // sm80 forward step 14), and at d128 the walk's pointers beside V's base pointer (live for its
  // first, partial tile inside the loop) spill at 255 registers.
  static constexpr bool kWalk = kLeanPrologue && kStages == 2;
  static constexpr int kMinBlocksPerSm = kMinBlocks;
  static constexpr bool kHasBias = kRank > 0;
  static constexpr int kRankPad = round_up(kRank, 8);
  // 16 bytes of padding per shared row: the 8 row addresses of one ldmatrix then fall in
  // different bank groups for every head dim that is a multiple of 64 (2-way at worst otherwise).
  static constexpr int kRowPad = 8;
  static constexpr int kDStride = kHeadDim + kRowPad;
  static constexpr int kRStride = kRankPad + kRowPad;
  static constexpr int kWarpRows = kBlockM / kWarps;
  static constexpr int kMTiles = kWarpRows / 16;
  static constexpr int kNTiles = kBlockN / 8;
  static constexpr int kDTiles = kHeadDim / 8;

  // Shared memory, in elements: Q | Qb | stages x (K | Kb | V).
  static constexpr int kQElems = kBlockM * kDStride;
  static constexpr int kQbElems = kHasBias ? kBlockM * kRStride : 0;
  static constexpr int kKElems = kBlockN * kDStride;
  static constexpr int kKbElems = kHasBias ? kBlockN * kRStride : 0;
  static constexpr int kVElems = kBlockN * kDStride;
  static constexpr int kStageElems = kKElems + kKbElems + kVElems;
  static constexpr int kSmemBytes = 2 * (kQElems + kQbElems + kStages * kStageElems);

  using QLoader = TileLoader<Element, kBlockM, kHeadDim, kHeadDim, kDStride, kQkvAlign, kThreads>;
  using KVLoader = TileLoader<Element, kBlockN, kHeadDim, kHeadDim, kDStride, kQkvAlign, kThreads>;
  using QbLoader = TileLoader<Element, kBlockM, kRank, kRankPad, kRStride, kBiasAlign, kThreads>;
  using KbLoader = TileLoader<Element, kBlockN, kRank, kRankPad, kRStride, kBiasAlign, kThreads>;
  using KVWalk = TileWalk<Element, kBlockN, kHeadDim, kHeadDim, kDStride, kQkvAlign, kThreads>;
  // (Without a bias the Kb walk is declared but never used: placeholder widths keep it valid.)
  using KbWalk = TileWalk<Element, kBlockN, kHasBias ? kRank : 8, kHasBias ? kRankPad : 8, kRStride, kBiasAlign, kThreads>;
  using Softmax = OnlineSoftmax<kMTiles, kNTiles, kDTiles, false, kLazyRescale == 1, kMmaSum == 1>;

  /// S = scale * Q K^T + Qb Kb^T for one key tile; with `fold` the scale is already in Q
  /// (folds_scale_into_q) and the two products accumulate as one chain, with no multiply per score
  /// between them (`fold` is uniform over the CTA, so the branch costs one jump per tile).
  /// `fold` is a bool, or a BoolConstant where the caller decided it outside the tile loop
  /// (kAhead): then the tile's code has no branch between the two products.
  template <class Fold>
  static __device__ __forceinline__ void scores(float (&s)[kMTiles][kNTiles][4], u32 sQ, u32 sQb, u32 sK,
                                                u32 sKb, float scale, Fold fold, int lane, int warp_row0) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.f;
    gemm_nt<Element, kMTiles, kNTiles, kHeadDim, kDStride>(s, sQ + warp_row0 * kDStride * 2, sK, lane);
    if constexpr (kHasBias) {
      // Scale first, then accumulate the bias on top: the bias enters unscaled and exactly.
      if (!truth(fold)) {
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[mt][nt][e] *= scale;
      }
      gemm_nt<Element, kMTiles, kNTiles, kRankPad, kRStride>(s, sQb + warp_row0 * kRStride * 2, sKb, lane);
    }
  }

  static __device__ __forceinline__ void apply_mask(float (&s)[kMTiles][kNTiles][4], const Mask<kCausal>& mask,
                                                    int row0, int n0, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = row0 + mt * 16 + g + (e >= 2 ? 8 : 0);
          const int col = n0 + nt * 8 + 2 * t + (e & 1);
          if (mask.masked(row, col)) s[mt][nt][e] = neg_inf();
        }
  }

  // P (fp32, C layout) -> 16-bit A fragments of P V (pack_a), right after the softmax: that frees
  // half of the score registers before the P V product (the register peak of wide heads). O += P V
  // is gemm_rs with V read transposed (sm80/warp_gemm.cuh).

  static __device__ void run(const FwdParams& p) {
    extern __shared__ Vec16 smem_raw[];  // Vec16 element type: 16-byte alignment for cp.async
    Element* const smem = reinterpret_cast<Element*>(smem_raw);
    Element* const sQ = smem;
    Element* const sQb = sQ + kQElems;
    Element* const sStage0 = sQb + kQbElems;

    const int tid = int(thread_idx());
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int warp_row0 = warp * kWarpRows;

    // Tile scheduler: m-blocks of one (batch, head) are adjacent so they share K/V in L2; causal
    // grids start each head with its heaviest (last) m-block to shorten the tail.
    const int bid = int(block_idx());
    int bh, b, m_block;
    if constexpr (kLeanPrologue) {
      bh = int(fast_divide(u32(bid), p.m_blocks_div));  // bid / num_m_blocks, from host constants
      m_block = bid - bh * p.num_m_blocks;
      b = int(fast_divide(u32(bh), p.heads_div));
    } else {
      m_block = bid % p.num_m_blocks;
      bh = bid / p.num_m_blocks;
      b = bh / p.heads;
    }
    if (kCausal) m_block = p.num_m_blocks - 1 - m_block;
    const int h = bh - b * p.heads;
    const int m0 = m_block * kBlockM;

    const Element* gQ = static_cast<const Element*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + m0 * p.q_row_stride;
    const Element* gK = static_cast<const Element*>(p.k) + b * p.k_batch_stride + h * p.k_head_stride;
    const Element* gV = static_cast<const Element*>(p.v) + b * p.v_batch_stride + h * p.v_head_stride;
    const Element* gQb = nullptr;
    const Element* gKb = nullptr;
    if constexpr (kHasBias) {
      gQb = static_cast<const Element*>(p.qb) + b * p.qb_batch_stride + h * p.qb_head_stride + m0 * p.qb_row_stride;
      gKb = static_cast<const Element*>(p.kb) + b * p.kb_batch_stride + h * p.kb_head_stride;
    }

    const Mask<kCausal> mask{p.seqlen_k, p.seqlen_k - p.seqlen_q};
    const int key_end = mask.key_end(m0, kBlockM);
    const int n_blocks = key_end > 0 ? ceil_div(key_end, kBlockN) : 0;
    const int rows_q = p.seqlen_q - m0;  // valid rows of this tile (>= 1)
    // With a bias the scale is already applied inside scores(), or folded into Q (below); without,
    // it is folded into exp2 (a scale <= 0 through the Q transform below, nobias_scale_log2).
    const float scale_log2 = kHasBias ? kLog2e : nobias_scale_log2(p.scale);
    const bool fold = folds_scale_into_q(ElementTraits<Element>::kIsF16, kRank, p.scale);

    float acc_o[kMTiles][kDTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.f;
    Softmax softmax;
    softmax.init();
    float s[kMTiles][kNTiles][4];
    u32 pa[kMTiles][kBlockN / 16][4];

    auto stage_k = [&](int buf) { return sStage0 + buf * kStageElems; };
    auto stage_kb = [&](int buf) { return sStage0 + buf * kStageElems + kKElems; };
    auto stage_v = [&](int buf) { return sStage0 + buf * kStageElems + kKElems + kKbElems; };
    // The same buffers as 32-bit shared-window addresses, for ldmatrix.
    const u32 aQ = smem_addr(sQ);
    const u32 aQb = aQ + kQElems * 2;
    const u32 aStage0 = aQb + kQbElems * 2;
    auto addr_k = [&](int buf) { return aStage0 + buf * kStageElems * 2; };
    auto addr_kb = [&](int buf) { return aStage0 + (buf * kStageElems + kKElems) * 2; };
    auto addr_v = [&](int buf) { return aStage0 + (buf * kStageElems + kKElems + kKbElems) * 2; };
    // Bounds-checked loads of key tile nb (any tile; rows past the sequence become zeros).
    auto load_k_checked = [&](int nb, int buf) {
      KVLoader::load(stage_k(buf), addr_k(buf), gK, p.k_row_stride, nb * kBlockN, p.seqlen_k, tid);
      if constexpr (kHasBias)
        KbLoader::load(stage_kb(buf), addr_kb(buf), gKb, p.kb_row_stride, nb * kBlockN, p.seqlen_k, tid);
    };
    auto load_v_checked = [&](int nb, int buf) {
      KVLoader::load(stage_v(buf), addr_v(buf), gV, p.v_row_stride, nb * kBlockN, p.seqlen_k, tid);
    };
    // Key tiles are loaded last to first, and only the first one (n_blocks - 1) may end past the
    // sequence. With kWalk it takes the checked loads and every tile after it, whole, is walked
    // (TileWalk: a running pointer per thread, stepped back one tile per load).
    KVWalk walk_k, walk_v;
    KbWalk walk_kb;
    if constexpr (kWalk) {
      const int row0 = (n_blocks >= 2 ? n_blocks - 2 : 0) * kBlockN;
      walk_k.start(gK, p.k_row_stride, row0, tid);
      walk_v.start(gV, p.v_row_stride, row0, tid);
      if constexpr (kHasBias) walk_kb.start(gKb, p.kb_row_stride, row0, tid);
    }
    // The next whole tile, n_blocks - 2 first, then one tile further down per call.
    auto load_k_next = [&](int buf) {
      walk_k.load_and_step_back(stage_k(buf), addr_k(buf), p.k_row_stride, tid);
      if constexpr (kHasBias) walk_kb.load_and_step_back(stage_kb(buf), addr_kb(buf), p.kb_row_stride, tid);
    };
    auto load_v_next = [&](int buf) { walk_v.load_and_step_back(stage_v(buf), addr_v(buf), p.v_row_stride, tid); };
    // O += P V for the packed probabilities `pa` (and with kMmaSum the row sums beside it).
    auto pv = [&](u32 v_addr) {
      gemm_rs<Element, kMTiles, kBlockN / 16, kDTiles, kDStride, kMmaSum == 1>(acc_o, pa, v_addr, lane,
                                                                               softmax.sum_acc);
    };
    // Scores, mask (only on tiles that need it) and the softmax update for key tile nb.
    auto tile_step = [&](int nb, int buf) {
      const int n0 = nb * kBlockN;
      scores(s, aQ, aQb, addr_k(buf), addr_kb(buf), p.scale, fold, lane, warp_row0);
      if (mask.tile_needs_mask(m0, n0, kBlockN)) apply_mask(s, mask, m0 + warp_row0, n0, lane);
      softmax.update(s, acc_o, scale_log2);
      pack_a<Element, kMTiles, kNTiles>(pa, s);
    };

    QLoader::load(sQ, aQ, gQ, p.q_row_stride, 0, rows_q, tid);
    if constexpr (kHasBias) QbLoader::load(sQb, aQb, gQb, p.qb_row_stride, 0, rows_q, tid);
    // Q rewritten once, before the pipeline starts (Q lands in a group of its own, complete
    // before the tile groups are counted): without a bias and a scale <= 0, its signs flipped (or
    // Q zeroed); when the scale folds (folds_scale_into_q), Q scaled, so that the scores are
    // S = (scale Q) K^T + Qb Kb^T, as in the sm90 forward.
    auto transform_q = [&](auto&& f) {
      cp_async_commit();
      cp_async_wait<0>();
      block_sync();
      if constexpr (!kLeanPrologue) {
        u32* const words = reinterpret_cast<u32*>(sQ);
        for (int i = tid; i < kQElems / 2; i += kThreads) words[i] = f(words[i]);
      } else {
        // 16 bytes at a time, over the head_dim columns only (not the row padding): a fixed trip
        // count of 128-bit shared loads and stores around the per-word conversion. Unsigned
        // indices: the row and column of vector i = it * kThreads + tid then reduce to a
        // per-thread base and constant offsets when kThreads is a multiple of the row's vectors.
        constexpr u32 kVecsPerRow = kHeadDim / 8;
        constexpr u32 kVecs = kBlockM * kVecsPerRow;
#pragma unroll
        for (u32 it = 0; it < ceil_div(kVecs, u32(kThreads)); ++it) {
          const u32 i = it * kThreads + u32(tid);
          if (kVecs % kThreads != 0 && i >= kVecs) break;
          Vec16* const v = reinterpret_cast<Vec16*>(sQ + (i / kVecsPerRow) * kDStride + (i % kVecsPerRow) * 8);
          Vec16 w = *v;
          w.x = f(w.x);
          w.y = f(w.y);
          w.z = f(w.z);
          w.w = f(w.w);
          *v = w;
        }
      }
      block_sync();
    };
    if constexpr (kHasBias) {
      if (fold) transform_q([&](u32 w) { return scale_pair<Element>(w, p.scale); });
    } else {
      if (!(p.scale > 0.f)) transform_q([&](u32 w) { return q_for_nonpositive_scale(w, p.scale); });
    }

    // kAhead: iteration `it` (key tile n_blocks - 1 - it) scores the next tile into the other
    // buffer while it finishes its own. K(it) sits in buffer it & 1 and is read one iteration
    // before V(it), which sits in the same buffer: at the top of iteration it, after the barrier,
    // K(it)'s slot (read by iteration it - 1) and V(it - 1)'s slot (read by P V of iteration
    // it - 1) are free, and they take K(it + 2) and V(it + 1), one group per iteration. Between
    // the mask and the end of P V the body has no branch (the fold is a compile-time constant), so
    // the next tile's products and this tile's softmax share one block of code.
    auto ahead_loop = [&](auto fold_t) {
      float s2[kMTiles][kNTiles][4];
      auto tile_of = [&](int it) { return n_blocks - 1 - it; };
      auto score = [&](float (&dst)[kMTiles][kNTiles][4], int it) {
        scores(dst, aQ, aQb, addr_k(it & 1), addr_kb(it & 1), p.scale, fold_t, lane, warp_row0);
      };
      // Top of iteration it: V(it) and K(it + 1) landed, the next two loads issued, the mask applied.
      auto head = [&](float (&cur)[kMTiles][kNTiles][4], int it) {
        cp_async_wait<0>();
        block_sync();
        if constexpr (kWalk) {  // whole tiles: only iteration 0's (key tile n_blocks - 1) may be partial
          if (it + 2 < n_blocks) load_k_next(it & 1);
          if (it + 1 < n_blocks) load_v_next((it + 1) & 1);
        } else {
          if (it + 2 < n_blocks) load_k_checked(tile_of(it + 2), it & 1);
          if (it + 1 < n_blocks) load_v_checked(tile_of(it + 1), (it + 1) & 1);
        }
        cp_async_commit();
        const int n0 = tile_of(it) * kBlockN;
        if (mask.tile_needs_mask(m0, n0, kBlockN)) apply_mask(cur, mask, m0 + warp_row0, n0, lane);
      };
      auto finish = [&](float (&cur)[kMTiles][kNTiles][4], int it) {
        softmax.update(cur, acc_o, scale_log2);
        pack_a<Element, kMTiles, kNTiles>(pa, cur);
        pv(addr_v(it & 1));
      };
      auto step = [&](float (&cur)[kMTiles][kNTiles][4], float (&nxt)[kMTiles][kNTiles][4], int it) {
        head(cur, it);
        score(nxt, it + 1);
        finish(cur, it);
      };
      auto last = [&](float (&cur)[kMTiles][kNTiles][4], int it) {
        head(cur, it);
        finish(cur, it);
      };
      // Group 0: Q (and Qb) with K(0); group 1: V(0) and K(1).
      if (n_blocks > 0) load_k_checked(n_blocks - 1, 0);
      cp_async_commit();
      if (n_blocks > 0) load_v_checked(n_blocks - 1, 0);
      if (n_blocks > 1) {
        if constexpr (kWalk) load_k_next(1);
        else load_k_checked(tile_of(1), 1);
      }
      cp_async_commit();
      cp_async_wait<1>();
      block_sync();
      if (n_blocks > 0) score(s, 0);
      // The buffers alternate, so the loop takes iterations in pairs; the last one scores nothing.
      int it = 0;
      for (; it + 2 < n_blocks; it += 2) {
        step(s, s2, it);
        step(s2, s, it + 1);
      }
      if (it + 1 < n_blocks) {
        step(s, s2, it);
        last(s2, it + 1);
      } else if (it < n_blocks) {
        last(s, it);
      }
    };
    if constexpr (kAhead == 1) {
      if (fold) ahead_loop(BoolConstant<true>{});
      else ahead_loop(BoolConstant<false>{});
    } else if constexpr (kStages == 1) {
      if (n_blocks > 0) load_k_checked(n_blocks - 1, 0);
      cp_async_commit();
      for (int nb = n_blocks - 1; nb >= 0; --nb) {
        cp_async_wait<0>();
        block_sync();  // K[nb] landed; every warp finished P V of the previous tile (V is free)
        load_v_checked(nb, 0);
        cp_async_commit();
        tile_step(nb, 0);
        cp_async_wait<0>();
        block_sync();  // V[nb] landed; every warp finished reading K[nb]
        if (nb > 0) {
          load_k_checked(nb - 1, 0);
          cp_async_commit();
        }
        pv(addr_v(0));
      }
    } else {
      static_assert(kWalk, "the two-buffer loop loads its whole key tiles through the walks started above");
      // Two buffers; group i carries tile i (tile 0 also carries Q). Empty groups keep the
      // "all but the newest group" wait exact at the tail.
      if (n_blocks > 0) {
        load_k_checked(n_blocks - 1, 0);
        load_v_checked(n_blocks - 1, 0);
      }
      cp_async_commit();
      if (n_blocks > 1) {
        load_k_next(1);
        load_v_next(1);
      }
      cp_async_commit();
      for (int it = 0; it < n_blocks; ++it) {
        const int nb = n_blocks - 1 - it;
        const int buf = it & 1;
        cp_async_wait<1>();
        block_sync();  // tile `it` landed
        tile_step(nb, buf);
        pv(addr_v(buf));
        block_sync();  // every warp is done with buffer `buf`
        if (it + 2 < n_blocks) {
          load_k_next(buf);
          load_v_next(buf);
        }
        cp_async_commit();
      }
    }
    // The epilogue stages O in the Q tile. Each thread's wait covers only its own copies, and the
    // Q rows a warp overwrites were copied by other warps' threads: without this barrier a CTA
    // that skipped the main loop (every row fully masked) races its own Q load.
    cp_async_wait<0>();
    block_sync();

    epilogue(p, acc_o, softmax, sQ, b, h, m0, rows_q, lane, warp_row0, scale_log2);
  }

  /// Normalise O, stage it through this warp's own rows of the Q tile (no other warp reads
  /// them), then write whole rows with the widest access the output allows. LSE goes straight out.
  static __device__ __forceinline__ void epilogue(const FwdParams& p, float (&acc_o)[kMTiles][kDTiles][4],
                                                  Softmax& softmax, Element* sQ, int b, int h, int m0, int rows_q,
                                                  int lane, int warp_row0, float scale_log2) {
    const int g = lane >> 2, t = lane & 3;
    softmax.finalize();
    warp_sync();
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const float inv = softmax.inv_sum(mt, hh);
        const int r = warp_row0 + mt * 16 + g + 8 * hh;
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
          const u32 packed = ElementTraits<Element>::pack(acc_o[mt][dt][2 * hh] * inv, acc_o[mt][dt][2 * hh + 1] * inv);
          *reinterpret_cast<u32*>(sQ + r * kDStride + dt * 8 + 2 * t) = packed;
        }
        if (t == 0 && p.lse != nullptr && r < rows_q)
          p.lse[((long long)b * p.heads + h) * p.seqlen_q + m0 + r] = softmax.lse(mt, hh, scale_log2);
      }
    warp_sync();
    constexpr int kElemsPerChunk = kQkvAlign / 2;
    constexpr int kChunksPerRow = kHeadDim / kElemsPerChunk;
    Element* gO = static_cast<Element*>(p.o) + b * p.o_batch_stride + h * p.o_head_stride + m0 * p.o_row_stride;
#pragma unroll 4
    for (int i = lane; i < kWarpRows * kChunksPerRow; i += 32) {
      const int r = warp_row0 + i / kChunksPerRow;
      const int c = (i % kChunksPerRow) * kElemsPerChunk;
      if (r < rows_q) copy_chunk<kQkvAlign>(gO + r * p.o_row_stride + c, sQ + r * kDStride + c);
    }
  }
};

}  // namespace sm80
}  // namespace flashbias
