// dense_problem_key: the key every no-tensor path (gen, bundle export, default variants) uses.
#include <catch2/catch.hpp>

#include "generator/kernel_source.h"
#include "generator/knobs.h"
#include "generator/problem_spec.h"
#include "generator/variants.h"

namespace flashbias {

TEST_CASE("dense keys carry the alignment the row lengths allow, and every rank gets a tile", "[cpu][generator]") {
  const Arch arch = Arch::parse("sm_80");
  struct Row {
    int rank, bias_align;
  };
  // rank * 2 bytes per factor row: 1 -> 2 B, 2 -> 4 B, 3 -> 6 B, 4 -> 8 B, 12 -> 24 B, 8 -> 16 B.
  for (Row r : {Row{1, 2}, Row{2, 4}, Row{3, 2}, Row{4, 8}, Row{12, 8}, Row{8, 16}, Row{128, 16}}) {
    ProblemSpec spec = parse_problem("n=300,d=40");
    spec.rank = r.rank;
    const ProblemKey key = dense_problem_key(spec, arch);
    INFO("rank " << r.rank << ": " << key.str());
    CHECK(key.bias_align == r.bias_align);
    CHECK(key.qkv_align == 16);  // 40 halves = 80 bytes
    // The bug this guards: a 16-byte factor class for rank 1 left no legal tile at all.
    const TileConfig t = heuristic_tile(key, ShapeInfo{1, 300, 300}, default_smem_limit(arch));
    CHECK(legality_error(key, t, default_smem_limit(arch)).empty());
  }
  ProblemSpec plain = parse_problem("n=17,d=72");
  CHECK(dense_problem_key(plain, arch).qkv_align == 16);
  CHECK(dense_problem_key(plain, arch).bias_align == 16);  // canonical for rank 0
  ProblemSpec odd = parse_problem("n=17,d=8,r=3");
  CHECK(dense_problem_key(odd, arch).qkv_align == 16);
}

TEST_CASE("dense keys send an fp16 bias with a scale that does not fold into Q to the portable family",
          "[cpu][generator]") {
  const Arch hopper = Arch::parse("sm_90a");
  CHECK(dense_problem_key(parse_problem("n=64,d=64,r=8"), hopper).arch.name() == "sm_90a");
  CHECK(dense_problem_key(parse_problem("n=64,d=64,r=8,scale=-0.5"), hopper).arch.name() == "sm_90a");
  CHECK(dense_problem_key(parse_problem("n=64,d=64,r=8,scale=2"), hopper).arch.name() == "sm_90");
  CHECK(dense_problem_key(parse_problem("n=64,d=64,r=8,scale=0.001"), hopper).arch.name() == "sm_90");
  CHECK(dense_problem_key(parse_problem("n=64,d=64,scale=2"), hopper).arch.name() == "sm_90a");  // no bias
  CHECK(dense_problem_key(parse_problem("n=64,d=64,r=8,scale=2,dtype=bf16"), hopper).arch.name() == "sm_90a");
}

TEST_CASE("the portable heuristic rescales O lazily at 64 < d <= 128 only", "[cpu][generator]") {
  // sm80 forward knob lazyrescale (sm80/softmax.cuh): it saves the O multiplies that outnumber
  // a thread's scores at d128, and costs more than it saves at d <= 64 (docs/PERF_NOTES.md, sm80
  // forward step 8). On sm_80, and on Hopper for the portable keys (sm_90, no 'a').
  for (const char* arch_name : {"sm_80", "sm_90"}) {
    const Arch arch = Arch::parse(arch_name);
    struct Row {
      const char* problem;
      int lazy;
    };
    for (Row r : {Row{"b=2,h=4,n=16384,d=32,r=8", 0}, Row{"b=256,h=4,n=384,d=32,r=16", 0},
                  Row{"b=4,h=16,n=4096,d=64,r=16", 0}, Row{"b=2,h=16,n=8192,d=128,r=16", 1},
                  Row{"b=2,h=16,n=8192,d=128,r=16,mask=causal", 1}, Row{"b=1,h=2,n=1000,d=72,r=3", 1},
                  Row{"b=1,h=2,n=1000,d=96,r=0,dtype=bf16", 1}, Row{"b=1,h=2,n=1000,d=256,r=16", 0}}) {
      const ProblemSpec spec = parse_problem(r.problem);
      const ProblemKey key = dense_problem_key(spec, arch);
      const TileConfig t = heuristic_tile(key, ShapeInfo{spec.batch * spec.heads, spec.seqlen_q, spec.seqlen_k},
                                          default_smem_limit(arch));
      INFO(arch_name << " " << r.problem << ": " << t.str());
      CHECK(kernel_family(key) == "sm80");
      CHECK(t.get("kLazyRescale") == r.lazy);
      CHECK(legality_error(key, t, default_smem_limit(arch)).empty());
    }
  }
}

}  // namespace flashbias
