// FlashBias JIT: attention with a low-rank bias, generated, compiled and tuned at run time.
//
//   O = softmax(scale * Q K^T + Qb Kb^T + mask) V,    Qb: [B, Nq, H, R], Kb: [B, Nk, H, R]
//
// Public C++ API. The C ABI lives in flashbias.h and is a thin layer over this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

typedef struct CUstream_st* CUstream;

namespace flashbias {

/// What went wrong; stable values, mirrored by flashbias_status in the C ABI.
enum class ErrorCode : int {
  ok = 0,
  invalid_argument = 1,  ///< an argument is null, misaligned, out of range or inconsistent
  unsupported = 2,       ///< valid, but no kernel variant covers it (head dim, rank, dtype, arch)
  no_gpu = 3,            ///< libcuda could not be loaded or no CUDA device exists
  driver_error = 4,      ///< a CUDA Driver API call failed
  nvrtc_unavailable = 5, ///< NVRTC is needed (no cached kernel) but could not be loaded
  compile_failed = 6,    ///< NVRTC rejected the generated source (the message carries the log)
  launch_failed = 7,     ///< the kernel launch was rejected
  cache_error = 8,       ///< the kernel/tuning store is unusable
  not_found = 9,         ///< policy forbids compiling and no stored kernel matches
  internal = 10,
};

/// The one exception type of the library: a code and a message that names the argument and the limit.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message) : std::runtime_error(std::move(message)), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

const char* to_string(ErrorCode code) noexcept;

enum class DType : std::uint8_t { f16 = 0, bf16 = 1 };
enum class MaskKind : std::uint8_t {
  none = 0,
  /// Causal, aligned to the bottom-right corner: query i sees keys j <= i + (Nk - Nq).
  /// For Nq == Nk this is the usual top-left causal mask. Rows that see no key give O = 0, LSE = -inf.
  causal = 1,
};

/// Element strides of a rank-4 tensor [batch, seq, heads, dim] whose last dim is contiguous.
/// A stride of 0 broadcasts (allowed for the batch and head strides of the bias factors).
struct Strides {
  std::int64_t batch = 0;
  std::int64_t seq = 0;
  std::int64_t head = 0;
};

/// Contiguous [B, N, H, D] ("BSHD") strides.
inline Strides bshd_strides(std::int64_t n, std::int64_t h, std::int64_t d) {
  return Strides{n * h * d, h * d, d};
}

/// Arguments of one forward call. Pointers are device pointers; nothing is copied.
struct ForwardArgs {
  DType dtype = DType::f16;
  std::int64_t batch = 0, heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  std::int64_t rank = 0;  ///< bias rank R; 0 means plain attention (qb, kb ignored)

  const void* q = nullptr;  Strides q_stride;   ///< [B, Nq, H, D]
  const void* k = nullptr;  Strides k_stride;   ///< [B, Nk, H, D]
  const void* v = nullptr;  Strides v_stride;   ///< [B, Nk, H, D]
  const void* qb = nullptr; Strides qb_stride;  ///< [B, Nq, H, R]; batch/head stride may be 0
  const void* kb = nullptr; Strides kb_stride;  ///< [B, Nk, H, R]; batch/head stride may be 0
  void* o = nullptr;        Strides o_stride;   ///< [B, Nq, H, D], same dtype as q
  float* lse = nullptr;  ///< optional [B, H, Nq] fp32 natural-log sum-exp of each row's scores

  /// Default 1/sqrt(head_dim); any finite value. fp16 with a bias folds it into Q when
  /// |softmax_scale| is in [2^-6, 1] (every default); outside that range such a problem runs the
  /// portable kernels on Hopper, which are slower.
  std::optional<float> softmax_scale;
  MaskKind mask = MaskKind::none;
};

enum class BackwardMode : std::uint8_t {
  /// Bitwise identical results run to run: no float atomics anywhere. dK, dV, dKb are reduced
  /// per key block and dQ, dQb per query block by separate kernels; gradients of broadcast
  /// factors are summed over the broadcast dimensions in a fixed order.
  deterministic = 0,
};

/// Arguments of one backward call: the forward's inputs, its O and LSE, and dO in; the five
/// gradients out. Pointers are device pointers; nothing is copied.
struct BackwardArgs {
  DType dtype = DType::f16;
  std::int64_t batch = 0, heads = 0, seqlen_q = 0, seqlen_k = 0, head_dim = 0;
  std::int64_t rank = 0;

  const void* q = nullptr;    Strides q_stride;     ///< [B, Nq, H, D]
  const void* k = nullptr;    Strides k_stride;     ///< [B, Nk, H, D]
  const void* v = nullptr;    Strides v_stride;     ///< [B, Nk, H, D]
  const void* qb = nullptr;   Strides qb_stride;    ///< [B, Nq, H, R]; batch/head stride may be 0
  const void* kb = nullptr;   Strides kb_stride;    ///< [B, Nk, H, R]; batch/head stride may be 0
  const void* o = nullptr;    Strides o_stride;     ///< the forward's output [B, Nq, H, D]
  const void* dout = nullptr; Strides dout_stride;  ///< dLoss/dO [B, Nq, H, D]
  const float* lse = nullptr;  ///< required: the forward's [B, H, Nq] fp32 LSE

  void* dq = nullptr;  Strides dq_stride;   ///< [B, Nq, H, D]
  void* dk = nullptr;  Strides dk_stride;   ///< [B, Nk, H, D]
  void* dv = nullptr;  Strides dv_stride;   ///< [B, Nk, H, D]
  /// [B|1, Nq, H|1, R]: one slice along each dimension where qb broadcasts (its stride there is
  /// ignored), holding the sum of the gradient over it. Required when rank > 0.
  void* dqb = nullptr; Strides dqb_stride;
  void* dkb = nullptr; Strides dkb_stride;  ///< [B|1, Nk, H|1, R], as dqb

  std::optional<float> softmax_scale;  ///< default 1/sqrt(head_dim)
  MaskKind mask = MaskKind::none;
  BackwardMode mode = BackwardMode::deterministic;
  /// Scratch memory of at least backward_workspace_size(*this) bytes, 16-byte aligned, used in
  /// stream order. Null: backward() allocates and frees it in stream order (cuMemAllocAsync).
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};

/// How a kernel's tile configuration is chosen on a dispatch miss.
enum class Policy : std::uint8_t {
  heuristic = 0,   ///< stored winner for this device and shape bucket, else the built-in heuristic
  tune = 1,        ///< on a miss, tune the key now (bounded budget), store, then run
  cache_only = 2,  ///< stored or bundled kernels only; a miss is an error; NVRTC is never loaded
};

struct ContextOptions {
  int device = -1;             ///< CUDA device ordinal; -1 = the current context's device, else 0
  Policy policy = Policy::heuristic;
  bool check_pointers = true;  ///< verify that every pointer is device memory (a driver query per pointer)
  /// Run the portable kernel family (mma.sync, sm_80 and newer) even where a faster family exists
  /// (the wgmma/TMA forward on sm_90a): for comparison and testing. Kernels are compiled for the
  /// plain arch (sm_90, not sm_90a), so their cache and bundle entries stay apart.
  bool portable = false;
};

class ContextImpl;

/// A handle bound to one CUDA device. Thread-safe: many threads may call forward() at once;
/// concurrent first calls for one kernel compile it once. A repeated call is a hash lookup and
/// a launch: no allocation, no synchronisation, so it is safe inside CUDA graph capture.
class Context {
 public:
  explicit Context(ContextOptions options = {});
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&&) noexcept;
  Context& operator=(Context&&) noexcept;

  /// Enqueue the forward pass on `stream`. Throws flashbias::Error on bad arguments or failures.
  void forward(const ForwardArgs& args, CUstream stream);

  /// Scratch bytes backward(args) needs (pointers are not read). Throws on invalid sizes.
  std::size_t backward_workspace_size(const BackwardArgs& args);
  /// Enqueue the backward pass on `stream`: dq, dk, dv, dqb, dkb. Never synchronises.
  void backward(const BackwardArgs& args, CUstream stream);

  ContextImpl& impl() { return *impl_; }

 private:
  std::unique_ptr<ContextImpl> impl_;
};

}  // namespace flashbias
