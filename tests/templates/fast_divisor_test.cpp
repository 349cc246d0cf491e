// The forward's block decode divides by host-made FastDivisors (templates/common/params.h). The
// device runs the same constexpr function, so checking it here against the integer division
// covers the kernels' arithmetic: every divisor class (1, powers of two, odd, near 2^31) against
// dividends at the edges and at random, fresh each run.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "common/params.h"

namespace flashbias {
namespace {

TEST_CASE("fast_divide equals integer division over the kernels' range", "[cpu]") {
  std::vector<unsigned> divisors;
  for (unsigned d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (unsigned s = 12; s < 31; ++s)
    for (unsigned delta : {0u, 1u}) {
      divisors.push_back((1u << s) - delta);
      divisors.push_back((1u << s) + 1u);
    }
  divisors.push_back(2147483647u);
  divisors.push_back(1000000007u);
  divisors.push_back(65535u * 3u);

  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<unsigned> any(0u, 2147483647u);
  std::uniform_int_distribution<unsigned> small(0u, 1u << 20);
  std::int64_t mismatches = 0;
  for (unsigned d : divisors) {
    const FastDivisor f = make_fast_divisor(d);
    REQUIRE(f.divisor == d);
    REQUIRE(f.shift <= 31u);
    auto check = [&](unsigned n) {
      if (fast_divide(n, f) != n / d) {
        if (mismatches++ < 5) FAIL_CHECK("fast_divide(" << n << ", " << d << ") = " << fast_divide(n, f));
      }
    };
    for (unsigned n : {0u, 1u, d - 1u, d, d + 1u, 2u * d - 1u, 2147483647u, 2147483646u}) check(n);
    // Multiples of d and their neighbours, where a wrong rounding shows first.
    for (unsigned k = 1; k < 64; ++k) {
      const std::uint64_t n = std::uint64_t(d) * (std::uint64_t(any(rng)) % (2147483647u / d + 1u));
      if (n >= 1 && n < 2147483647u) {
        check(unsigned(n - 1));
        check(unsigned(n));
        check(unsigned(n + 1));
      }
      check(any(rng));
      check(small(rng));
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("a zero divisor makes no division by zero on the host", "[cpu]") {
  const FastDivisor f = make_fast_divisor(0);
  CHECK(f.divisor == 0u);
  CHECK(fast_divide(7u, f) == 7u);
}

TEST_CASE("fast_divide is exact for every dividend of small divisors", "[cpu]") {
  // Every block index of a grid of up to 2^20 CTAs against the divisors a block decode meets most.
  for (unsigned d : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 12u, 16u, 24u, 50u, 64u, 128u, 1000u}) {
    const FastDivisor f = make_fast_divisor(d);
    unsigned bad = 0;
    for (unsigned n = 0; n < (1u << 20); ++n) bad += fast_divide(n, f) != n / d;
    CHECK(bad == 0);
  }
}

}  // namespace
}  // namespace flashbias
