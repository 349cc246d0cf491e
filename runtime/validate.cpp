#include "runtime/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>

#include <fmt/format.h>

#include "runtime/driver_api.h"

namespace flashbias {
namespace {

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, std::move(message)); }

std::uint64_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }

void require_positive(std::string_view name, std::int64_t value) {
  if (value <= 0) fail(ErrorCode::invalid_argument, fmt::format("{} must be > 0 (got {})", name, value));
  if (value > kInt32Max) {
    fail(ErrorCode::unsupported,
         fmt::format("{} = {} exceeds the int32 limit {} of the kernels' index arithmetic", name, value, kInt32Max));
  }
}

void require_pointer(std::string_view name, const void* p, std::size_t align, std::string_view why) {
  if (p == nullptr) fail(ErrorCode::invalid_argument, fmt::format("{} is null", name));
  if (address(p) % align != 0) {
    fail(ErrorCode::invalid_argument,
         fmt::format("{} ({:#x}) is not aligned to {} bytes ({})", name, address(p), align, why));
  }
}

struct Dim {
  std::int64_t size;
  std::int64_t stride;
};

// Largest element offset of a strided tensor; throws if it does not fit in int64 (the kernel
// computes offsets in 64-bit).
std::int64_t max_offset(std::string_view name, std::initializer_list<Dim> dims) {
  std::int64_t total = 0;
  for (const Dim& d : dims) {
    std::int64_t span = 0;
    if (__builtin_mul_overflow(d.size - 1, d.stride, &span) || __builtin_add_overflow(total, span, &total)) {
      fail(ErrorCode::invalid_argument, fmt::format("{}: sizes times strides overflow a 64-bit offset", name));
    }
  }
  std::int64_t bytes = 0;
  if (__builtin_mul_overflow(total, std::int64_t{kElementBytes}, &bytes)) {
    fail(ErrorCode::invalid_argument, fmt::format("{}: sizes times strides overflow a 64-bit offset", name));
  }
  return total;
}

void require_strides(std::string_view name, const Strides& s, bool allow_broadcast) {
  const std::pair<const char*, std::int64_t> all[] = {{"batch", s.batch}, {"seq", s.seq}, {"head", s.head}};
  for (const auto& [dim, value] : all) {
    if (value < 0) {
      fail(ErrorCode::invalid_argument,
           fmt::format("{}_stride.{} = {} is negative; negative strides are not supported", name, dim, value));
    }
    const bool broadcastable = allow_broadcast && std::string_view(dim) != "seq";
    if (value == 0 && !broadcastable) {
      fail(ErrorCode::invalid_argument,
           fmt::format("{}_stride.{} is 0; only the batch and head strides of the bias factors qb/kb may be 0 "
                       "(broadcast)",
                       name, dim));
    }
  }
}

// O is written by many CTAs at once: two index tuples mapping to one element would race. A
// strided layout is injective if, with dimensions sorted by stride, each stride exceeds the
// extent spanned by all smaller ones (the usual sufficient test; size-1 dimensions never clash).
void require_no_overlap(std::string_view name, std::int64_t batch, std::int64_t seq, std::int64_t heads,
                        std::int64_t dim, const Strides& s) {
  Dim dims[] = {{dim, 1}, {heads, s.head}, {seq, s.seq}, {batch, s.batch}};
  std::sort(std::begin(dims), std::end(dims), [](const Dim& a, const Dim& b) { return a.stride < b.stride; });
  std::int64_t extent = 0;  // largest offset reachable with the dimensions seen so far
  for (const Dim& d : dims) {
    if (d.size == 1) continue;
    if (d.stride <= extent) {
      fail(ErrorCode::invalid_argument,
           fmt::format("{} strides (batch {}, seq {}, head {}) make distinct elements overlap; the output must "
                       "not alias itself",
                       name, s.batch, s.seq, s.head));
    }
    extent += (d.size - 1) * d.stride;  // no overflow: max_offset() checked these products
  }
}

}  // namespace

int alignment_class(std::initializer_list<std::uint64_t> byte_values) noexcept {
  int align = 16;
  for (std::uint64_t v : byte_values) {
    while (align > 1 && v % static_cast<std::uint64_t>(align) != 0) align /= 2;
  }
  return align;
}

namespace {

/// validate_forward's rules and key, shared with validate_backward; the forward's choice of the
/// portable family for a scale its Hopper kernel cannot fold is validate_forward's own.
ProblemKey forward_key(const ForwardArgs& a, const DeviceInfo& device) {
  if (a.dtype != DType::f16 && a.dtype != DType::bf16) {
    fail(ErrorCode::invalid_argument,
         fmt::format("dtype has the invalid value {} (f16 = 0, bf16 = 1)", static_cast<int>(a.dtype)));
  }
  if (a.mask != MaskKind::none && a.mask != MaskKind::causal) {
    fail(ErrorCode::invalid_argument,
         fmt::format("mask has the invalid value {} (none = 0, causal = 1)", static_cast<int>(a.mask)));
  }
  if (device.arch.sm < kMinArchSm) {
    fail(ErrorCode::unsupported, fmt::format("device {} ({}) is {}; the kernels need sm_{} or newer", device.ordinal,
                                             device.name, device.arch.name(), kMinArchSm));
  }
  require_positive("batch", a.batch);
  require_positive("heads", a.heads);
  require_positive("seqlen_q", a.seqlen_q);
  require_positive("seqlen_k", a.seqlen_k);
  require_positive("head_dim", a.head_dim);
  if (a.head_dim % kHeadDimMultiple != 0 || a.head_dim > kMaxHeadDim) {
    fail(ErrorCode::unsupported, fmt::format("head_dim = {} is not supported: it must be a multiple of {} in [{}, {}]",
                                             a.head_dim, kHeadDimMultiple, kHeadDimMultiple, kMaxHeadDim));
  }
  if (a.rank < 0) fail(ErrorCode::invalid_argument, fmt::format("rank must be >= 0 (got {})", a.rank));
  if (a.rank > kMaxRank) {
    fail(ErrorCode::unsupported, fmt::format("rank = {} is not supported: the bias rank must be in [0, {}]", a.rank,
                                             kMaxRank));
  }
  {
    // gridDim.x carries every (m-block, batch, head) triple and is limited to 2^31 - 1.
    const std::int64_t m_blocks = (a.seqlen_q + kMinBlockM - 1) / kMinBlockM;
    std::int64_t ctas = 0;
    if (__builtin_mul_overflow(m_blocks, a.batch, &ctas) || __builtin_mul_overflow(ctas, a.heads, &ctas) ||
        ctas > kInt32Max) {
      fail(ErrorCode::unsupported,
           fmt::format("the launch grid ceil(seqlen_q / {}) * batch * heads = {} * {} * {} exceeds the CUDA grid "
                       "limit {}",
                       kMinBlockM, m_blocks, a.batch, a.heads, kInt32Max));
    }
  }
  if (a.softmax_scale && !std::isfinite(*a.softmax_scale)) {
    fail(ErrorCode::invalid_argument, fmt::format("softmax_scale must be finite (got {})", *a.softmax_scale));
  }

  const std::string_view elem_why = "the element size of f16/bf16";
  require_pointer("q", a.q, kElementBytes, elem_why);
  require_pointer("k", a.k, kElementBytes, elem_why);
  require_pointer("v", a.v, kElementBytes, elem_why);
  require_pointer("o", a.o, kElementBytes, elem_why);
  if (a.lse != nullptr && address(a.lse) % sizeof(float) != 0) {
    fail(ErrorCode::invalid_argument,
         fmt::format("lse ({:#x}) is not aligned to 4 bytes (the size of float)", address(a.lse)));
  }
  require_strides("q", a.q_stride, false);
  require_strides("k", a.k_stride, false);
  require_strides("v", a.v_stride, false);
  require_strides("o", a.o_stride, false);
  max_offset("q", {{a.batch, a.q_stride.batch}, {a.seqlen_q, a.q_stride.seq}, {a.heads, a.q_stride.head}, {a.head_dim, 1}});
  max_offset("k", {{a.batch, a.k_stride.batch}, {a.seqlen_k, a.k_stride.seq}, {a.heads, a.k_stride.head}, {a.head_dim, 1}});
  max_offset("v", {{a.batch, a.v_stride.batch}, {a.seqlen_k, a.v_stride.seq}, {a.heads, a.v_stride.head}, {a.head_dim, 1}});
  max_offset("o", {{a.batch, a.o_stride.batch}, {a.seqlen_q, a.o_stride.seq}, {a.heads, a.o_stride.head}, {a.head_dim, 1}});
  require_no_overlap("o", a.batch, a.seqlen_q, a.heads, a.head_dim, a.o_stride);

  ProblemKey key;
  key.arch = device.arch;
  key.dtype = a.dtype;
  key.head_dim = static_cast<int>(a.head_dim);
  key.rank = static_cast<int>(a.rank);
  key.mask = a.mask;
  key.direction = Direction::fwd;
  auto bytes = [](std::int64_t elements) { return static_cast<std::uint64_t>(elements) * kElementBytes; };
  key.qkv_align = alignment_class({address(a.q), address(a.k), address(a.v), address(a.o), bytes(a.head_dim),
                                   bytes(a.q_stride.batch), bytes(a.q_stride.seq), bytes(a.q_stride.head),
                                   bytes(a.k_stride.batch), bytes(a.k_stride.seq), bytes(a.k_stride.head),
                                   bytes(a.v_stride.batch), bytes(a.v_stride.seq), bytes(a.v_stride.head),
                                   bytes(a.o_stride.batch), bytes(a.o_stride.seq), bytes(a.o_stride.head)});
  key.broadcast = kBroadcastNone;
  key.bias_align = 16;  // canonical when there are no factors, so rank-0 keys do not split by accident
  if (a.rank > 0) {
    require_pointer("qb", a.qb, kElementBytes, elem_why);
    require_pointer("kb", a.kb, kElementBytes, elem_why);
    require_strides("qb", a.qb_stride, true);
    require_strides("kb", a.kb_stride, true);
    max_offset("qb", {{a.batch, a.qb_stride.batch}, {a.seqlen_q, a.qb_stride.seq}, {a.heads, a.qb_stride.head}, {a.rank, 1}});
    max_offset("kb", {{a.batch, a.kb_stride.batch}, {a.seqlen_k, a.kb_stride.seq}, {a.heads, a.kb_stride.head}, {a.rank, 1}});
    std::uint8_t b = kBroadcastNone;
    if (a.qb_stride.batch == 0) b |= kQbBatch;
    if (a.qb_stride.head == 0) b |= kQbHead;
    if (a.kb_stride.batch == 0) b |= kKbBatch;
    if (a.kb_stride.head == 0) b |= kKbHead;
    key.broadcast = b;
    key.bias_align = alignment_class({address(a.qb), address(a.kb), bytes(a.rank), bytes(a.qb_stride.batch),
                                      bytes(a.qb_stride.seq), bytes(a.qb_stride.head), bytes(a.kb_stride.batch),
                                      bytes(a.kb_stride.seq), bytes(a.kb_stride.head)});
  }
  // Every value above is a multiple of the 2-byte element size, so both classes are >= 2.
  return key;
}

}  // namespace

ProblemKey validate_forward(const ForwardArgs& a, const DeviceInfo& device) {
  ProblemKey key = forward_key(a, device);
  // The Hopper forward for fp16 with a bias scores with the scaled Q (folds_scale_into_q,
  // templates/common/params.h). A scale it cannot fold (|scale| outside [2^-6, 1]) runs the
  // portable family on the same GPU (an sm_90 key, as ContextOptions::portable gives), which
  // applies the scale to the scores.
  if (forward_scale_needs_portable(key, a.softmax_scale)) key.arch.a = false;
  return key;
}

namespace {

struct NamedPointer {
  const char* name;
  const void* ptr;
};

void check_pointers(std::initializer_list<NamedPointer> pointers, const DeviceInfo& device) {
  const driver::Api& d = driver::api();
  for (const NamedPointer& p : pointers) {
    if (p.ptr == nullptr) continue;
    // One cuPointerGetAttributes call per pointer: unlike cuPointerGetAttribute it reports a
    // pointer CUDA does not know (pageable host memory) as memory type 0 instead of failing.
    unsigned int memory_type = 0;
    int ordinal = -1;
    unsigned int managed = 0;  // the driver writes a bool; zero-initialised wider storage reads the same
    CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                   CU_POINTER_ATTRIBUTE_IS_MANAGED};
    void* data[] = {&memory_type, &ordinal, &managed};
    driver::check(d.cuPointerGetAttributes(3, attrs, data, reinterpret_cast<CUdeviceptr>(p.ptr)),
                  "cuPointerGetAttributes");
    if (managed != 0) continue;
    if (memory_type == 0) {
      fail(ErrorCode::invalid_argument,
           fmt::format("{} ({:#x}) is not memory allocated through CUDA (a host pointer?); pass device memory, or "
                       "turn off ContextOptions::check_pointers for system-allocated memory on HMM/ATS systems",
                       p.name, address(p.ptr)));
    }
    if (memory_type == CU_MEMORYTYPE_HOST) {
      fail(ErrorCode::invalid_argument,
           fmt::format("{} ({:#x}) points to pinned host memory; pass device memory", p.name, address(p.ptr)));
    }
    if (memory_type != CU_MEMORYTYPE_DEVICE) {
      fail(ErrorCode::invalid_argument, fmt::format("{} ({:#x}) is not device memory (CUDA memory type {})", p.name,
                                                    address(p.ptr), memory_type));
    }
    if (ordinal != device.ordinal) {
      fail(ErrorCode::invalid_argument,
           fmt::format("{} ({:#x}) is memory of device {}, but this Context runs on device {}", p.name,
                       address(p.ptr), ordinal, device.ordinal));
    }
  }
}

}  // namespace

ProblemKey validate_backward(const BackwardArgs& a, const DeviceInfo& device) {
  if (static_cast<int>(a.mode) != static_cast<int>(BackwardMode::deterministic)) {
    fail(ErrorCode::invalid_argument,
         fmt::format("mode has the invalid value {} (deterministic = 0)", static_cast<int>(a.mode)));
  }
  // The forward's rules for everything the two calls share.
  ForwardArgs f;
  f.dtype = a.dtype;
  f.batch = a.batch;
  f.heads = a.heads;
  f.seqlen_q = a.seqlen_q;
  f.seqlen_k = a.seqlen_k;
  f.head_dim = a.head_dim;
  f.rank = a.rank;
  f.q = a.q, f.q_stride = a.q_stride;
  f.k = a.k, f.k_stride = a.k_stride;
  f.v = a.v, f.v_stride = a.v_stride;
  f.qb = a.qb, f.qb_stride = a.qb_stride;
  f.kb = a.kb, f.kb_stride = a.kb_stride;
  // o is read here, never written; validate_forward's no-overlap rule for it is harmless.
  f.o = const_cast<void*>(a.o), f.o_stride = a.o_stride;
  f.lse = const_cast<float*>(a.lse);
  f.softmax_scale = a.softmax_scale;
  f.mask = a.mask;
  // The backward scores with the exact scale in both families, whatever the scale.
  ProblemKey key = forward_key(f, device);
  key.direction = Direction::bwd;

  if (a.lse == nullptr) {
    fail(ErrorCode::invalid_argument,
         "lse is null; the backward needs the forward's log-sum-exp [batch, heads, seqlen_q] (pass ForwardArgs::lse "
         "to forward())");
  }
  const std::string_view elem_why = "the element size of f16/bf16";
  struct Tensor {
    const char* name;
    const void* ptr;
    const Strides& stride;
    std::int64_t seq;
  };
  const Tensor dense[] = {{"dout", a.dout, a.dout_stride, a.seqlen_q},
                          {"dq", a.dq, a.dq_stride, a.seqlen_q},
                          {"dk", a.dk, a.dk_stride, a.seqlen_k},
                          {"dv", a.dv, a.dv_stride, a.seqlen_k}};
  for (const Tensor& t : dense) {
    require_pointer(t.name, t.ptr, kElementBytes, elem_why);
    require_strides(t.name, t.stride, false);
    max_offset(t.name, {{a.batch, t.stride.batch}, {t.seq, t.stride.seq}, {a.heads, t.stride.head}, {a.head_dim, 1}});
    if (std::string_view(t.name) != "dout") require_no_overlap(t.name, a.batch, t.seq, a.heads, a.head_dim, t.stride);
  }
  auto bytes = [](std::int64_t elements) { return static_cast<std::uint64_t>(elements) * kElementBytes; };
  key.qkv_align = std::min(
      key.qkv_align,
      alignment_class({address(a.dout), address(a.dq), address(a.dk), address(a.dv), bytes(a.dout_stride.batch),
                       bytes(a.dout_stride.seq), bytes(a.dout_stride.head), bytes(a.dq_stride.batch),
                       bytes(a.dq_stride.seq), bytes(a.dq_stride.head), bytes(a.dk_stride.batch),
                       bytes(a.dk_stride.seq), bytes(a.dk_stride.head), bytes(a.dv_stride.batch),
                       bytes(a.dv_stride.seq), bytes(a.dv_stride.head)}));
  if (a.rank > 0) {
    // The factor gradients have the factors' own shape: one slice where they broadcast.
    const std::int64_t qB = a.qb_stride.batch == 0 ? 1 : a.batch, qH = a.qb_stride.head == 0 ? 1 : a.heads;
    const std::int64_t kB = a.kb_stride.batch == 0 ? 1 : a.batch, kH = a.kb_stride.head == 0 ? 1 : a.heads;
    const Strides dqb{qB == 1 ? 0 : a.dqb_stride.batch, a.dqb_stride.seq, qH == 1 ? 0 : a.dqb_stride.head};
    const Strides dkb{kB == 1 ? 0 : a.dkb_stride.batch, a.dkb_stride.seq, kH == 1 ? 0 : a.dkb_stride.head};
    require_pointer("dqb", a.dqb, kElementBytes, elem_why);
    require_pointer("dkb", a.dkb, kElementBytes, elem_why);
    require_strides("dqb", dqb, true);
    require_strides("dkb", dkb, true);
    if (qB > 1 && dqb.batch == 0) fail(ErrorCode::invalid_argument, "dqb_stride.batch is 0, but qb does not broadcast over batch");
    if (qH > 1 && dqb.head == 0) fail(ErrorCode::invalid_argument, "dqb_stride.head is 0, but qb does not broadcast over heads");
    if (kB > 1 && dkb.batch == 0) fail(ErrorCode::invalid_argument, "dkb_stride.batch is 0, but kb does not broadcast over batch");
    if (kH > 1 && dkb.head == 0) fail(ErrorCode::invalid_argument, "dkb_stride.head is 0, but kb does not broadcast over heads");
    max_offset("dqb", {{qB, dqb.batch}, {a.seqlen_q, dqb.seq}, {qH, dqb.head}, {a.rank, 1}});
    max_offset("dkb", {{kB, dkb.batch}, {a.seqlen_k, dkb.seq}, {kH, dkb.head}, {a.rank, 1}});
    require_no_overlap("dqb", qB, a.seqlen_q, qH, a.rank, dqb);
    require_no_overlap("dkb", kB, a.seqlen_k, kH, a.rank, dkb);
    key.bias_align = std::min(key.bias_align,
                              alignment_class({address(a.dqb), address(a.dkb), bytes(dqb.batch), bytes(dqb.seq),
                                               bytes(dqb.head), bytes(dkb.batch), bytes(dkb.seq), bytes(dkb.head)}));
  }
  if (a.workspace != nullptr && address(a.workspace) % 16 != 0) {
    fail(ErrorCode::invalid_argument,
         fmt::format("workspace ({:#x}) is not aligned to 16 bytes", address(a.workspace)));
  }
  return key;
}

void check_device_pointers(const ForwardArgs& a, const DeviceInfo& device) {
  const bool bias = a.rank > 0;
  check_pointers({{"q", a.q}, {"k", a.k}, {"v", a.v}, {"o", a.o}, {"qb", bias ? a.qb : nullptr},
                  {"kb", bias ? a.kb : nullptr}, {"lse", a.lse}},
                 device);
}

void check_device_pointers(const BackwardArgs& a, const DeviceInfo& device) {
  const bool bias = a.rank > 0;
  check_pointers({{"q", a.q}, {"k", a.k}, {"v", a.v}, {"o", a.o}, {"dout", a.dout}, {"lse", a.lse},
                  {"qb", bias ? a.qb : nullptr}, {"kb", bias ? a.kb : nullptr}, {"dq", a.dq}, {"dk", a.dk},
                  {"dv", a.dv}, {"dqb", bias ? a.dqb : nullptr}, {"dkb", bias ? a.dkb : nullptr},
                  {"workspace", a.workspace}},
                 device);
}

}  // namespace flashbias
