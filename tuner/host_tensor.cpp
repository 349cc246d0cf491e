#include "tuner/host_tensor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "tuner/numeric.h"
#include "tuner/parallel.h"

namespace flashbias {
namespace {

// Elements per RNG chunk: big enough that seeding (mt19937_64 state set-up) is noise, small
// enough that a few-million-element tensor spreads over every core.
constexpr std::int64_t kRngChunk = std::int64_t(1) << 16;

// SplitMix64 finaliser: turns (seed, stream, chunk) into well-spread engine seeds, so that
// neighbouring seeds and chunks do not give correlated streams.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void check_index(const Shape4& s, std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) {
  if (b < 0 || b >= s.b || n < 0 || n >= s.n || h < 0 || h >= s.h || x < 0 || x >= s.x)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("HostTensor: index ({}, {}, {}, {}) is outside shape {}", b, n, h, x, s.str()));
}

}  // namespace

std::string Shape4::str() const { return fmt::format("[{}, {}, {}, {}]", b, n, h, x); }

HostTensor::HostTensor(DType dtype, Shape4 shape, FactorLayout layout)
    : dtype_(dtype), shape_(shape), layout_(layout) {
  if (shape.b < 1 || shape.n < 1 || shape.h < 1 || shape.x < 1)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("HostTensor: shape {} has an extent below 1", shape.str()));
  const Shape4 st = storage_shape();
  strides_.head = layout.head_shared ? 0 : st.x;
  strides_.seq = st.h * st.x;
  strides_.batch = layout.batch_shared ? 0 : st.n * st.h * st.x;
  bits_.assign(static_cast<std::size_t>(st.elements()), 0);
}

Shape4 HostTensor::storage_shape() const {
  return Shape4{layout_.batch_shared ? 1 : shape_.b, shape_.n, layout_.head_shared ? 1 : shape_.h, shape_.x};
}

double HostTensor::get(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const {
  return numeric::decode(dtype_, bits_[static_cast<std::size_t>(offset(b, n, h, x))]);
}

void HostTensor::set(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x, double value) {
  // Writes are rare (tests, hand-built cases), so they pay for a bounds check; reads do not.
  check_index(shape_, b, n, h, x);
  bits_[static_cast<std::size_t>(offset(b, n, h, x))] = numeric::encode(dtype_, value);
}

void HostTensor::fill_normal(std::uint64_t seed, double stddev, unsigned threads) {
  const auto total = static_cast<std::int64_t>(bits_.size());
  const std::int64_t chunks = (total + kRngChunk - 1) / kRngChunk;
  const numeric::Format16& format = numeric::format_of(dtype_);
  detail::parallel_for(chunks, threads, [&](std::int64_t c) {
    std::mt19937_64 engine(mix(mix(seed) ^ static_cast<std::uint64_t>(c)));
    std::normal_distribution<double> normal(0.0, stddev);
    const std::int64_t end = std::min(total, (c + 1) * kRngChunk);
    for (std::int64_t i = c * kRngChunk; i < end; ++i)
      bits_[static_cast<std::size_t>(i)] = numeric::encode16(normal(engine), format);
  });
}

void HostTensor::fill_bits(std::uint16_t pattern) { std::fill(bits_.begin(), bits_.end(), pattern); }

std::vector<double> HostTensor::to_double() const {
  std::vector<double> out(static_cast<std::size_t>(shape_.elements()));
  std::size_t i = 0;
  for (std::int64_t b = 0; b < shape_.b; ++b)
    for (std::int64_t n = 0; n < shape_.n; ++n)
      for (std::int64_t h = 0; h < shape_.h; ++h)
        for (std::int64_t x = 0; x < shape_.x; ++x) out[i++] = get(b, n, h, x);
  return out;
}

AttentionInputs make_inputs(const ProblemSpec& spec, std::uint64_t seed, unsigned threads) {
  validate(spec);
  const Shape4 qs{spec.batch, spec.seqlen_q, spec.heads, spec.head_dim};
  const Shape4 ks{spec.batch, spec.seqlen_k, spec.heads, spec.head_dim};
  AttentionInputs in;
  in.q = HostTensor(spec.dtype, qs);
  in.k = HostTensor(spec.dtype, ks);
  in.v = HostTensor(spec.dtype, ks);
  // One stream per tensor: changing the rank or a layout leaves Q, K and V unchanged.
  in.q.fill_normal(mix(seed) + 1, 1.0, threads);
  in.k.fill_normal(mix(seed) + 2, 1.0, threads);
  in.v.fill_normal(mix(seed) + 3, 1.0, threads);
  if (spec.rank > 0) {
    in.qb = HostTensor(spec.dtype, Shape4{spec.batch, spec.seqlen_q, spec.heads, spec.rank}, spec.qb_layout);
    in.kb = HostTensor(spec.dtype, Shape4{spec.batch, spec.seqlen_k, spec.heads, spec.rank}, spec.kb_layout);
    // BENCH.md: Qb / sqrt(R) keeps the bias Qb Kb^T at unit variance whatever the rank.
    in.qb.fill_normal(mix(seed) + 4, 1.0 / std::sqrt(double(spec.rank)), threads);
    in.kb.fill_normal(mix(seed) + 5, 1.0, threads);
  }
  return in;
}

HostTensor make_grad_output(const ProblemSpec& spec, std::uint64_t seed, unsigned threads) {
  validate(spec);
  HostTensor d(spec.dtype, Shape4{spec.batch, spec.seqlen_q, spec.heads, spec.head_dim});
  d.fill_normal(mix(seed) + 6, 1.0, threads);
  return d;
}

void poison(HostTensor& t) { t.fill_bits(kPoison16); }

void poison(std::span<float> values) {
  float p;
  std::memcpy(&p, &kPoison32, sizeof p);
  std::fill(values.begin(), values.end(), p);
}

std::int64_t count_poisoned(const HostTensor& t) {
  const auto bits = t.bits();
  return std::count(bits.begin(), bits.end(), kPoison16);
}

std::int64_t count_poisoned(std::span<const float> values) {
  return std::count_if(values.begin(), values.end(), [](float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u == kPoison32;
  });
}

}  // namespace flashbias
