// Argument checking for Context::forward: every rule names the argument and the limit, so a
// caller never has to guess which of twenty numbers was wrong. The pure part needs no driver
// (tests run it on CPU-only machines); the pointer check queries the driver.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "flashbias/flashbias.hpp"
#include "generator/problem_key.h"
#include "runtime/device.h"

namespace flashbias {

/// Limits the forward kernels are written for.
inline constexpr std::int64_t kMaxHeadDim = 256;  ///< the largest register-resident O accumulator we generate
inline constexpr std::int64_t kHeadDimMultiple = 8;  ///< 8 halves = one 16-byte vector per thread
inline constexpr std::int64_t kMaxRank = 128;     ///< the bias factors are staged in smem next to K
/// The smallest block_m any variant uses: the grid (num_m_blocks * batch * heads CTAs on x) is
/// checked against it here, and again with the chosen tile when the launch is planned.
inline constexpr std::int64_t kMinBlockM = 64;
inline constexpr std::int64_t kInt32Max = 2147483647;
inline constexpr int kElementBytes = 2;           ///< f16 and bf16
inline constexpr int kMinArchSm = 80;             ///< mma.sync m16n8k16 + cp.async

/// The softmax scale a call runs with (ForwardArgs or BackwardArgs): the caller's, or 1/sqrt(D).
template <class Args>
float effective_scale(const Args& a) {
  return a.softmax_scale.value_or(1.0f / std::sqrt(static_cast<float>(a.head_dim)));
}

/// Check every argument (sizes, int32 limits, pointers for null and alignment, strides, enums,
/// scale) and derive the ProblemKey for `device`. Pure: no driver call.
/// Throws Error(invalid_argument) for arguments that are wrong in any case, and
/// Error(unsupported) for valid ones no kernel covers (head_dim 100, rank 200, sm_75).
ProblemKey validate_forward(const ForwardArgs& args, const DeviceInfo& device);

/// The same for a backward call: every forward rule for q, k, v, qb, kb, o (and the same limits),
/// plus dout, lse (required), the five gradients (dqb/dkb with one slice along each dimension
/// where qb/kb broadcast), mode and workspace. The key has direction bwd; its alignment classes
/// cover the gradients too.
ProblemKey validate_backward(const BackwardArgs& args, const DeviceInfo& device);

/// Ask the driver where each pointer lives; throw Error(invalid_argument) naming the argument if
/// it is host memory, unknown to CUDA, or on another device than `device`. Managed memory passes.
/// The device's context must be current.
void check_device_pointers(const ForwardArgs& args, const DeviceInfo& device);
void check_device_pointers(const BackwardArgs& args, const DeviceInfo& device);

/// The widest access in {16, 8, 4, 2} bytes that divides every value (addresses and byte
/// strides); 1 if some value is odd. Zero divides nothing and constrains nothing.
int alignment_class(std::initializer_list<std::uint64_t> byte_values) noexcept;

}  // namespace flashbias
