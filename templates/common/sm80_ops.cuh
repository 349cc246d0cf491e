// Thin wrappers over the sm_80 instructions the portable kernels use: tensor-core mma.sync,
// ldmatrix, cp.async, warp shuffles, barriers and special registers. Inline PTX only, so the
// templates need no CUDA headers (NVRTC) and parse as plain CUDA C++ (manifest tool).
#pragma once

#include "common/types.cuh"

namespace flashbias {

__device__ __forceinline__ u32 thread_idx() { u32 r; asm("mov.u32 %0, %%tid.x;" : "=r"(r)); return r; }
__device__ __forceinline__ u32 block_idx() { u32 r; asm("mov.u32 %0, %%ctaid.x;" : "=r"(r)); return r; }

__device__ __forceinline__ void block_sync() { asm volatile("bar.sync 0;" ::: "memory"); }
__device__ __forceinline__ void warp_sync() { asm volatile("bar.warp.sync 0xffffffff;" ::: "memory"); }

__device__ __forceinline__ float shfl_xor(float v, int lane_mask) {
  float r;
  asm("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(lane_mask));
  return r;
}
/// True in every lane when `p` is true in any lane of the (converged) warp.
__device__ __forceinline__ bool warp_any(bool p) {
  u32 r;
  asm volatile("{ .reg .pred q, a; setp.ne.u32 q, %1, 0; vote.sync.any.pred a, q, 0xffffffff; selp.u32 %0, 1, 0, a; }"
               : "=r"(r) : "r"(u32(p)));
  return r != 0;
}
/// The sum of `v` over the 4 lanes of a quad (the lanes that share a row of an mma.sync / wgmma
/// accumulator tile), in every lane of it.
__device__ __forceinline__ float quad_sum(float v) {
  v += shfl_xor(v, 1);
  return v + shfl_xor(v, 2);
}

/// Generic -> shared-window address, as ldmatrix and cp.async want it.
__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}

// ---- ldmatrix: 8x8 b16 matrices from shared memory, one row address per lane ----------------
__device__ __forceinline__ void ldmatrix_x4(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(u32 (&r)[2], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 (&r)[4], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(u32 (&r)[2], u32 addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
               : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

// ---- mma.sync: D = A * B + D with fp32 accumulators ------------------------------------------
// Not volatile: a pure function of its register operands, so the compiler may schedule it
// around independent work (the score/softmax overlap relies on that).
template <class Element> struct Mma;

template <> struct Mma<half_t> {
  static __device__ __forceinline__ void k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ void k8(float (&d)[4], const u32 (&a)[2], u32 b0) {
    asm(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
  }
};

template <> struct Mma<bf16_t> {
  static __device__ __forceinline__ void k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ void k8(float (&d)[4], const u32 (&a)[2], u32 b0) {
    asm(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
  }
};

// ---- cp.async: global -> shared without staging through registers -----------------------------
/// Copies kBytes (4, 8 or 16); when `valid` is false the destination is zero-filled instead
/// (src-size 0), which is how tiles past the end of a sequence become zeros.
template <int kBytes>
__device__ __forceinline__ void cp_async(u32 dst, const void* src, bool valid) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async moves 4, 8 or 16 bytes");
  const int src_bytes = valid ? kBytes : 0;
  if (kBytes == 16) {
    // .cg bypasses L1: K/V tiles are read once per CTA, so caching them in L1 only evicts.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;"
                 :: "r"(dst), "l"(src), "n"(kBytes), "r"(src_bytes) : "memory");
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(kPending) : "memory"); }

}  // namespace flashbias
