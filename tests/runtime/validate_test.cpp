// validate_forward, alignment classes and FwdParams filling: all pure, no driver.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "generator/knobs.h"
#include "runtime/launch_plan.h"
#include "runtime/validate.h"

namespace flashbias {
namespace {

const void* fake(std::uintptr_t address) { return reinterpret_cast<const void*>(address); }

DeviceInfo hopper() {
  DeviceInfo d;
  d.ordinal = 0;
  d.name = "test device";
  d.arch = Arch{90, true};
  d.max_smem_per_block_optin = 227 * 1024;
  return d;
}

// A valid BSHD problem with a rank-4 bias; fake pointers 256-byte aligned (never dereferenced).
ForwardArgs valid_args() {
  ForwardArgs a;
  a.batch = 2;
  a.heads = 3;
  a.seqlen_q = 17;
  a.seqlen_k = 113;
  a.head_dim = 64;
  a.rank = 8;
  a.q = fake(0x100000);
  a.k = fake(0x200000);
  a.v = fake(0x300000);
  a.o = const_cast<void*>(fake(0x400000));
  a.qb = fake(0x500000);
  a.kb = fake(0x600000);
  a.q_stride = a.o_stride = bshd_strides(a.seqlen_q, a.heads, a.head_dim);
  a.k_stride = a.v_stride = bshd_strides(a.seqlen_k, a.heads, a.head_dim);
  a.qb_stride = bshd_strides(a.seqlen_q, a.heads, a.rank);
  a.kb_stride = bshd_strides(a.seqlen_k, a.heads, a.rank);
  return a;
}

// The call must throw Error(code) whose message contains every fragment.
void expect_error(const ForwardArgs& a, ErrorCode code, std::initializer_list<std::string> fragments,
                  const DeviceInfo& device = hopper()) {
  try {
    validate_forward(a, device);
    FAIL("validate_forward accepted the arguments; expected " << to_string(code));
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(e.code() == code);
    for (const std::string& f : fragments) CHECK_THAT(e.what(), Catch::Matchers::Contains(f));
  }
}

}  // namespace

TEST_CASE("validate_forward accepts a valid problem and derives its key", "[cpu][runtime][validate]") {
  const ProblemKey key = validate_forward(valid_args(), hopper());
  CHECK(key.arch == Arch{90, true});
  CHECK(key.dtype == DType::f16);
  CHECK(key.head_dim == 64);
  CHECK(key.rank == 8);
  CHECK(key.mask == MaskKind::none);
  CHECK(key.direction == Direction::fwd);
  CHECK(key.broadcast == kBroadcastNone);
  CHECK(key.qkv_align == 16);
  CHECK(key.bias_align == 16);
}

TEST_CASE("validate_forward rejects bad enums and archs", "[cpu][runtime][validate]") {
  ForwardArgs a = valid_args();
  a.dtype = static_cast<DType>(7);
  expect_error(a, ErrorCode::invalid_argument, {"dtype", "7"});
  a = valid_args();
  a.mask = static_cast<MaskKind>(9);
  expect_error(a, ErrorCode::invalid_argument, {"mask", "9"});
  DeviceInfo turing = hopper();
  turing.arch = Arch{75, false};
  expect_error(valid_args(), ErrorCode::unsupported, {"sm_75", "sm_80"}, turing);
}

TEST_CASE("validate_forward checks sizes and int32 limits", "[cpu][runtime][validate]") {
  for (auto field : {&ForwardArgs::batch, &ForwardArgs::heads, &ForwardArgs::seqlen_q, &ForwardArgs::seqlen_k,
                     &ForwardArgs::head_dim}) {
    for (std::int64_t bad : {std::int64_t{0}, std::int64_t{-3}}) {
      ForwardArgs a = valid_args();
      a.*field = bad;
      expect_error(a, ErrorCode::invalid_argument, {"must be > 0", std::to_string(bad)});
    }
  }
  ForwardArgs a = valid_args();
  a.seqlen_k = std::int64_t{1} << 31;
  expect_error(a, ErrorCode::unsupported, {"seqlen_k", "2147483648", "int32"});
  a = valid_args();
  a.batch = std::int64_t{1} << 40;
  expect_error(a, ErrorCode::unsupported, {"batch", "int32"});
}

TEST_CASE("validate_forward checks head_dim and rank ranges", "[cpu][runtime][validate]") {
  for (std::int64_t d : {12, 4, 264, 512}) {
    ForwardArgs a = valid_args();
    a.head_dim = d;
    expect_error(a, ErrorCode::unsupported, {"head_dim", std::to_string(d), "multiple of 8", "256"});
  }
  ForwardArgs a = valid_args();
  a.rank = -1;
  expect_error(a, ErrorCode::invalid_argument, {"rank", "-1"});
  a.rank = 129;
  expect_error(a, ErrorCode::unsupported, {"rank", "129", "128"});
  a = valid_args();
  a.head_dim = 256;
  a.rank = 128;
  a.q_stride = a.o_stride = bshd_strides(a.seqlen_q, a.heads, a.head_dim);
  a.k_stride = a.v_stride = bshd_strides(a.seqlen_k, a.heads, a.head_dim);
  a.qb_stride = bshd_strides(a.seqlen_q, a.heads, a.rank);
  a.kb_stride = bshd_strides(a.seqlen_k, a.heads, a.rank);
  CHECK_NOTHROW(validate_forward(a, hopper()));
}

TEST_CASE("validate_forward bounds the launch grid", "[cpu][runtime][validate]") {
  ForwardArgs a = valid_args();
  a.seqlen_q = 1 << 20;  // 16384 m-blocks of 64
  a.batch = 1 << 10;
  a.heads = 1 << 8;     // 2^14 * 2^10 * 2^8 = 2^32 CTAs
  expect_error(a, ErrorCode::unsupported, {"grid", "2147483647"});
}

TEST_CASE("validate_forward checks softmax_scale", "[cpu][runtime][validate]") {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    ForwardArgs a = valid_args();
    a.softmax_scale = bad;
    expect_error(a, ErrorCode::invalid_argument, {"softmax_scale", "finite"});
  }
  ForwardArgs a = valid_args();
  a.softmax_scale = -0.5f;
  CHECK_NOTHROW(validate_forward(a, hopper()));
}

TEST_CASE("an fp16 bias with a scale the Hopper kernels cannot fold into Q runs the portable family",
          "[cpu][runtime][validate]") {
  ForwardArgs a = valid_args();  // rank 8, head dim 64: default scale 1/8
  CHECK(validate_forward(a, hopper()).arch.name() == "sm_90a");
  for (float scale : {1.f, -1.f, 0.015625f, -0.3f}) {
    a.softmax_scale = scale;
    INFO("scale " << scale);
    CHECK(validate_forward(a, hopper()).arch.name() == "sm_90a");
  }
  for (float scale : {1.5f, -2.f, 0.01f, 0.f, -1e-3f}) {
    a.softmax_scale = scale;
    INFO("scale " << scale);
    const ProblemKey key = validate_forward(a, hopper());
    CHECK(key.arch.name() == "sm_90");
    CHECK(kernel_family(key) == "sm80");
  }
  // bf16 never folds (its rounding of scale * Q would cost as much as its whole error budget):
  // the Hopper kernels scale its scores, whatever the scale.
  a.dtype = DType::bf16;
  CHECK(validate_forward(a, hopper()).arch.name() == "sm_90a");
  // Without a bias the scale folds into exp2 exactly: every scale keeps the Hopper family.
  a.dtype = DType::f16;
  a.rank = 0;
  a.softmax_scale = 4.f;
  CHECK(validate_forward(a, hopper()).arch.name() == "sm_90a");
}

TEST_CASE("validate_forward checks pointers for null and alignment", "[cpu][runtime][validate]") {
  for (const char* name : {"q", "k", "v", "o", "qb", "kb"}) {
    ForwardArgs a = valid_args();
    const std::string n = name;
    if (n == "q") a.q = nullptr;
    if (n == "k") a.k = nullptr;
    if (n == "v") a.v = nullptr;
    if (n == "o") a.o = nullptr;
    if (n == "qb") a.qb = nullptr;
    if (n == "kb") a.kb = nullptr;
    expect_error(a, ErrorCode::invalid_argument, {n + " is null"});
  }
  ForwardArgs a = valid_args();
  a.rank = 0;
  a.qb = a.kb = nullptr;  // ignored without a bias
  a.qb_stride = a.kb_stride = Strides{-1, -1, -1};
  const ProblemKey key = validate_forward(a, hopper());
  CHECK(key.rank == 0);
  CHECK(key.bias_align == 16);
  CHECK(key.broadcast == kBroadcastNone);

  a = valid_args();
  a.k = fake(0x200001);
  expect_error(a, ErrorCode::invalid_argument, {"k (0x200001)", "aligned to 2 bytes"});
  a = valid_args();
  a.kb = fake(0x600003);
  expect_error(a, ErrorCode::invalid_argument, {"kb (0x600003)", "aligned to 2 bytes"});
  a = valid_args();
  a.lse = reinterpret_cast<float*>(0x700002);
  expect_error(a, ErrorCode::invalid_argument, {"lse", "4 bytes"});
}

TEST_CASE("validate_forward checks strides", "[cpu][runtime][validate]") {
  ForwardArgs a = valid_args();
  a.v_stride.head = -64;
  expect_error(a, ErrorCode::invalid_argument, {"v_stride.head", "-64", "negative"});
  a = valid_args();
  a.q_stride.batch = 0;
  expect_error(a, ErrorCode::invalid_argument, {"q_stride.batch is 0"});
  a = valid_args();
  a.o_stride.head = 0;
  expect_error(a, ErrorCode::invalid_argument, {"o_stride.head is 0"});
  a = valid_args();
  a.qb_stride.seq = 0;
  expect_error(a, ErrorCode::invalid_argument, {"qb_stride.seq is 0"});
  a = valid_args();
  a.kb_stride.batch = -8;
  expect_error(a, ErrorCode::invalid_argument, {"kb_stride.batch", "negative"});
  a = valid_args();
  a.q_stride.batch = std::int64_t{1} << 62;
  expect_error(a, ErrorCode::invalid_argument, {"q:", "overflow"});
}

TEST_CASE("validate_forward rejects an output that aliases itself", "[cpu][runtime][validate]") {
  ForwardArgs a = valid_args();
  a.o_stride.seq = 64;  // rows of different heads overlap: head stride is 64 too
  expect_error(a, ErrorCode::invalid_argument, {"o strides", "overlap"});
  a = valid_args();
  a.o_stride.head = 32;  // a head's row overlaps the next head's
  expect_error(a, ErrorCode::invalid_argument, {"overlap"});
  // BHSD ("transposed") output and padded rows are fine.
  a = valid_args();
  a.o_stride = Strides{a.heads * a.seqlen_q * 72, 72, a.seqlen_q * 72};
  CHECK_NOTHROW(validate_forward(a, hopper()));
  // A size-1 dimension may carry any stride.
  a = valid_args();
  a.batch = 1;
  a.o_stride.batch = 1;
  CHECK_NOTHROW(validate_forward(a, hopper()));
}

TEST_CASE("broadcast bits come from zero factor strides", "[cpu][runtime][validate]") {
  ForwardArgs a = valid_args();
  a.qb_stride = Strides{0, a.rank, 0};
  a.kb_stride = Strides{0, a.heads * a.rank, a.rank};
  ProblemKey key = validate_forward(a, hopper());
  CHECK(key.broadcast == (kQbBatch | kQbHead | kKbBatch));
  a.kb_stride = Strides{a.seqlen_k * a.rank, a.rank, 0};
  key = validate_forward(a, hopper());
  CHECK(key.broadcast == (kQbBatch | kQbHead | kKbHead));
}

TEST_CASE("alignment classes", "[cpu][runtime][validate]") {
  CHECK(alignment_class({}) == 16);
  CHECK(alignment_class({0, 32, 48}) == 16);
  CHECK(alignment_class({16, 8}) == 8);
  CHECK(alignment_class({4, 16}) == 4);
  CHECK(alignment_class({2}) == 2);
  CHECK(alignment_class({3}) == 1);

  ForwardArgs a = valid_args();
  a.v = fake(0x300008);
  CHECK(validate_forward(a, hopper()).qkv_align == 8);
  a = valid_args();
  a.k_stride.seq = a.heads * a.head_dim + 2;  // padded rows of 4 bytes
  CHECK(validate_forward(a, hopper()).qkv_align == 4);
  a = valid_args();
  a.head_dim = 8;  // 16-byte rows
  a.q_stride = a.o_stride = bshd_strides(a.seqlen_q, a.heads, 8);
  a.k_stride = a.v_stride = bshd_strides(a.seqlen_k, a.heads, 8);
  CHECK(validate_forward(a, hopper()).qkv_align == 16);

  const std::pair<int, int> rank_cases[] = {{1, 2}, {3, 2}, {2, 4}, {4, 8}, {12, 8}, {8, 16}, {24, 16}};
  for (auto [rank, expected] : rank_cases) {
    a = valid_args();
    a.rank = rank;
    a.qb_stride = bshd_strides(a.seqlen_q, a.heads, rank);
    a.kb_stride = bshd_strides(a.seqlen_k, a.heads, rank);
    INFO("rank " << rank);
    CHECK(validate_forward(a, hopper()).bias_align == expected);
  }
  a = valid_args();
  a.qb = fake(0x500004);
  CHECK(validate_forward(a, hopper()).bias_align == 4);
}

TEST_CASE("make_fwd_params fills FwdParams from validated arguments", "[cpu][runtime][launch]") {
  ForwardArgs a = valid_args();
  a.lse = reinterpret_cast<float*>(0x800000);
  FwdParams p = make_fwd_params(a, 64);
  CHECK(p.q == a.q);
  CHECK(p.kb == a.kb);
  CHECK(p.o == a.o);
  CHECK(p.lse == a.lse);
  CHECK(p.k_row_stride == a.k_stride.seq);
  CHECK(p.qb_head_stride == a.qb_stride.head);
  CHECK(p.o_batch_stride == a.o_stride.batch);
  CHECK(p.batch == 2);
  CHECK(p.heads == 3);
  CHECK(p.seqlen_q == 17);
  CHECK(p.seqlen_k == 113);
  CHECK(p.num_m_blocks == 1);
  CHECK(p.scale == Approx(1.0 / 8.0));
  a.softmax_scale = 0.25f;
  a.seqlen_q = 129;
  p = make_fwd_params(a, 64);
  CHECK(p.scale == 0.25f);
  CHECK(p.num_m_blocks == 3);
  CHECK(p.m_blocks_div.divisor == 3u);
  CHECK(p.heads_div.divisor == 3u);
  CHECK(fwd_grid_size(a, 64) == 3u * 2u * 3u);
  CHECK(fwd_grid_size(a, 128) == 2u * 2u * 3u);

  a.rank = 0;  // factors are not passed to a rank-0 kernel
  p = make_fwd_params(a, 128);
  CHECK(p.qb == nullptr);
  CHECK(p.kb == nullptr);
  CHECK(p.qb_row_stride == 0);

  a.seqlen_q = kInt32Max;
  a.batch = 64;
  a.heads = 64;  // 2^25 m-blocks * 2^12 > 2^31
  CHECK_THROWS_AS(fwd_grid_size(a, 64), Error);
}

}  // namespace flashbias
