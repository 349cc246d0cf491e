// Storage types and numeric conversions for the kernel templates. Self-contained: NVRTC needs no
// CUDA headers for these (conversions are inline PTX), and neither does the manifest tool.
#pragma once

namespace flashbias {

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

/// 16-bit element storage; the arithmetic happens on the tensor cores and in fp32.
struct half_t { u16 bits; };
struct bf16_t { u16 bits; };

/// log2(e): the online softmax runs in base 2 so that each exponential is one ex2.approx.
constexpr float kLog2e = 1.4426950408889634f;
/// ln(2): converts the base-2 log-sum-exp back to the natural log the API promises.
constexpr float kLn2 = 0.6931471805599453f;

template <class Element> struct ElementTraits;

template <> struct ElementTraits<half_t> {
  static constexpr bool kIsF16 = true;
  static constexpr u32 kOnePair = 0x3c003c00u;  // {1.0, 1.0}
  /// Two fp32 values -> one register holding {lo, hi} as f16 (round to nearest even).
  static __device__ __forceinline__ u32 pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  static __device__ __forceinline__ float to_float(u16 bits) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(bits));
    return r;
  }
};

template <> struct ElementTraits<bf16_t> {
  static constexpr bool kIsF16 = false;
  static constexpr u32 kOnePair = 0x3f803f80u;  // {1.0, 1.0}
  static __device__ __forceinline__ u32 pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
  }
  static __device__ __forceinline__ float to_float(u16 bits) {
    float r;
    asm("mov.b32 %0, %1;" : "=f"(r) : "r"(u32(bits) << 16));
    return r;
  }
};

/// Two 16-bit elements (one 32-bit word) times `scale`, in fp32 with one rounding back: the one
/// definition of the scaled Q (folds_scale_into_q, common/params.h) in both forward families and
/// in the sm90 backward's prep.
template <class Element>
__device__ __forceinline__ u32 scale_pair(u32 w, float scale) {
  using T = ElementTraits<Element>;
  return T::pack(T::to_float(u16(w & 0xffffu)) * scale, T::to_float(u16(w >> 16)) * scale);
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

/// A compile-time bool as a type, to pass a code path's choice into a generic lambda.
template <bool kValue>
struct BoolConstant {
  static constexpr bool value = kValue;
};
/// A bool decided at run time or (BoolConstant) at compile time, as a bool: with a BoolConstant
/// the test folds away after inlining, so code written once serves both.
__device__ __forceinline__ bool truth(bool b) { return b; }
template <bool kValue>
__device__ __forceinline__ constexpr bool truth(BoolConstant<kValue>) { return kValue; }

__device__ __forceinline__ float pos_inf() {
  float y;
  asm("mov.b32 %0, 0x7f800000;" : "=f"(y));
  return y;
}

__device__ __forceinline__ float neg_inf() {
  float y;
  asm("mov.b32 %0, 0xff800000;" : "=f"(y));
  return y;
}

/// The larger of two floats in one FMNMX (max.f32: a NaN operand yields the other). Written as
/// `a > b ? a : b` it compiles to FSETP + FSEL, two instructions per score in the softmax's row
/// max (sm80::OnlineSoftmax keeps that form as an option: sm90::FwdKnobs::kMaxSelect).
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
template <class T> __host__ __device__ constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }
template <class T> __host__ __device__ constexpr T round_up(T a, T b) { return ceil_div(a, b) * b; }
/// A compile-time int as a value, for generic lambdas whose array extents depend on it.
template <int N> struct IntConstant { static constexpr int value = N; };

}  // namespace flashbias
