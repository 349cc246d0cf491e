// validate_backward, the backward workspace layout and BwdParams filling: pure, no driver.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>

#include "generator/kernel_source.h"
#include "runtime/launch_plan.h"
#include "runtime/validate.h"

namespace flashbias {
namespace {

void* fake(std::uintptr_t address) { return reinterpret_cast<void*>(address); }

DeviceInfo hopper() {
  DeviceInfo d;
  d.ordinal = 0;
  d.name = "test device";
  d.arch = Arch{90, true};
  d.max_smem_per_block_optin = 227 * 1024;
  return d;
}

// A valid backward with a rank-5 bias whose Qb is shared over batch and heads.
BackwardArgs valid_args() {
  BackwardArgs a;
  a.batch = 2;
  a.heads = 3;
  a.seqlen_q = 17;
  a.seqlen_k = 113;
  a.head_dim = 64;
  a.rank = 6;
  a.q = fake(0x100000);
  a.k = fake(0x200000);
  a.v = fake(0x300000);
  a.o = fake(0x400000);
  a.qb = fake(0x500000);
  a.kb = fake(0x600000);
  a.dout = fake(0x700000);
  a.lse = static_cast<const float*>(fake(0x800000));
  a.dq = fake(0x900000);
  a.dk = fake(0xa00000);
  a.dv = fake(0xb00000);
  a.dqb = fake(0xc00000);
  a.dkb = fake(0xd00000);
  a.q_stride = a.o_stride = a.dout_stride = a.dq_stride = bshd_strides(a.seqlen_q, a.heads, a.head_dim);
  a.k_stride = a.v_stride = a.dk_stride = a.dv_stride = bshd_strides(a.seqlen_k, a.heads, a.head_dim);
  a.qb_stride = Strides{0, a.rank, 0};  // [1, Nq, 1, R]
  a.dqb_stride = Strides{a.seqlen_q * a.rank, a.rank, a.rank};
  a.kb_stride = a.dkb_stride = bshd_strides(a.seqlen_k, a.heads, a.rank);
  return a;
}

void expect_error(const BackwardArgs& a, ErrorCode code, std::initializer_list<std::string> fragments) {
  try {
    validate_backward(a, hopper());
    FAIL("validate_backward accepted the arguments; expected " << to_string(code));
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(e.code() == code);
    for (const std::string& f : fragments) CHECK_THAT(e.what(), Catch::Matchers::Contains(f));
  }
}

}  // namespace

TEST_CASE("validate_backward accepts a valid problem and derives a bwd key", "[cpu][runtime][validate][backward]") {
  const ProblemKey k = validate_backward(valid_args(), hopper());
  CHECK(k.direction == Direction::bwd);
  CHECK(k.head_dim == 64);
  CHECK(k.rank == 6);
  CHECK(k.broadcast == (kQbBatch | kQbHead));
  CHECK(k.qkv_align == 16);
  CHECK(k.bias_align == 4);  // rows of 6 elements: 12 bytes
  CHECK(k.arch.name() == "sm_90a");
  // The forward of an fp16 bias with a scale that does not fold into Q runs the portable family;
  // the backward scores with the exact scale in both families and keeps the device's.
  BackwardArgs a = valid_args();
  a.softmax_scale = 3.f;
  CHECK(validate_backward(a, hopper()).arch.name() == "sm_90a");
}

TEST_CASE("validate_backward names every bad argument", "[cpu][runtime][validate][backward]") {
  BackwardArgs a = valid_args();
  a.lse = nullptr;
  expect_error(a, ErrorCode::invalid_argument, {"lse is null"});
  a = valid_args();
  a.dout = nullptr;
  expect_error(a, ErrorCode::invalid_argument, {"dout is null"});
  a = valid_args();
  a.dk = fake(0xa00001);
  expect_error(a, ErrorCode::invalid_argument, {"dk", "not aligned to 2 bytes"});
  a = valid_args();
  a.dkb = nullptr;
  expect_error(a, ErrorCode::invalid_argument, {"dkb is null"});
  a = valid_args();
  a.dv_stride.seq = 0;
  expect_error(a, ErrorCode::invalid_argument, {"dv_stride.seq is 0"});
  a = valid_args();
  a.dq_stride = Strides{a.seqlen_q * a.heads * a.head_dim, a.heads * a.head_dim, 8};  // heads overlap within a row
  expect_error(a, ErrorCode::invalid_argument, {"dq strides", "overlap"});
  a = valid_args();
  a.dkb_stride.batch = 0;  // kb is not shared over batch: its gradient needs a batch stride
  expect_error(a, ErrorCode::invalid_argument, {"dkb_stride.batch is 0", "does not broadcast"});
  a = valid_args();
  a.mode = static_cast<BackwardMode>(7);
  expect_error(a, ErrorCode::invalid_argument, {"mode", "7"});
  a = valid_args();
  a.workspace = fake(0xe00008);
  expect_error(a, ErrorCode::invalid_argument, {"workspace", "16 bytes"});
  a = valid_args();
  a.head_dim = 100;  // the forward's rules apply too
  expect_error(a, ErrorCode::unsupported, {"head_dim = 100"});
  // A broadcast dimension's gradient stride is ignored: any value passes.
  a = valid_args();
  a.dqb_stride.batch = 0;
  a.dqb_stride.head = 12345;
  CHECK_NOTHROW(validate_backward(a, hopper()));
}

TEST_CASE("the backward workspace holds both Deltas, the corrected LSE and the fp32 sums of broadcast factors",
          "[cpu][runtime][backward]") {
  BackwardArgs a = valid_args();
  BwdWorkspaceLayout w = bwd_workspace_layout(a, /*sm90_family=*/false);
  CHECK_FALSE(w.has_q_scaled);
  CHECK(w.delta == 0);
  CHECK(w.delta_dq == 512);  // 2*3*17 floats = 408 bytes, rounded to 256
  CHECK(w.lse_dq == 1024);
  CHECK(w.has_dqb_accum);
  CHECK_FALSE(w.has_dkb_accum);
  CHECK(w.dqb_accum == 1536);
  CHECK(w.bytes == 1536 + 2 * 3 * 17 * 6 * 4 + (256 - (2 * 3 * 17 * 6 * 4) % 256));
  a.kb_stride.head = 0;
  w = bwd_workspace_layout(a, false);
  CHECK(w.has_dkb_accum);
  CHECK(w.dkb_accum % 256 == 0);
  CHECK(w.bytes >= w.dkb_accum + std::size_t(2 * 3 * 113 * 6 * 4));
  a.rank = 0;
  w = bwd_workspace_layout(a, false);
  CHECK_FALSE(w.has_dqb_accum);
  CHECK(w.bytes == 1536);
}

TEST_CASE("the sm90 backward's workspace holds the scaled Q when the scale folds (fp16 with a bias)",
          "[cpu][runtime][backward]") {
  BackwardArgs a = valid_args();  // fp16, rank 6, scale 1/8
  CHECK_FALSE(bwd_workspace_layout(a).has_q_scaled);  // 113 keys: the copy would not pay
  a.seqlen_k = 1024;
  const BwdWorkspaceLayout portable = bwd_workspace_layout(a, false);
  BwdWorkspaceLayout w = bwd_workspace_layout(a);
  REQUIRE(w.has_q_scaled);
  CHECK(w.q_scaled == portable.bytes);  // after every other region, 256-byte aligned
  CHECK(w.q_scaled % 256 == 0);
  CHECK(w.bytes == w.q_scaled + std::size_t(2 * 3 * 17 * 64 * 2));  // [B, H, Nq, D] 16-bit, 13056 bytes
  // The same cases as folds_scale_into_q (common/params.h): no bias, bf16 or a scale outside
  // [2^-6, 1] in magnitude keep the exact scale and need no copy.
  BackwardArgs b = a;
  b.dtype = DType::bf16;
  CHECK_FALSE(bwd_workspace_layout(b).has_q_scaled);
  b = a;
  b.softmax_scale = 2.f;
  CHECK_FALSE(bwd_workspace_layout(b).has_q_scaled);
  b.softmax_scale = -0.5f;
  CHECK(bwd_workspace_layout(b).has_q_scaled);
  b = a;
  b.rank = 0;
  CHECK_FALSE(bwd_workspace_layout(b).has_q_scaled);
}

TEST_CASE("make_bwd_params fills BwdParams and zeroes broadcast gradient strides", "[cpu][runtime][backward]") {
  BackwardArgs a = valid_args();
  a.dqb_stride.head = 999;  // ignored: qb is shared over heads
  TileConfig t = TileConfig::parse("bm=64,bn=32,w=2,s=1,split=2");
  ProblemKey k = validate_backward(a, hopper());
  k.arch.a = false;  // the portable family: its split knob makes slices (the sm90 family has one)
  CHECK(bwd_slices(k, t) == 3);
  char* ws = static_cast<char*>(fake(0xf00000));
  const BwdParams p = make_bwd_params(a, t, bwd_slices(k, t), ws, bwd_workspace_layout(a));
  CHECK(p.delta == reinterpret_cast<float*>(ws));
  CHECK(p.delta_dq == reinterpret_cast<float*>(ws + 512));
  CHECK(p.lse_dq == reinterpret_cast<float*>(ws + 1024));
  CHECK(p.dqb_accum == reinterpret_cast<float*>(ws + 1536));
  CHECK(p.dkb_accum == nullptr);
  CHECK(p.qb_batch_bcast == 1);
  CHECK(p.qb_head_bcast == 1);
  CHECK(p.kb_batch_bcast == 0);
  CHECK(p.dqb_batch_stride == 0);
  CHECK(p.dqb_head_stride == 0);
  CHECK(p.dkb_row_stride == a.dkb_stride.seq);
  CHECK(p.do_row_stride == a.dout_stride.seq);
  CHECK(p.num_m_blocks == 1);
  CHECK(p.num_n_blocks == 4);
  CHECK(p.num_slices == 3);
  CHECK(p.scale == Approx(0.125));
}

TEST_CASE("the factor gradients take the residual of the 16-bit dS on bf16 and on rows under 64", "[cpu][runtime][backward]") {
  // docs/PERF_NOTES.md, sm90 step 23: fp16 problems of 64 or more queries and keys do without it.
  BackwardArgs a = valid_args();
  a.seqlen_q = 64;
  a.seqlen_k = 64;
  CHECK_FALSE(factor_grads_need_lo(a));
  a.seqlen_q = 63;
  CHECK(factor_grads_need_lo(a));
  a.seqlen_q = 4096;
  a.seqlen_k = 3;
  CHECK(factor_grads_need_lo(a));
  a.seqlen_k = 4096;
  CHECK_FALSE(factor_grads_need_lo(a));
  a.dtype = DType::bf16;
  CHECK(factor_grads_need_lo(a));
  a.dtype = DType::f16;
  a.rank = 0;
  CHECK_FALSE(factor_grads_need_lo(a));  // no factor gradients at all
}

}  // namespace flashbias
