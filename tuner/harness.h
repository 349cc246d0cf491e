// Device-side harness shared by `flashbias check`, `flashbias demo`, the gpu tests, the tuner
// and the benchmarks: device copies of a problem's inputs and outputs, checks against the fp64
// reference with poisoned outputs, and event timing.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "flashbias/flashbias.hpp"
#include "generator/problem_spec.h"
#include "tuner/host_tensor.h"
#include "tuner/reference.h"

namespace flashbias {

/// Retain device `ordinal`'s primary context and make it current on this thread, as a host
/// application (PyTorch, a CUDA runtime program) would have it. Returns the context; it stays
/// retained for the life of the process.
CUcontext activate_primary_context(int ordinal);

/// A device allocation in the current context (RAII; cuMemFree on destruction).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  CUdeviceptr ptr() const { return ptr_; }
  void* get() const { return reinterpret_cast<void*>(ptr_); }
  std::size_t bytes() const { return bytes_; }
  void upload(const void* src, std::size_t bytes);
  void download(void* dst, std::size_t bytes) const;

 private:
  CUdeviceptr ptr_ = 0;
  std::size_t bytes_ = 0;
};

/// One problem's tensors on the device: inputs drawn on the host (seeded), outputs poisoned on
/// request. The calling thread's current context must be the one the buffers belong to.
class DeviceProblem {
 public:
  DeviceProblem(const ProblemSpec& spec, std::uint64_t seed);

  const ProblemSpec& spec() const { return spec_; }
  const AttentionInputs& inputs() const { return inputs_; }
  /// Fresh random inputs (new seed), uploaded.
  void regenerate(std::uint64_t seed);
  /// Replace the inputs with `inputs` (same shapes, dtypes and factor layouts as the spec's, else
  /// std::invalid_argument naming the tensor) and upload them: for tests that need inputs of a
  /// chosen structure rather than random draws.
  void set_inputs(AttentionInputs inputs);
  /// Arguments of a forward call on these buffers (BSHD layouts, stride-0 shared factors).
  ForwardArgs forward_args() const;
  /// Fill O and LSE with NaN patterns so that unwritten elements fail every check.
  void poison_outputs();
  /// Copy O and LSE back.
  void download(HostTensor& o, std::vector<float>& lse) const;
  /// Bytes on the device.
  std::size_t device_bytes() const;

  // --- Backward (allocated by enable_backward) ---
  /// Draw dO (seeded) and allocate dO and the five gradients. dQb/dKb are stored in the factors'
  /// own storage shape: extent 1 on a shared dimension.
  void enable_backward(std::uint64_t seed);
  bool backward_enabled() const { return !dout_.empty(); }
  const HostTensor& dout() const { return dout_; }
  /// Arguments of a backward call on these buffers: the forward's O and LSE (run forward first),
  /// dO, and the gradient buffers. `workspace` may be null (stream-ordered allocation).
  BackwardArgs backward_args(void* workspace = nullptr, std::size_t workspace_bytes = 0) const;
  /// Fill the five gradients with NaN patterns.
  void poison_gradients();
  struct Gradients {
    HostTensor dq, dk, dv, dqb, dkb;  ///< dqb/dkb in storage shape (empty when R = 0)
  };
  Gradients download_gradients() const;

  // --- References, computed once per set of inputs ---
  // Checking many kernels on one problem (check --config all, the tiles tests, every tuning
  // candidate on its two input sets) compared each against the fp64 reference and the plain
  // low-precision forward computed anew: seconds of CPU per check on a problem like af3_tri,
  // which bounded how many candidates a tuning budget could cover. The results depend on the
  // inputs (and dO) alone, so they are kept until regenerate(), set_inputs() or enable_backward()
  // changes those.
  struct ForwardReference {
    std::vector<std::int64_t> rows;  ///< the query rows they cover
    ForwardResult ref, lowp;
  };
  /// The forward references on `rows` (recomputed when `rows` differ from the kept ones).
  const ForwardReference& forward_reference(std::span<const std::int64_t> rows);
  struct BackwardReference {
    BackwardResult ref, lowp;
  };
  /// The backward references for dout(); needs enable_backward().
  const BackwardReference& backward_reference();
  /// How many times forward_reference() and backward_reference() computed (rather than reused).
  int reference_computations() const { return reference_computations_; }

 private:
  void upload();
  ProblemSpec spec_;
  AttentionInputs inputs_;
  std::optional<ForwardReference> fwd_ref_;
  std::optional<BackwardReference> bwd_ref_;
  int reference_computations_ = 0;
  DeviceBuffer q_, k_, v_, qb_, kb_, o_, lse_;
  HostTensor dout_;
  DeviceBuffer dout_buf_, dq_, dk_, dv_, dqb_, dkb_;
};

/// The outcome of one numerical check.
struct CheckResult {
  Comparison o, lse;
  double tolerance = 0;  ///< the bound applied (2e-3, or the bf16 rule)
  double lowp_error = 0; ///< rel-L2 error of the plain low-precision implementation on the same inputs
  std::int64_t rows_checked = 0;
  bool pass = false;
  std::string str() const;
};

/// Tolerance rule of the project: 2e-3 for fp16 inputs; for bf16, max(2e-3, 2 x the error of a
/// plain bf16 implementation on the same inputs).
double tolerance_for(DType dtype, double lowp_error);

/// Run `launch` (which enqueues a forward on `problem`'s buffers and the null stream), with O and
/// LSE poisoned first, and compare against the fp64 reference on up to `max_rows` sampled rows.
CheckResult check_forward(DeviceProblem& problem, const std::function<void(const ForwardArgs&)>& launch,
                          std::int64_t max_rows);

/// The outcome of a backward check: the five gradients against the fp64 reference.
struct BackwardCheck {
  std::vector<Comparison> grads;      ///< dQ, dK, dV (, dQb, dKb)
  std::vector<double> tolerance;      ///< per gradient: 2e-3, or the bf16 rule on that gradient
  std::vector<double> lowp_error;     ///< per gradient: the plain low-precision implementation's error
  bool pass = false;
  std::string str() const;            ///< one line per gradient
};

/// The seed of dO for inputs drawn from `seed`: the gpu tests and `flashbias check --backward`
/// both use it, so the seed a failing test prints reproduces with `flashbias check --seed`.
constexpr std::uint64_t dout_seed(std::uint64_t seed) { return seed + 1; }

/// Run `forward` (O and LSE, on `problem`'s buffers), poison the gradients, run `backward`, and
/// compare all five gradients with the fp64 reference (every row: test-sized problems). The
/// tolerance per gradient follows tolerance_for() with the plain low-precision backward's error.
/// Calls enable_backward(seed) first if it was not.
BackwardCheck check_backward(DeviceProblem& problem, const std::function<void(const ForwardArgs&)>& forward,
                             const std::function<void(const BackwardArgs&)>& backward, std::uint64_t seed);

/// Median milliseconds of `launch` over `repeats` runs timed with CUDA events on `stream`,
/// after `warmup` runs. `spread_ms` (optional) receives max - min.
double time_ms(const std::function<void()>& launch, CUstream stream, int warmup, int repeats,
               double* spread_ms = nullptr);

}  // namespace flashbias
