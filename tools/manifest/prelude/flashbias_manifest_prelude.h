// Prelude for the manifest tool: -include'd before every template it parses.
//
// NVRTC compiles the templates with CUDA's keywords, vector types, built-in variables and device
// intrinsics already declared and no header included. Clang in CUDA mode gets those only from the
// CUDA runtime wrapper, which needs the CUDA SDK headers (and then host headers). The tool runs
// with -nocudainc -nostdinc instead, so that a template that secretly needs a host or SDK header
// fails here too, and this file supplies the NVRTC built-ins: the __device__ family as clang
// attributes, the vector types, and clang's own device-side headers for threadIdx & co., the
// libdevice math functions and the warp intrinsics (the same definitions clang uses for CUDA).
//
// If a template uses an NVRTC built-in that is missing here, the tool fails with "use of
// undeclared identifier"; add a declaration below (device functions need no body for parsing).
#pragma once

// The templates see what they see under NVRTC: code behind #ifdef __CUDACC_RTC__ is what ships.
#ifndef __CUDACC_RTC__
#define __CUDACC_RTC__ 1
#endif
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif

// ---- keywords (clang knows the attributes; only the CUDA wrapper headers define the macros) ----
#ifndef __device__
#define __device__ __attribute__((device))
#endif
#ifndef __global__
#define __global__ __attribute__((global))
#endif
#ifndef __host__
#define __host__ __attribute__((host))
#endif
#ifndef __shared__
#define __shared__ __attribute__((shared))
#endif
#ifndef __constant__
#define __constant__ __attribute__((constant))
#endif
#ifndef __managed__
#define __managed__ __attribute__((managed))
#endif
#ifndef __forceinline__
#define __forceinline__ __inline__ __attribute__((always_inline))
#endif
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#ifndef __restrict__
#define __restrict__ __restrict
#endif
// clang 14 has no grid_constant attribute; it only changes how NVRTC passes a kernel parameter,
// nothing the manifest reads.
#ifndef __grid_constant__
#define __grid_constant__
#endif

// ---- what clang's device headers expect from the CUDA SDK or libc ----
// The version clang 14 supports at most; selects the modern (CUDA >= 9) intrinsic set.
#ifndef CUDA_VERSION
#define CUDA_VERSION 11050
#endif
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef unsigned int cuuint32_t;
#define INT_MAX __INT_MAX__
#define INT_MIN (-__INT_MAX__ - 1)
#define HUGE_VAL __builtin_huge_val()
#define HUGE_VALF __builtin_huge_valf()

// ---- vector types and make_* helpers (NVRTC built-ins; layout and alignment as vector_types.h) ----
#define FLASHBIAS_PRELUDE_VECTOR(T, N)                                                           \
  struct __attribute__((aligned(sizeof(T)))) N##1 { T x; };                                      \
  struct __attribute__((aligned(2 * sizeof(T)))) N##2 { T x, y; };                               \
  struct N##3 { T x, y, z; };                                                                    \
  struct __attribute__((aligned(4 * sizeof(T) > 16 ? 16 : 4 * sizeof(T)))) N##4 { T x, y, z, w; }; \
  static __device__ __forceinline__ N##1 make_##N##1(T x) { N##1 r; r.x = x; return r; }          \
  static __device__ __forceinline__ N##2 make_##N##2(T x, T y) {                                 \
    N##2 r; r.x = x; r.y = y; return r;                                                          \
  }                                                                                              \
  static __device__ __forceinline__ N##3 make_##N##3(T x, T y, T z) {                            \
    N##3 r; r.x = x; r.y = y; r.z = z; return r;                                                 \
  }                                                                                              \
  static __device__ __forceinline__ N##4 make_##N##4(T x, T y, T z, T w) {                       \
    N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r;                                        \
  }
FLASHBIAS_PRELUDE_VECTOR(signed char, char)
FLASHBIAS_PRELUDE_VECTOR(unsigned char, uchar)
FLASHBIAS_PRELUDE_VECTOR(short, short)
FLASHBIAS_PRELUDE_VECTOR(unsigned short, ushort)
FLASHBIAS_PRELUDE_VECTOR(int, int)
FLASHBIAS_PRELUDE_VECTOR(unsigned int, uint)
FLASHBIAS_PRELUDE_VECTOR(long, long)
FLASHBIAS_PRELUDE_VECTOR(unsigned long, ulong)
FLASHBIAS_PRELUDE_VECTOR(long long, longlong)
FLASHBIAS_PRELUDE_VECTOR(unsigned long long, ulonglong)
FLASHBIAS_PRELUDE_VECTOR(float, float)
FLASHBIAS_PRELUDE_VECTOR(double, double)
#undef FLASHBIAS_PRELUDE_VECTOR

struct dim3 {
  unsigned int x, y, z;
  __host__ __device__ constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
};

// ---- built-in variables and device functions: clang's own device-side definitions ----
#include <__clang_cuda_builtin_vars.h>
#include <__clang_cuda_libdevice_declares.h>
#include <__clang_cuda_device_functions.h>
#include <__clang_cuda_math.h>
#include <__clang_cuda_intrinsics.h>

// The generator compiles with NVRTC's --device-as-default-execution-space: a function written
// without __device__ is a device function there. Clang's equivalent is this pragma, left open
// for the rest of the translation unit (the template itself).
#pragma clang force_cuda_host_device begin
