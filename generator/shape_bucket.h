// ShapeBucket: the class of shapes that share one tuned tile. A tuning run measures one concrete
// shape and its winner serves every shape of the same bucket; the runtime's dispatch map is keyed
// by (ProblemKey, ShapeBucket), so the tuner, the store and the runtime must bucket identically:
// they all call shape_bucket() from here.
//
// Rule (README "Shape buckets"): each of batch*heads, seqlen_q and seqlen_k is rounded up to a
// power of two, i.e. bucket = ceil(log2(x)). The best tile depends on these extents through
// ratios (how many CTAs per SM wave, how much of the last tile is padding, how long the main loop
// runs), and those change little within a factor of two, while a finer split would multiply the
// tuning runs an operator has to do. Sequence lengths at or below 64 share one bucket: 64 rows is
// the smallest block_m in the knob space, so all of them run a single, partly filled row tile
// (heuristic_tile draws its short-sequence line at the same 64).
//
// Header-only on purpose: the generator library's sources are another colleague's, and the
// runtime, the tuner and the cache all reach this header through generator/ without a new link.
#pragma once

#include <bit>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "flashbias/flashbias.hpp"
#include "generator/variants.h"

namespace flashbias {

struct ShapeBucket {
  /// Smallest seqlen bucket, as a power of two: 2^6 = 64, the smallest block_m.
  static constexpr std::uint8_t kMinSeqlenLog2 = 6;

  std::uint8_t log2_batch_heads = 0;       ///< batch*heads <= 2^this
  std::uint8_t log2_seqlen_q = kMinSeqlenLog2;  ///< seqlen_q <= 2^this
  std::uint8_t log2_seqlen_k = kMinSeqlenLog2;  ///< seqlen_k <= 2^this

  bool operator==(const ShapeBucket&) const = default;

  /// Stable text form, the store's bucket column: "bh64.nq1024.nk1024" (the inclusive upper
  /// bounds). Changing it orphans every stored winner: don't.
  std::string str() const {
    return fmt::format("bh{}.nq{}.nk{}", std::uint64_t{1} << log2_batch_heads, std::uint64_t{1} << log2_seqlen_q,
                       std::uint64_t{1} << log2_seqlen_k);
  }

  /// Inverse of str(). Throws Error(invalid_argument) naming the text and the expected form.
  static ShapeBucket parse(std::string_view text) {
    auto bad = [&](std::string_view why) {
      return Error(ErrorCode::invalid_argument,
                   fmt::format("shape bucket '{}' is malformed ({}): expected bh<2^a>.nq<2^b>.nk<2^c>, e.g. "
                               "bh64.nq1024.nk1024, with nq and nk at least {}",
                               text, why, 1u << kMinSeqlenLog2));
    };
    ShapeBucket b;
    std::string_view rest = text;
    auto field = [&](std::string_view prefix, std::uint8_t& out, std::uint8_t min_log2) {
      if (rest.substr(0, prefix.size()) != prefix) throw bad(fmt::format("missing '{}'", prefix));
      rest.remove_prefix(prefix.size());
      std::uint64_t v = 0;
      auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), v);
      if (ec != std::errc{} || ptr == rest.data()) throw bad(fmt::format("no number after '{}'", prefix));
      rest.remove_prefix(static_cast<std::size_t>(ptr - rest.data()));
      if (!std::has_single_bit(v)) throw bad(fmt::format("{}{} is not a power of two", prefix, v));
      const int l = std::countr_zero(v);
      if (l < min_log2) throw bad(fmt::format("{}{} is below the smallest bucket", prefix, v));
      out = static_cast<std::uint8_t>(l);
    };
    field("bh", b.log2_batch_heads, 0);
    field(".nq", b.log2_seqlen_q, kMinSeqlenLog2);
    field(".nk", b.log2_seqlen_k, kMinSeqlenLog2);
    if (!rest.empty()) throw bad(fmt::format("trailing '{}'", rest));
    return b;
  }

  /// The largest shape of the bucket (what `flashbias tune` measures when asked for a bucket
  /// rather than a concrete problem).
  ShapeInfo upper() const {
    return ShapeInfo{std::int64_t(1) << log2_batch_heads, std::int64_t(1) << log2_seqlen_q,
                     std::int64_t(1) << log2_seqlen_k};
  }
};

/// ceil(log2(v)) for v >= 1 (0 for v <= 1).
inline std::uint8_t ceil_log2(std::int64_t v) noexcept {
  return static_cast<std::uint8_t>(std::bit_width(static_cast<std::uint64_t>(v > 1 ? v - 1 : 0)));
}

/// The bucket of a shape (rule at the top of this header). Extents below 1 are treated as 1.
inline ShapeBucket shape_bucket(const ShapeInfo& s) noexcept {
  auto seq = [](std::int64_t v) {
    const std::uint8_t l = ceil_log2(v);
    return l < ShapeBucket::kMinSeqlenLog2 ? ShapeBucket::kMinSeqlenLog2 : l;
  };
  return ShapeBucket{ceil_log2(s.batch_heads), seq(s.seqlen_q), seq(s.seqlen_k)};
}

inline std::size_t hash_value(const ShapeBucket& b) noexcept {
  return (std::size_t{b.log2_batch_heads} << 16) | (std::size_t{b.log2_seqlen_q} << 8) | std::size_t{b.log2_seqlen_k};
}

}  // namespace flashbias

template <> struct std::hash<flashbias::ShapeBucket> {
  std::size_t operator()(const flashbias::ShapeBucket& b) const noexcept { return flashbias::hash_value(b); }
};
