// Conversions between fp64/fp32 and the 16-bit storage formats (IEEE binary16 "f16" and bfloat16),
// bit-exact with what a GPU stores: round to nearest, ties to even; overflow to +-inf; subnormals
// kept (f16 has them, bf16 inherits fp32's); NaN stays NaN (made quiet, sign kept).
//
// Rounding goes straight from double, never double -> float -> 16 bit: rounding twice can land
// on the wrong neighbour (a double just above a 16-bit tie becomes an fp32 exactly on the tie).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "flashbias/flashbias.hpp"

namespace flashbias::numeric {

/// The parameters of a binary floating-point storage format with an implicit leading bit.
struct Format16 {
  int mantissa_bits;  ///< stored fraction bits (10 for f16, 7 for bf16)
  int exponent_bias;  ///< 15 for f16, 127 for bf16
  int exponent_bits;  ///< 5 for f16, 8 for bf16
};
inline constexpr Format16 kHalf{10, 15, 5};
inline constexpr Format16 kBf16{7, 127, 8};

namespace detail {

// Round |x| (finite, > 0) to the format and return its bits without the sign. Integer arithmetic
// on the fp64 encoding: exact, and fast enough to convert tens of millions of random inputs.
inline std::uint16_t encode_magnitude(double a, const Format16& f) {
  const int emin = 1 - f.exponent_bias;  // exponent of the smallest normal
  const std::uint32_t inf_bits = ((1u << f.exponent_bits) - 1) << f.mantissa_bits;
  std::uint64_t u;
  std::memcpy(&u, &a, sizeof u);
  const int biased = int(u >> 52);
  // fp64 subnormals (< 2^-1022) are far below half the smallest subnormal of either format.
  if (biased == 0) return 0;
  const int e = biased - 1023;                                 // a = m * 2^(e - 52), m in [2^52, 2^53)
  const std::uint64_t m = (u & ((std::uint64_t(1) << 52) - 1)) | (std::uint64_t(1) << 52);
  // Below emin the spacing stays that of the subnormals, so drop more bits there.
  const int target = std::max(e, emin);
  const int shift = 52 - f.mantissa_bits + (target - e);     // low bits of m below one ulp
  if (shift > 53) return 0;                                    // under half the smallest subnormal
  std::uint64_t q = m >> shift;
  const std::uint64_t rem = m & ((std::uint64_t(1) << shift) - 1);
  const std::uint64_t half = std::uint64_t(1) << (shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  // q counts ulps of 2^(target - mantissa_bits). q < 2^mantissa_bits only for a subnormal
  // result (exponent field 0); q == 2^(mantissa_bits+1) means rounding carried into the next
  // binade, which the sum below handles because exponent and fraction fields are adjacent.
  std::uint64_t bits;
  if (q < (std::uint64_t(1) << f.mantissa_bits)) {
    bits = q;
  } else {
    bits = (std::uint64_t(target - emin + 1) << f.mantissa_bits) + (q - (std::uint64_t(1) << f.mantissa_bits));
  }
  return bits >= inf_bits ? std::uint16_t(inf_bits) : std::uint16_t(bits);
}

inline double decode_magnitude(std::uint16_t bits, const Format16& f) {
  const std::uint32_t exp_field = (bits >> f.mantissa_bits) & ((1u << f.exponent_bits) - 1);
  const std::uint32_t frac = bits & ((1u << f.mantissa_bits) - 1);
  if (exp_field == (1u << f.exponent_bits) - 1)
    return frac ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  if (exp_field == 0) return std::ldexp(double(frac), 1 - f.exponent_bias - f.mantissa_bits);
  return std::ldexp(double(frac | (1u << f.mantissa_bits)), int(exp_field) - f.exponent_bias - f.mantissa_bits);
}

}  // namespace detail

/// Round `x` to the 16-bit format `f` (nearest, ties to even) and return its bit pattern.
inline std::uint16_t encode16(double x, const Format16& f) {
  const std::uint16_t sign = std::signbit(x) ? std::uint16_t(1u << 15) : std::uint16_t(0);
  if (std::isnan(x)) {
    // Quiet NaN: all exponent bits and the top fraction bit.
    return std::uint16_t(sign | (((1u << f.exponent_bits) - 1) << f.mantissa_bits) | (1u << (f.mantissa_bits - 1)));
  }
  if (std::isinf(x)) return std::uint16_t(sign | (((1u << f.exponent_bits) - 1) << f.mantissa_bits));
  if (x == 0.0) return sign;
  return std::uint16_t(sign | detail::encode_magnitude(std::fabs(x), f));
}

/// The exact value of the 16-bit pattern `bits` in format `f` (every such value is an fp32 and an fp64).
inline double decode16(std::uint16_t bits, const Format16& f) {
  const double m = detail::decode_magnitude(std::uint16_t(bits & 0x7fffu), f);
  return (bits & 0x8000u) ? -m : m;
}

inline const Format16& format_of(DType t) { return t == DType::bf16 ? kBf16 : kHalf; }

/// f16 <-> fp64/fp32, round to nearest even.
inline std::uint16_t to_half_bits(double x) { return encode16(x, kHalf); }
inline float half_bits_to_float(std::uint16_t b) {
  // Rebias the exponent into fp32's field; subnormals are exact as integer * 2^-24.
  const std::uint32_t sign = std::uint32_t(b & 0x8000u) << 16;
  const std::uint32_t exp = (b >> 10) & 0x1fu, frac = b & 0x3ffu;
  std::uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (frac << 13);  // inf, or NaN with its payload
  } else if (exp == 0) {
    const float v = float(frac) * 0x1p-24f;
    return sign ? -v : v;
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (frac << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// bf16 <-> fp64/fp32, round to nearest even.
inline std::uint16_t to_bf16_bits(double x) { return encode16(x, kBf16); }
inline float bf16_bits_to_float(std::uint16_t b) {
  // A bf16 is the top half of an fp32: widening is a shift (this also keeps NaN payloads).
  const std::uint32_t u = std::uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// Encode / decode by DType.
inline std::uint16_t encode(DType t, double x) { return encode16(x, format_of(t)); }
inline double decode(DType t, std::uint16_t bits) {
  return t == DType::bf16 ? double(bf16_bits_to_float(bits)) : double(half_bits_to_float(bits));
}
/// `x` rounded to the dtype and widened back: the value a kernel sees after storing `x`.
inline double round_to(DType t, double x) { return decode(t, encode(t, x)); }

/// Largest finite value of a dtype (65504 for f16, about 3.39e38 for bf16).
inline double max_finite(DType t) { return t == DType::bf16 ? 0x1.fep127 : 65504.0; }

}  // namespace flashbias::numeric
