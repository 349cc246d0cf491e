// Host-side tensors for checking kernels: 16-bit storage tensors laid out exactly as the device
// ones (so a buffer copies to and from the GPU byte for byte), fp64 tensors for reference results,
// seeded random inputs, and output poisoning.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "flashbias/flashbias.hpp"
#include "generator/problem_spec.h"

namespace flashbias {

/// A rank-4 extent [batch, seq, heads, x]; x is the head dim D or the bias rank R.
struct Shape4 {
  std::int64_t b = 0, n = 0, h = 0, x = 0;
  bool operator==(const Shape4&) const = default;
  std::int64_t elements() const { return b * n * h * x; }
  std::string str() const;  ///< "[2, 17, 4, 64]"
};

/// An fp16 or bf16 tensor of logical shape [B, N, H, X] whose last dimension is contiguous.
/// Dimensions marked shared in its FactorLayout are stored once and read with stride 0, so a
/// broadcast factor is a real stride-0 view, as the kernel sees it, not a materialised copy.
class HostTensor {
 public:
  HostTensor() = default;
  /// Zero-filled tensor; `layout` shares the batch and/or head dimension (stride 0).
  HostTensor(DType dtype, Shape4 shape, FactorLayout layout = {});

  DType dtype() const { return dtype_; }
  const Shape4& shape() const { return shape_; }
  FactorLayout layout() const { return layout_; }
  bool empty() const { return bits_.empty(); }
  /// Element strides of the logical shape (0 on shared dimensions), as ForwardArgs takes them.
  const Strides& strides() const { return strides_; }
  /// Shape of the stored data: the logical shape with shared dimensions set to 1.
  Shape4 storage_shape() const;

  /// The stored 16-bit patterns, storage_shape() contiguous: what a device buffer holds.
  std::span<std::uint16_t> bits() { return bits_; }
  std::span<const std::uint16_t> bits() const { return bits_; }
  void* data() { return bits_.data(); }
  const void* data() const { return bits_.data(); }
  std::size_t bytes() const { return bits_.size() * sizeof(std::uint16_t); }

  /// Storage index of logical element (b, n, h, x).
  std::int64_t offset(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const {
    return b * strides_.batch + n * strides_.seq + h * strides_.head + x;
  }
  /// Exact value of an element.
  double get(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const;
  /// Store `value` rounded to the dtype (nearest even). On a shared dimension every logical
  /// index that aliases the same storage sees the new value.
  void set(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x, double value);

  /// Fill the storage with N(0, stddev^2) samples rounded to the dtype. Deterministic in `seed`
  /// alone (not in the thread count): storage is cut into fixed chunks, each with its own
  /// std::mt19937_64 seeded from (seed, chunk index).
  void fill_normal(std::uint64_t seed, double stddev = 1.0, unsigned threads = 0);
  /// Set every stored element to `pattern` (see kPoison16).
  void fill_bits(std::uint16_t pattern);
  /// The logical tensor widened to fp64, contiguous [B, N, H, X] (shared dims materialised).
  std::vector<double> to_double() const;

 private:
  DType dtype_ = DType::f16;
  Shape4 shape_;
  FactorLayout layout_;
  Strides strides_;
  std::vector<std::uint16_t> bits_;
};

/// A dense contiguous fp64 tensor [B, N, H, X]: reference results and gradients.
struct RefTensor {
  Shape4 shape;
  std::vector<double> data;

  RefTensor() = default;
  explicit RefTensor(Shape4 s) : shape(s), data(static_cast<std::size_t>(s.elements()), 0.0) {}
  std::int64_t offset(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const {
    return ((b * shape.n + n) * shape.h + h) * shape.x + x;
  }
  double& at(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) { return data[offset(b, n, h, x)]; }
  double at(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const { return data[offset(b, n, h, x)]; }
};

/// The five inputs of one problem. qb and kb are empty when the rank is 0.
struct AttentionInputs {
  HostTensor q, k, v;  ///< [B, Nq, H, D], [B, Nk, H, D], [B, Nk, H, D]
  HostTensor qb, kb;   ///< [B, Nq, H, R], [B, Nk, H, R], shared per the spec's factor layouts
};

/// Random inputs as BENCH.md draws them: Q, K, V, Kb ~ N(0, 1), Qb ~ N(0, 1) / sqrt(R), rounded to
/// spec.dtype; each tensor gets its own stream derived from `seed`. Factors follow the spec's layouts.
AttentionInputs make_inputs(const ProblemSpec& spec, std::uint64_t seed, unsigned threads = 0);

/// A random output gradient dO ~ N(0, 1), [B, Nq, H, D] in spec.dtype.
HostTensor make_grad_output(const ProblemSpec& spec, std::uint64_t seed, unsigned threads = 0);

/// Bit patterns written into outputs before a kernel runs, so that an element the kernel never
/// wrote is recognisable afterwards. 0xFFFF is a NaN in both f16 and bf16, and 0xFFFFFFFF in fp32:
/// unwritten outputs also fail every numeric check, never pass as plausible numbers.
inline constexpr std::uint16_t kPoison16 = 0xFFFFu;
inline constexpr std::uint32_t kPoison32 = 0xFFFFFFFFu;

/// Fill a 16-bit output with kPoison16.
void poison(HostTensor& t);
/// Fill an fp32 buffer (an LSE output) with kPoison32.
void poison(std::span<float> values);
/// Number of elements still holding the poison pattern.
std::int64_t count_poisoned(const HostTensor& t);
std::int64_t count_poisoned(std::span<const float> values);

}  // namespace flashbias
