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

// Round |x| (finite, > 0) to the format and return its bits without the sign.
inline std::uint16_t encode_magnitude(double a, const Format16& f) {
  const int emin = 1 - f.exponent_bias;                   // exponent of the smallest normal
  const int emax = (1 << f.exponent_bits) - 2 - f.exponent_bias;
  const std::uint16_t inf_bits = std::uint16_t(((1u << f.exponent_bits) - 1) << f.mantissa_bits);
  int e2 = 0;
  std::frexp(a, &e2);  // a = m * 2^e2, m in [0.5, 1): the leading bit has weight 2^(e2-1)
  const int e = std::max(e2 - 1, emin);  // below emin the spacing stays that of the subnormals
  if (e > emax) return inf_bits;
  // Scale so that one unit in the last place is 1; exact, since it is a power of two.
  const double t = std::ldexp(a, f.mantissa_bits - e);
  double q = std::floor(t);
  const double frac = t - q;  // exact: t has at most 53 significant bits
  if (frac > 0.5 || (frac == 0.5 && std::fmod(q, 2.0) != 0.0)) q += 1.0;
  // q counts ulps of 2^(e - mantissa_bits); q == 2^(mantissa_bits+1) means rounding carried into
  // the next binade, which the encoding below handles because exponent and fraction are adjacent.
  const auto units = static_cast<std::uint32_t>(q);
  std::uint32_t bits;
  if (units < (1u << f.mantissa_bits)) {
    bits = units;  // subnormal (only possible when e == emin), or zero after underflow
  } else {
    bits = (std::uint32_t(e - emin + 1) << f.mantissa_bits) + (units - (1u << f.mantissa_bits));
  }
  return bits >= inf_bits ? inf_bits : std::uint16_t(bits);
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
inline float half_bits_to_float(std::uint16_t b) { return float(decode16(b, kHalf)); }

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
  return t == DType::bf16 ? double(bf16_bits_to_float(bits)) : decode16(bits, kHalf);
}
/// `x` rounded to the dtype and widened back: the value a kernel sees after storing `x`.
inline double round_to(DType t, double x) { return decode(t, encode(t, x)); }

/// Largest finite value of a dtype (65504 for f16, about 3.39e38 for bf16).
inline double max_finite(DType t) { return t == DType::bf16 ? 0x1.fep127 : 65504.0; }

}  // namespace flashbias::numeric
