// ProblemSpec: one concrete attention problem (sizes, dtype, mask, scale, factor layouts), and the
// problem-string syntax that every CLI subcommand, test and preset uses to name one.
//
// Problem strings are comma-separated key=value items, in any order, e.g.
//
//     b=2,h=4,nq=1000,nk=777,d=64,r=3,mask=causal,dtype=bf16
//     n=4096,d=32,r=8,qb=1n1r,kb=bn1r,scale=0.125
//
//   key    meaning                                  allowed values            default
//   b      batch                                    integer in [1, 2^31-1]    1
//   h      heads                                    integer in [1, 2^31-1]    1
//   nq     query rows (seqlen_q)                    integer in [1, 2^31-1]    required (or n)
//   nk     key rows (seqlen_k)                      integer in [1, 2^31-1]    required (or n)
//   n      sets nq and nk to one value; not together with nq or nk
//   d      head dim                                 multiple of 8 in [8, 256] required
//   r      bias rank (0: plain attention)           integer in [0, 128]       0
//   mask   mask kind                                none | causal             none
//   dtype  Q, K, V, Qb, Kb and O element type       what parse_dtype takes    f16
//   scale  softmax scale, applied to Q K^T only     finite number (fp32)      1/sqrt(d)
//   qb     Qb factor layout (needs r >= 1)          bnhr | 1nhr | bn1r | 1n1r bnhr
//   kb     Kb factor layout (needs r >= 1)          bnhr | 1nhr | bn1r | 1n1r bnhr
//
// A factor layout spells the factor's shape with '1' where the tensor is shared (stride 0):
// bnhr = [B, N, H, R] (one factor per batch and head), 1nhr = [1, N, H, R] (shared over batch),
// bn1r = [B, N, 1, R] (shared over heads), 1n1r = [1, N, 1, R] (shared over both). These are the
// (1,N,1,R), (B,N,1,R), ... shapes of the paper's API. Keys are lowercase; whitespace around items
// is ignored. Every malformed string throws Error(invalid_argument) naming the key, the bad value
// and what is allowed. to_string(spec) gives the canonical form, and parse_problem(to_string(s)) == s.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flashbias/flashbias.hpp"
#include "generator/problem_key.h"

namespace flashbias {

/// Which dimensions of a bias factor are shared (stride 0) rather than stored per batch / head.
struct FactorLayout {
  bool batch_shared = false;  ///< one factor for all batches: shape [1, N, H?, R]
  bool head_shared = false;   ///< one factor for all heads: shape [B?, N, 1, R]

  bool operator==(const FactorLayout&) const = default;
  /// The layout's spelling in problem strings: "bnhr", "1nhr", "bn1r" or "1n1r".
  std::string str() const;
};

/// A concrete problem: everything needed to allocate inputs, run a kernel and check it.
/// Field limits are the ones listed at the top of this header; validate() enforces them.
struct ProblemSpec {
  DType dtype = DType::f16;
  std::int64_t batch = 1;
  std::int64_t heads = 1;
  std::int64_t seqlen_q = 0;
  std::int64_t seqlen_k = 0;
  std::int64_t head_dim = 0;
  std::int64_t rank = 0;  ///< 0: plain attention, no factors
  MaskKind mask = MaskKind::none;
  /// fp32, like ForwardArgs::softmax_scale, so a reference uses exactly the value a kernel gets.
  std::optional<float> softmax_scale;
  FactorLayout qb_layout;
  FactorLayout kb_layout;

  bool operator==(const ProblemSpec&) const = default;

  /// The scale actually applied: softmax_scale, else 1/sqrt(head_dim) rounded once to fp32.
  float scale() const;
  /// The factor layouts as ProblemKey::broadcast bits (kQbBatch | kQbHead | kKbBatch | kKbHead);
  /// 0 when rank == 0, since then there are no factors to share.
  std::uint8_t broadcast_bits() const;
  /// Number of keys query row `row` attends to: seqlen_k without a mask; with the bottom-right
  /// causal mask, clamp(row + (seqlen_k - seqlen_q) + 1, 0, seqlen_k). 0 means a fully masked row.
  std::int64_t visible_keys(std::int64_t row) const;
  /// Sum of visible_keys over all rows of one (batch, head): the unmasked (query, key) pairs.
  double visible_pairs() const;
  /// Forward FLOPs by the BENCH.md convention, 4 * B * H * pairs * D (two matmuls of 2 flops per
  /// multiply-add, over the unmasked pairs; the bias's 2R per pair is not counted, so a bias kernel
  /// is measured against the same work as plain attention).
  double forward_flops() const;
  /// Backward FLOPs by the same convention: five matmuls instead of two, 10 * B * H * pairs * D.
  double backward_flops() const;
};

/// The ProblemKey of `spec` on `arch` when its tensors are laid out densely (BSHD, factors as the
/// spec's layouts say) in allocations aligned to 16 bytes, as every CUDA allocator gives: the
/// alignment classes follow from the row lengths alone (head_dim * 2 and rank * 2 bytes). What
/// `flashbias gen`, bundle export and the default variant set use when no tensor exists yet. An
/// fp16 bias with a scale the Hopper kernels cannot fold into Q gets the portable family's sm_90
/// key, as validate_forward gives it.
ProblemKey dense_problem_key(const ProblemSpec& spec, const Arch& arch);

/// Throw Error(invalid_argument) if a field is outside the limits listed at the top of this
/// header; the message names the field, its value and the allowed range. parse_problem calls it;
/// call it on a spec built by hand.
void validate(const ProblemSpec& spec);

/// Parse a problem string (syntax at the top of this header). Throws Error(invalid_argument) on an
/// unknown, duplicate or missing key, a value that is not a number, or a value out of range.
ProblemSpec parse_problem(std::string_view text);

/// The canonical problem string: b, h, n (or nq and nk when they differ), d, r, mask, dtype, then
/// scale, qb and kb only when they differ from the defaults. Round-trips through parse_problem.
std::string to_string(const ProblemSpec& spec);

/// A problem with a stable name, for benchmark tables and the demo.
struct NamedProblem {
  std::string name;         ///< e.g. "llm_d128_causal"
  ProblemSpec spec;
  std::string description;  ///< what the shape stands for, one line
};

/// The seven cases of BENCH.md, with its shapes and dtype (fp16, full [B, N, H, R] factors).
const std::vector<NamedProblem>& bench_presets();

/// The same seven cases (same names, D, R, mask and dtype, so the same kernels) with batch and
/// sequence lengths scaled down so that the whole demo, host-side input generation and an fp64
/// check of a sample of rows included, finishes in well under a minute on a GPU machine.
const std::vector<NamedProblem>& demo_presets();

/// The preset called `name` in `presets`, or nullptr.
const NamedProblem* find_preset(const std::vector<NamedProblem>& presets, std::string_view name);

}  // namespace flashbias
