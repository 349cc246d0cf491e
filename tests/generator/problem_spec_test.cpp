// Problem strings: parsing, every error path (each message must name the key, the value and
// what is allowed), canonical round trips, derived quantities, and the presets.
#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "generator/problem_key.h"
#include "generator/problem_spec.h"

using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

// parse_problem(text) must throw invalid_argument whose message contains every fragment.
void require_rejected(const std::string& text, std::initializer_list<const char*> fragments) {
  INFO("problem string: \"" << text << "\"");
  try {
    (void)parse_problem(text);
    FAIL("accepted");
  } catch (const Error& e) {
    INFO("message: " << e.what());
    CHECK(e.code() == ErrorCode::invalid_argument);
    for (const char* f : fragments) CHECK_THAT(std::string(e.what()), Contains(f));
  }
}

}  // namespace

TEST_CASE("problem string: the issue's example parses", "[cpu][problem_spec]") {
  const ProblemSpec s = parse_problem("b=2,h=4,nq=1000,nk=777,d=64,r=3,mask=causal,dtype=bf16");
  CHECK(s.batch == 2);
  CHECK(s.heads == 4);
  CHECK(s.seqlen_q == 1000);
  CHECK(s.seqlen_k == 777);
  CHECK(s.head_dim == 64);
  CHECK(s.rank == 3);
  CHECK(s.mask == MaskKind::causal);
  CHECK(s.dtype == DType::bf16);
  CHECK_FALSE(s.softmax_scale.has_value());
  CHECK(s.qb_layout == FactorLayout{});
  CHECK(s.kb_layout == FactorLayout{});
  CHECK(s.scale() == float(1.0 / 8.0));
}

TEST_CASE("problem string: defaults, n, scale, layouts, whitespace and order", "[cpu][problem_spec]") {
  const ProblemSpec s = parse_problem(" d=32 , n=17 ");
  CHECK(s.batch == 1);
  CHECK(s.heads == 1);
  CHECK(s.seqlen_q == 17);
  CHECK(s.seqlen_k == 17);
  CHECK(s.rank == 0);
  CHECK(s.mask == MaskKind::none);
  CHECK(s.dtype == DType::f16);

  const ProblemSpec t = parse_problem("kb=BN1R,qb=1n1r,r=2,scale=0.1,dtype=fp16,d=8,nk=3,nq=5");
  CHECK(t.softmax_scale == 0.1f);
  CHECK(t.scale() == 0.1f);
  CHECK(t.qb_layout == FactorLayout{true, true});
  CHECK(t.kb_layout == FactorLayout{false, true});
  CHECK(t.broadcast_bits() == (kQbBatch | kQbHead | kKbHead));
  CHECK(parse_problem("n=4,d=8,r=1,qb=1nhr").broadcast_bits() == kQbBatch);
  CHECK(parse_problem("n=4,d=8,r=1").broadcast_bits() == kBroadcastNone);
  CHECK(parse_problem("n=4,d=8,scale=0").scale() == 0.0f);  // bias-only attention is legal
}

TEST_CASE("problem string: every error names the key, the value and the limit", "[cpu][problem_spec]") {
  require_rejected("", {"item 1 is empty"});
  require_rejected("n=4,,d=8", {"item 2 is empty"});
  require_rejected("n=4,d=8,", {"item 3 is empty"});
  require_rejected("n=4,d", {"\"d\"", "no '='"});
  require_rejected("n=4,d=8,x=1", {"unknown key \"x\"", "known keys", "nq"});
  require_rejected("n=4,D=8", {"unknown key \"D\""});
  require_rejected("n=4,d=8,d=16", {"\"d\"", "twice"});
  require_rejected("n=4,nq=4,d=8", {"\"nq\"", "either n or nq and nk"});
  require_rejected("nk=4,n=4,d=8", {"\"n\"", "either n or nq and nk"});
  require_rejected("n=4", {"missing required key d", "multiple of 8"});
  require_rejected("d=8", {"missing required sequence length", "n, or nq and nk"});
  require_rejected("nq=3,d=8", {"missing required key nk"});
  require_rejected("nk=3,d=8", {"missing required key nq"});
  require_rejected("n=4,d=", {"\"d\"", "empty value"});
  require_rejected("n=4,d=abc", {"d=abc", "not an integer"});
  require_rejected("n=4,d=64x", {"d=64x", "not an integer"});
  require_rejected("n=4,d=6.4", {"d=6.4", "not an integer"});
  require_rejected("n=4,d=+64", {"d=+64", "not an integer"});
  require_rejected("n=4,d=99999999999999999999", {"d=99999999999999999999", "64-bit"});
  require_rejected("n=4,d=65", {"d=65", "multiple of 8 in [8, 256]"});
  require_rejected("n=4,d=0", {"d=0", "multiple of 8 in [8, 256]"});
  require_rejected("n=4,d=264", {"d=264", "multiple of 8 in [8, 256]"});
  require_rejected("n=4,d=-8", {"d=-8", "multiple of 8 in [8, 256]"});
  require_rejected("n=4,d=8,r=129", {"r=129", "[0, 128]"});
  require_rejected("n=4,d=8,r=-1", {"r=-1", "[0, 128]"});
  require_rejected("n=4,d=8,b=0", {"b=0", "[1, 2147483647]"});
  require_rejected("n=4,d=8,h=0", {"h=0", "[1, 2147483647]"});
  require_rejected("nq=0,nk=4,d=8", {"nq=0", "[1, 2147483647]"});
  require_rejected("nq=4,nk=-1,d=8", {"nk=-1", "[1, 2147483647]"});
  require_rejected("n=3000000000,d=8", {"n=3000000000", "[1, 2147483647]"});
  require_rejected("n=4,d=8,mask=sliding", {"mask", "sliding", "causal"});
  require_rejected("n=4,d=8,dtype=fp32", {"dtype", "fp32", "bf16"});
  require_rejected("n=4,d=8,scale=abc", {"scale=abc", "not a number"});
  require_rejected("n=4,d=8,scale=0.1.2", {"scale=0.1.2", "not a number"});
  require_rejected("n=4,d=8,scale=inf", {"scale=inf", "finite"});
  require_rejected("n=4,d=8,scale=nan", {"scale=nan", "finite"});
  require_rejected("n=4,d=8,scale=1e50", {"scale=1e50", "fp32 range"});
  require_rejected("n=4,d=8,r=2,qb=bn2r", {"qb=bn2r", "1n1r"});
  require_rejected("n=4,d=8,r=2,kb=full", {"kb=full", "bnhr"});
  require_rejected("n=4,d=8,qb=1n1r", {"qb=1n1r", "r=0"});
  require_rejected("b=2147483647,h=2147483647,n=2147483647,d=256", {"elements", "2^60"});
}

TEST_CASE("validate() rejects hand-built specs like the parser does", "[cpu][problem_spec]") {
  ProblemSpec s;
  s.seqlen_q = s.seqlen_k = 16;
  s.head_dim = 64;
  CHECK_NOTHROW(validate(s));
  s.head_dim = 60;
  CHECK_THROWS_WITH(validate(s), Contains("d=60"));
  s.head_dim = 64;
  s.seqlen_k = 0;
  CHECK_THROWS_WITH(validate(s), Contains("nk=0"));
  s.seqlen_k = 16;
  s.softmax_scale = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(validate(s), Contains("finite"));
}

TEST_CASE("problem string: to_string is canonical and round-trips", "[cpu][problem_spec]") {
  CHECK(to_string(parse_problem("b=2,h=4,nq=1000,nk=777,d=64,r=3,mask=causal,dtype=bf16")) ==
        "b=2,h=4,nq=1000,nk=777,d=64,r=3,mask=causal,dtype=bf16");
  CHECK(to_string(parse_problem("d=32,n=17")) == "b=1,h=1,n=17,d=32,r=0,mask=none,dtype=f16");
  CHECK(to_string(parse_problem("nq=5,nk=5,d=8,r=1,scale=0.1,kb=1n1r")) ==
        "b=1,h=1,n=5,d=8,r=1,mask=none,dtype=f16,scale=0.1,kb=1n1r");

  // Random specs over the whole legal space, scales included (shortest-form floats must read back
  // to the same fp32 bits).
  std::mt19937_64 rng(3);
  const auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  for (int i = 0; i < 2000; ++i) {
    ProblemSpec s;
    s.dtype = pick(0, 1) ? DType::bf16 : DType::f16;
    s.batch = pick(1, 300);
    s.heads = pick(1, 64);
    s.seqlen_q = pick(1, 20000);
    s.seqlen_k = pick(0, 1) ? s.seqlen_q : pick(1, 20000);
    s.head_dim = 8 * pick(1, 32);
    s.rank = pick(0, 128);
    s.mask = pick(0, 1) ? MaskKind::causal : MaskKind::none;
    if (pick(0, 1)) s.softmax_scale = std::uniform_real_distribution<float>(-4.f, 4.f)(rng);
    if (s.rank > 0) {
      s.qb_layout = FactorLayout{pick(0, 1) == 1, pick(0, 1) == 1};
      s.kb_layout = FactorLayout{pick(0, 1) == 1, pick(0, 1) == 1};
    }
    const std::string text = to_string(s);
    INFO(text);
    REQUIRE(parse_problem(text) == s);
    REQUIRE(to_string(parse_problem(text)) == text);
  }
}

TEST_CASE("visible keys and FLOP counts follow the bottom-right causal mask", "[cpu][problem_spec]") {
  for (const auto& [nq, nk] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {1, 1}, {5, 3}, {3, 5}, {17, 17}, {113, 1}, {1, 113}, {239, 1000}, {1000, 239}}) {
    ProblemSpec s;
    s.seqlen_q = nq;
    s.seqlen_k = nk;
    s.head_dim = 8;
    s.mask = MaskKind::causal;
    double pairs = 0;
    for (std::int64_t i = 0; i < nq; ++i) {
      std::int64_t seen = 0;
      for (std::int64_t j = 0; j < nk; ++j) seen += (j <= i + (nk - nq)) ? 1 : 0;
      INFO("nq=" << nq << " nk=" << nk << " row " << i);
      REQUIRE(s.visible_keys(i) == seen);
      pairs += double(seen);
    }
    CHECK(s.visible_pairs() == pairs);
    s.mask = MaskKind::none;
    CHECK(s.visible_pairs() == double(nq * nk));
    CHECK(s.visible_keys(0) == nk);
  }
  const ProblemSpec llm = find_preset(bench_presets(), "llm_d128")->spec;
  CHECK(llm.forward_flops() == 4.0 * 2 * 16 * 8192.0 * 8192.0 * 128);
  CHECK(llm.backward_flops() == 2.5 * llm.forward_flops());
  const ProblemSpec causal = find_preset(bench_presets(), "llm_d128_causal")->spec;
  CHECK(causal.forward_flops() == 4.0 * 2 * 16 * (8192.0 * 8193.0 / 2) * 128);
}

TEST_CASE("presets: the seven BENCH.md cases, and demo versions of them", "[cpu][problem_spec]") {
  const auto& bench = bench_presets();
  const auto& demo = demo_presets();
  const std::vector<std::string> expected_strings = {
      "b=2,h=4,n=4096,d=32,r=8,mask=none,dtype=f16",
      "b=2,h=4,n=16384,d=32,r=8,mask=none,dtype=f16",
      "b=1,h=50,n=8192,d=32,r=2,mask=causal,dtype=f16",
      "b=4,h=16,n=4096,d=64,r=16,mask=none,dtype=f16",
      "b=2,h=16,n=8192,d=128,r=16,mask=none,dtype=f16",
      "b=2,h=16,n=8192,d=128,r=16,mask=causal,dtype=f16",
      "b=256,h=4,n=384,d=32,r=16,mask=none,dtype=f16",
  };
  const std::vector<std::string> names = {"seed_n4k", "seed_n16k", "alibi_gpt2", "llm_d64",
                                          "llm_d128", "llm_d128_causal", "af3_tri"};
  REQUIRE(bench.size() == names.size());
  REQUIRE(demo.size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    INFO(names[i]);
    CHECK(bench[i].name == names[i]);
    CHECK(demo[i].name == names[i]);
    CHECK(to_string(bench[i].spec) == expected_strings[i]);
    CHECK_FALSE(bench[i].description.empty());
    CHECK_FALSE(demo[i].description.empty());
    CHECK_NOTHROW(validate(demo[i].spec));
    CHECK(parse_problem(to_string(demo[i].spec)) == demo[i].spec);
    // Same kernel-selecting fields: the demo runs the benchmark's kernels.
    CHECK(demo[i].spec.head_dim == bench[i].spec.head_dim);
    CHECK(demo[i].spec.rank == bench[i].spec.rank);
    CHECK(demo[i].spec.mask == bench[i].spec.mask);
    CHECK(demo[i].spec.dtype == bench[i].spec.dtype);
    CHECK(demo[i].spec.broadcast_bits() == bench[i].spec.broadcast_bits());
    // Small enough for quick host-side input generation and checking.
    const auto& d = demo[i].spec;
    CHECK(d.batch * d.seqlen_q * d.heads * d.head_dim <= (std::int64_t(1) << 23));
    CHECK(d.forward_flops() <= bench[i].spec.forward_flops());
    CHECK(find_preset(bench, names[i]) == &bench[i]);
  }
  CHECK(find_preset(bench, "nope") == nullptr);
}
