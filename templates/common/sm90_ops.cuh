// Thin wrappers over the sm_90 / sm_90a instructions of the Hopper kernels: mbarriers, the tensor
// memory accelerator (cp.async.bulk.tensor), wgmma fences and groups, shared-memory matrix
// descriptors, register reallocation and named barriers. Inline PTX only (no CUDA headers), like
// common/sm80_ops.cuh.
#pragma once

#include "common/sm80_ops.cuh"
#include "common/types.cuh"

namespace flashbias {
namespace sm90 {

// ---- mbarrier: arrival counts plus transaction bytes (TMA completes bytes on it) -------------
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
/// Make the barrier initialisations visible to the async proxy (TMA) and the other threads.
__device__ __forceinline__ void mbar_fence_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("{ .reg .b64 st; mbarrier.arrive.shared::cta.b64 st, [%0]; }" ::"r"(bar) : "memory");
}
/// One arrival that also announces `bytes` more transaction bytes (the TMA loads of a stage).
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {
  u32 done;
  asm volatile(
      "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
/// Wait until the phase with parity `parity` has completed (acquire: the data it guards is visible).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// ---- TMA: one tile of a 4-D tensor (innermost first: column, row, head, batch) ----------------
/// `desc` is the generic address of a CUtensorMap kernel parameter (__grid_constant__).
__device__ __forceinline__ void tma_load_4d(u32 dst, const void* desc, u32 bar, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];" ::"r"(dst),
      "l"(desc), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_prefetch_desc(const void* desc) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(desc) : "memory");
}

/// Order this thread's ordinary shared-memory stores before later async-proxy reads (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// ---- wgmma bookkeeping ---------------------------------------------------------------------
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}
/// Pin accumulator registers in place across the asynchronous wgmma window: the compiler may
/// not move reads or writes of `r` across this point.
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void reg_fence(u32& r) { asm volatile("" : "+r"(r)::"memory"); }

// ---- shared-memory matrix descriptors --------------------------------------------------------
/// Swizzle mode of a tile whose rows are `row_bytes` wide (32, 64 or 128): the descriptor's code
/// (1 = 128 B, 2 = 64 B, 3 = 32 B).
__host__ __device__ constexpr u64 swizzle_code(int row_bytes) { return row_bytes == 128 ? 1 : row_bytes == 64 ? 2 : 3; }

// The descriptors themselves: sm90/gemm.cuh, desc_at.

/// The byte offset inside a swizzled tile of rows `row_bytes` wide (the layout TMA writes with
/// the matching CU_TENSOR_MAP_SWIZZLE_*): 16-byte chunk bits [4, 4 + b) XOR address bits
/// [7, 7 + b), b = log2(row_bytes / 16). `off` is the unswizzled offset from the 1024-byte
/// aligned tile start.
template <int kRowBytes>
__device__ __forceinline__ u32 swizzle(u32 off) {
  constexpr u32 mask = kRowBytes / 16 - 1;
  return off ^ (((off >> 7) & mask) << 4);
}

// ---- warp specialisation ---------------------------------------------------------------------
template <int kRegs>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
/// Barrier over `threads` threads (a multiple of 32) under id `id` (1..15; 0 is __syncthreads).
__device__ __forceinline__ void named_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}
/// Arrive on named barrier `id` (counted towards its `threads`) without waiting for it.
__device__ __forceinline__ void named_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace sm90
}  // namespace flashbias
