// 16-bit conversions: exhaustive round trips, hand-picked rounding cases (ties, overflow,
// subnormals, NaN), and the defining property of round-to-nearest-even on random inputs.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "tuner/numeric.h"

using namespace flashbias;
using namespace flashbias::numeric;

namespace {

std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The well-known integer formulation of fp32 -> bf16 round-to-nearest-even, an independent
// implementation to check encode16 against (valid for non-NaN inputs).
std::uint16_t bf16_by_bit_trick(float f) {
  const std::uint32_t u = float_bits(f);
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Round-to-nearest-even, checked from its definition: no representable neighbour is closer, and a
// tie picks the even pattern. Works for any value whose result is finite.
void require_nearest_even(double x, DType t) {
  const std::uint16_t h = encode(t, x);
  const double v = decode(t, h);
  REQUIRE(std::isfinite(v));
  const double err = std::fabs(x - v);
  for (const int step : {-1, 1}) {
    // Neighbour pattern on the same side of zero (stepping the magnitude bits).
    const int mag = int(h & 0x7fff) + step;
    if (mag < 0) continue;
    const std::uint16_t nb = std::uint16_t((h & 0x8000) | mag);
    const double w = decode(t, nb);
    if (!std::isfinite(w)) continue;
    const double nerr = std::fabs(x - w);
    INFO("x=" << x << " got bits " << h << " neighbour " << nb);
    REQUIRE(err <= nerr);
    if (err == nerr && err != 0) REQUIRE((h & 1) == 0);
  }
}

}  // namespace

TEST_CASE("f16 and bf16 patterns round-trip through fp64 exactly", "[cpu][numeric]") {
  for (const DType t : {DType::f16, DType::bf16}) {
    for (std::uint32_t b = 0; b <= 0xffff; ++b) {
      const auto bits = std::uint16_t(b);
      const double v = decode(t, bits);
      if (std::isnan(v)) {
        INFO("pattern " << b);
        REQUIRE(std::isnan(decode16(bits, format_of(t))));
        REQUIRE(std::isnan(decode(t, encode(t, v))));
        continue;
      }
      INFO("dtype " << int(t) << " pattern " << b << " value " << v);
      // The fast bit-level decoders agree with the format-generic one.
      REQUIRE(decode16(bits, format_of(t)) == v);
      REQUIRE(encode(t, v) == bits);
      // Both formats are subsets of fp32: going through float changes nothing.
      REQUIRE(encode(t, double(float(v))) == bits);
    }
  }
}

TEST_CASE("f16 rounding cases", "[cpu][numeric]") {
  CHECK(to_half_bits(1.0) == 0x3c00);
  CHECK(to_half_bits(-2.0) == 0xc000);
  CHECK(to_half_bits(0.0) == 0x0000);
  CHECK(to_half_bits(-0.0) == 0x8000);
  CHECK(to_half_bits(65504.0) == 0x7bff);                 // largest finite
  CHECK(to_half_bits(65519.99) == 0x7bff);                // below the halfway point to 2^16
  CHECK(to_half_bits(65520.0) == 0x7c00);                 // tie rounds to even = 2^16: overflow to inf
  CHECK(to_half_bits(-1e10) == 0xfc00);
  CHECK(to_half_bits(std::ldexp(1.0, -14)) == 0x0400);    // smallest normal
  CHECK(to_half_bits(std::ldexp(1.0, -24)) == 0x0001);    // smallest subnormal
  CHECK(to_half_bits(std::ldexp(1.0, -25)) == 0x0000);    // half of it: tie to even (zero)
  CHECK(to_half_bits(std::ldexp(1.0000001, -25)) == 0x0001);
  CHECK(to_half_bits(std::ldexp(3.0, -25)) == 0x0002);    // 1.5 ulp: tie to even (2)
  CHECK(to_half_bits(std::ldexp(1023.0, -24)) == 0x03ff); // largest subnormal
  CHECK(to_half_bits(std::ldexp(1023.5, -24)) == 0x0400); // rounds up into the normals
  CHECK(to_half_bits(1.0 + std::ldexp(1.0, -11)) == 0x3c00);      // tie to even (down)
  CHECK(to_half_bits(1.0 + 3 * std::ldexp(1.0, -11)) == 0x3c02);  // tie to even (up)
  CHECK(to_half_bits(2047.0 / 1024.0 + std::ldexp(1.0, -11)) == 0x4000);  // carry into the next binade
  // Double rounding would get this wrong: via fp32 it becomes exactly the tie 1 + 2^-11 (-> 1.0);
  // straight from fp64 it is above the tie and must round up.
  const double above_tie = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  CHECK(float(above_tie) == float(1.0 + std::ldexp(1.0, -11)));
  CHECK(to_half_bits(above_tie) == 0x3c01);
  CHECK(half_bits_to_float(0x3555) == Approx(0.333251953125).epsilon(0));
  CHECK(std::isinf(half_bits_to_float(0x7c00)));
  CHECK(std::isnan(half_bits_to_float(0x7e00)));
  CHECK(half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  const std::uint16_t nan = to_half_bits(std::numeric_limits<double>::quiet_NaN());
  CHECK((nan & 0x7c00) == 0x7c00);
  CHECK((nan & 0x03ff) != 0);
  CHECK((to_half_bits(-std::numeric_limits<double>::quiet_NaN()) & 0x8000) == 0x8000);
  CHECK(to_half_bits(std::numeric_limits<double>::infinity()) == 0x7c00);
}

TEST_CASE("bf16 rounding cases", "[cpu][numeric]") {
  CHECK(to_bf16_bits(1.0) == 0x3f80);
  CHECK(to_bf16_bits(-1.0) == 0xbf80);
  CHECK(to_bf16_bits(1.0 + std::ldexp(1.0, -8)) == 0x3f80);      // tie to even (down)
  CHECK(to_bf16_bits(1.0 + 3 * std::ldexp(1.0, -8)) == 0x3f82);  // tie to even (up)
  CHECK(to_bf16_bits(std::numeric_limits<float>::max()) == 0x7f80);  // above bf16's max: inf
  CHECK(to_bf16_bits(0x1.fep127) == 0x7f7f);                          // bf16's max
  CHECK(to_bf16_bits(std::ldexp(1.0, -133)) == 0x0001);              // smallest bf16 subnormal
  CHECK(to_bf16_bits(std::ldexp(1.0, -134)) == 0x0000);              // tie to zero
  CHECK(to_bf16_bits(std::ldexp(1.0, -150)) == 0x0000);              // far below: signed zero
  CHECK(to_bf16_bits(-std::ldexp(1.0, -150)) == 0x8000);
  CHECK(bf16_bits_to_float(0x4049) == 3.140625f);
  const std::uint16_t nan = to_bf16_bits(std::numeric_limits<double>::quiet_NaN());
  CHECK(std::isnan(bf16_bits_to_float(nan)));
  CHECK(to_bf16_bits(-std::numeric_limits<double>::infinity()) == 0xff80);
}

TEST_CASE("fp32 -> bf16 matches the integer round-to-nearest-even formulation", "[cpu][numeric]") {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 1000000; ++i) {
    const auto u = std::uint32_t(rng());
    const float f = bits_float(u);
    if (std::isnan(f)) continue;
    INFO("fp32 bits " << u);
    REQUIRE(to_bf16_bits(f) == bf16_by_bit_trick(f));
  }
}

TEST_CASE("rounding is to the nearest value, ties to even", "[cpu][numeric]") {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> mant(-1.0, 1.0);
  std::uniform_int_distribution<int> exp16(-26, 15), exp_bf(-135, 126);
  for (int i = 0; i < 200000; ++i) {
    require_nearest_even(std::ldexp(mant(rng), exp16(rng)), DType::f16);
    require_nearest_even(std::ldexp(mant(rng), exp_bf(rng)), DType::bf16);
  }
  // Exact ties between neighbours of every binade, both directions.
  for (int e = -24; e <= 14; ++e)
    for (const double m : {1.0, 1.5, 1.25}) {
      require_nearest_even(std::ldexp(m, e) + std::ldexp(1.0, e - 11), DType::f16);
      require_nearest_even(std::ldexp(m, e) + std::ldexp(1.0, e - 8), DType::bf16);
    }
  CHECK(round_to(DType::f16, 0.1) == 0.0999755859375);
  CHECK(round_to(DType::bf16, 0.1) == 0.10009765625);
  CHECK(max_finite(DType::f16) == 65504.0);
  CHECK(encode(DType::bf16, max_finite(DType::bf16)) == 0x7f7f);
}
