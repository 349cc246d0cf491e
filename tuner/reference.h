// The fp64 CPU reference every kernel is checked against, the "plain low-precision" baseline
// that sets the bf16/fp16 tolerance, and the comparisons between them and kernel outputs.
//
//   O = softmax(scale * Q K^T + Qb Kb^T + mask) V,   LSE_i = log sum_j exp(S_ij)   (natural log)
//
// Semantics (the ones flashbias.hpp states): the scale multiplies Q K^T only, the bias enters
// unscaled; causal is bottom-right aligned (query i sees key j iff j <= i + (Nk - Nq)); a row that
// sees no key gives O = 0 and LSE = -inf (and zero gradients).
//
// Cost: the forward is B*H*rows*Nk*(2D+R) multiply-adds; pass a sample of rows (sample_rows) for
// large problems. The backward needs every row (dK, dV sum over them), B*H*Nq*Nk*(6D+3R): meant for
// test-sized problems. Both spread over threads and give bitwise identical results for any thread count.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "generator/problem_spec.h"
#include "tuner/host_tensor.h"

namespace flashbias {

/// Every query row, 0 .. Nq-1.
std::vector<std::int64_t> all_rows(const ProblemSpec& spec);

/// At most `max_rows` query rows (all of them if Nq <= max_rows): the first and last rows, rows
/// evenly spaced between, and, under a causal mask with Nq > Nk, the last fully masked row and the
/// first row that sees a key, where an off-by-one in the mask shows. Ascending, no duplicates.
std::vector<std::int64_t> sample_rows(const ProblemSpec& spec, std::int64_t max_rows);

/// Forward results for a subset of query rows.
struct ForwardResult {
  std::vector<std::int64_t> rows;  ///< the query rows computed, ascending
  RefTensor o;                     ///< [B, rows.size(), H, D]: row r of the result is query row rows[r]
  std::vector<double> lse;         ///< [B, H, rows.size()], natural log; -inf for a fully masked row

  double lse_at(std::int64_t b, std::int64_t h, std::int64_t r) const {
    return lse[static_cast<std::size_t>((b * o.shape.h + h) * o.shape.n + r)];
  }
};

/// fp64 inputs, for references that must not round (finite-difference checks, hand-made cases).
/// q, k, v are [B, N, H, D]; qb and kb are in their factors' stored shapes: extent 1 on a dimension
/// the spec's layout shares. Empty qb/kb when R = 0.
struct RefInputs {
  RefTensor q, k, v, qb, kb;
};

/// The exact values of 16-bit inputs, widened to fp64 (shared factor dims stay extent 1).
RefInputs widen(const AttentionInputs& in);

/// fp64 forward of `rows` (ascending, unique, each in [0, Nq)). Throws Error(invalid_argument)
/// if the inputs' shapes, dtype or layouts disagree with `spec`, or the rows are malformed.
/// `threads` = 0 uses every hardware thread.
ForwardResult reference_forward(const ProblemSpec& spec, const AttentionInputs& in,
                                std::span<const std::int64_t> rows, unsigned threads = 0);
ForwardResult reference_forward(const ProblemSpec& spec, const RefInputs& in,
                                std::span<const std::int64_t> rows, unsigned threads = 0);

/// A plain low-precision implementation of the same forward, the baseline of BENCH.md's tolerance
/// rule ("twice the error of a plain bf16 implementation"). Defined as what a single-pass fused
/// kernel does with no tiling: S = scale * (Q K^T) + Qb Kb^T with products accumulated in fp32;
/// softmax in fp32 (row max, p = exp(S - max), l = sum of the unrounded p); P rounded to the input
/// dtype before the P V matmul, accumulated in fp32; O = (P V) / l rounded to the dtype;
/// LSE = max + log(l) in fp32. S itself stays fp32 (FlashAttention's test reference also rounds
/// S to the dtype, a looser baseline; this one is the stricter of the two).
ForwardResult lowp_forward(const ProblemSpec& spec, const AttentionInputs& in,
                           std::span<const std::int64_t> rows, unsigned threads = 0);

/// Gradients of sum(O * dO) with respect to every input, in fp64.
struct BackwardResult {
  ForwardResult forward;   ///< O and LSE of every row, as computed on the way
  RefTensor dq, dk, dv;    ///< [B, Nq, H, D], [B, Nk, H, D], [B, Nk, H, D]
  RefTensor dqb, dkb;      ///< in the factors' stored shapes: summed over the dimensions they share; empty when R = 0
};

/// fp64 backward:  P = softmax(S),  dP = dO V^T,  Delta_i = sum_d dO_id O_id,  dS = P * (dP - Delta),
/// dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO,  dQb = dS Kb,  dKb = dS^T Qb,
/// with masked entries of P (and so of dS) zero. A factor shared over batch and/or heads gets the
/// sum of its per-(batch, head) gradients, reduced in a fixed order. `dout` is [B, Nq, H, D].
BackwardResult reference_backward(const ProblemSpec& spec, const AttentionInputs& in, const HostTensor& dout,
                                  unsigned threads = 0);
BackwardResult reference_backward(const ProblemSpec& spec, const RefInputs& in, const RefTensor& dout,
                                  unsigned threads = 0);

/// The plain low-precision backward (the bf16/fp16 gradient tolerance's baseline): the forward of
/// lowp_forward (O rounded, LSE in fp32), then fp32 P, dP, Delta (from the rounded O) and dS; P
/// and dS rounded to the dtype before each gradient product, accumulated in fp32; gradients
/// rounded to the dtype. A shared factor's gradient is summed in fp32 and then rounded.
BackwardResult lowp_backward(const ProblemSpec& spec, const AttentionInputs& in, const HostTensor& dout,
                             unsigned threads = 0);

/// How far an output is from a reference.
struct Comparison {
  std::string name;           ///< what was compared ("O", "LSE", "dQb", ...)
  double rel_l2 = 0;          ///< ||got - ref||_2 / ||ref||_2 over the elements both have finite (absolute when ||ref|| = 0)
  double max_abs = 0;         ///< largest |got - ref| over the same elements
  std::int64_t compared = 0;  ///< elements compared
  /// Elements that cannot be right: NaN (unwritten, poisoned outputs included), an infinity where
  /// the reference is finite, or a finite value where it is infinite (a fully masked row's LSE).
  std::int64_t bad = 0;
  std::string first_bad;  ///< where the first bad element is and what it holds, "" if none

  /// No bad elements and rel_l2 <= tol.
  bool ok(double tol) const { return bad == 0 && rel_l2 <= tol; }
  /// One line: "O: rel_l2 1.2e-04, max_abs 3.1e-03 over 4096 values" plus the bad elements, if any.
  std::string str() const;
};

/// Kernel output O ([B, Nq, H, D], any layout) against a forward result, on the result's rows.
Comparison compare_rows(const ForwardResult& ref, const HostTensor& got_o, std::string_view name = "O");
/// Kernel LSE (fp32, contiguous [B, H, Nq]) against a forward result, on the result's rows.
/// -inf matches -inf; rel_l2 and max_abs cover the finite entries.
Comparison compare_lse(const ForwardResult& ref, std::span<const float> got_lse, std::string_view name = "LSE");
/// Two results over the same rows (e.g. lowp_forward against reference_forward).
Comparison compare(const ForwardResult& ref, const ForwardResult& got, std::string_view name = "O");
/// Whole tensors of the same logical shape: a gradient in the dtype (HostTensor), in fp32
/// (contiguous [B, N, H, X] span), or in fp64.
Comparison compare(const RefTensor& ref, const HostTensor& got, std::string_view name);
Comparison compare(const RefTensor& ref, std::span<const float> got, std::string_view name);
Comparison compare(const RefTensor& ref, const RefTensor& got, std::string_view name);

/// Throw Error(internal) with c.first_bad if the output holds NaN, a stray infinity or poison:
/// such an output must fail loudly, never slip through as a large but finite error.
const Comparison& require_finite(const Comparison& c);

/// Relative L2 error of O on the result's rows; throws (require_finite) on NaN/Inf in the output.
double rel_l2(const ForwardResult& ref, const HostTensor& got_o);
/// Relative L2 error of a whole tensor; throws (require_finite) on NaN/Inf in the output.
double rel_l2(const RefTensor& ref, const HostTensor& got);

/// BENCH.md's tolerance: max(floor, 2 * rel_l2(lowp O vs fp64 O)), both on the same rows.
double lowp_tolerance(const ForwardResult& ref, const ForwardResult& lowp, double floor = 2e-3);

}  // namespace flashbias
