// The default variant set (the benchmark keys in both dtypes, heuristic tiles) compiles under
// NVRTC for sm_80 and sm_90a: forward kernels with zero spill bytes, backward modules within a
// few bytes of stack. Runs without a GPU.
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <future>
#include <thread>

#include "generator/kernel_source.h"
#include "generator/knobs.h"
#include "generator/problem_spec.h"
#include "generator/variants.h"
#include "runtime/compiler.h"

namespace flashbias {

namespace {

/// Compiles every spec, as many at a time as the machine has cores, and hands each result in
/// order to check(index, compiled). A failed compile throws out of the test with NVRTC's log.
template <class Check>
void compile_each(const std::vector<KernelSpec>& specs, Check&& check) {
  const unsigned width = std::max(1u, std::thread::hardware_concurrency());
  for (std::size_t begin = 0; begin < specs.size(); begin += width) {
    std::vector<std::future<CompiledKernel>> batch;
    for (std::size_t i = begin; i < std::min(specs.size(), begin + width); ++i)
      batch.push_back(std::async(std::launch::async, [spec = specs[i]] { return compile(generate(spec)); }));
    for (std::size_t i = 0; i < batch.size(); ++i) check(begin + i, batch[i].get());
  }
}

/// A problem string and the heuristic's kernel for it on `arch` (direction `dir`).
struct Job {
  std::string text;
  KernelSpec spec;
};
Job heuristic_job(const std::string& text, const Arch& arch, Direction dir = Direction::fwd) {
  const ProblemSpec spec = parse_problem(text);
  ProblemKey key = dense_problem_key(spec, arch);
  key.direction = dir;
  const TileConfig t =
      heuristic_tile(key, ShapeInfo{spec.batch * spec.heads, spec.seqlen_q, spec.seqlen_k}, default_smem_limit(arch));
  return Job{text, KernelSpec{key, t}};
}

/// compile_each over jobs' specs: check(job, compiled).
template <class Check>
void compile_jobs(const std::vector<Job>& jobs, Check&& check) {
  std::vector<KernelSpec> specs;
  for (const Job& job : jobs) specs.push_back(job.spec);
  compile_each(specs, [&](std::size_t index, const CompiledKernel& ck) { check(jobs[index], ck); });
}

}  // namespace

TEST_CASE("the default variant set (forward and backward) compiles for sm_80 and sm_90a without spilling", "[nvrtc][generator]") {
  struct Job {
    KernelSpec spec;
    std::string name;
  };
  std::vector<Job> jobs;
  for (const char* a : {"sm_80", "sm_90a"}) {
    const Arch arch = Arch::parse(a);
    for (const DefaultVariant& v : default_variants(arch))
      // Long and short sequences pick different heuristic tiles; both belong to the set, and so
      // does the tile of the benchmark case's own extents (what `flashbias demo` reports). The
      // backward of every key too (its four kernels share one module; spills summed over them).
      for (Direction dir : {Direction::fwd, Direction::bwd})
        for (const ShapeInfo& shape : {ShapeInfo{8, 384, 384}, ShapeInfo{8, 8192, 8192}, v.shape}) {
          ProblemKey key = v.key;
          key.direction = dir;
          const TileConfig t = heuristic_tile(key, shape, default_smem_limit(arch));
          jobs.push_back({KernelSpec{key, t}, fmt::format("{} {} bh={} n={}", v.name, to_string(dir),
                                                          shape.batch_heads, shape.seqlen_k)});
        }
  }
  // Deduplicate (several shapes share a tile), then compile on every core.
  std::vector<Job> unique;
  for (const Job& j : jobs) {
    bool seen = false;
    for (const Job& u : unique) seen = seen || u.spec == j.spec;
    if (!seen) unique.push_back(j);
  }
  std::vector<KernelSpec> specs;
  for (const Job& j : unique) specs.push_back(j.spec);
  compile_each(specs, [&](std::size_t index, const CompiledKernel& ck) {
    const Job& job = unique[index];
    INFO(job.name << " " << job.spec.str() << ": " << ck.resources.str());
    CHECK(ck.resources.complete());
    if (job.spec.key.direction == Direction::fwd) {
      CHECK(ck.resources.spill_store_bytes == 0);
      CHECK(ck.resources.spill_load_bytes == 0);
      CHECK(ck.resources.stack_frame_bytes == 0);
    } else {
      // The backward's heuristic tiles run at 250-255 registers; ptxas parks one or two values
      // (8 bytes) on the stack in a few of them (d128 causal, the bf16 d32/d64 ones). Measured
      // fastest on the H100 regardless (docs/PERF_NOTES.md, backward); the bound keeps a real
      // spill (an accumulator tile: hundreds of bytes) from slipping in.
      CHECK(ck.resources.spill_store_bytes <= 16);
      CHECK(ck.resources.spill_load_bytes <= 64);
    }
    CHECK(ck.resources.registers <= 255);
    // A serialised wgmma pipeline (sm_90a) costs far more than a spill, and only ptxas's log
    // tells of it.
    CHECK_FALSE(ck.resources.wgmma_serialized);
    CHECK_FALSE(ck.cubin.empty());
  });
}

TEST_CASE("the portable heuristic takes the ahead and mmasum tiles only where they compile without spills",
          "[nvrtc][generator]") {
  // ahead (sm80/fwd_kernel.cuh) keeps two score tiles live so that the next tile's products
  // interleave with this tile's softmax; the 128x64 d32 tile then fills the register file (255)
  // and ptxas spills on some ranks and alignments (docs/PERF_NOTES.md, sm80 forward step 10).
  // mmasum (the row sums on the tensor cores) adds an accumulator per m-tile, on the ahead tile
  // and on the 128x128 tile the heuristic takes past 8192 keys without a mask (step 11).
  // Every key and shape on which the heuristic takes either is compiled here: it must be spill-free.
  const Arch arch = Arch::parse("sm_90");
  int taken = 0, taken_mmasum = 0;
  for (int n : {4096, 16384})
    for (int rank = 0; rank <= 128; ++rank)
      for (const char* mask : {"none", "causal"}) {
        const ProblemSpec spec = parse_problem(fmt::format("b=2,h=4,n={},d=32,r={},mask={}", n, rank, mask));
        const ProblemKey key = dense_problem_key(spec, arch);
        const TileConfig t = heuristic_tile(key, ShapeInfo{spec.batch * spec.heads, spec.seqlen_q, spec.seqlen_k},
                                            default_smem_limit(arch));
        const bool wide = n > 8192 && spec.mask == MaskKind::none;
        INFO(key.str() << " n=" << n << ": " << t.str());
        CHECK(t.get("kAhead") == (portable_ahead_fits(key) && !wide ? 1 : 0));
        CHECK(t.get("kMmaSum") == (portable_ahead_fits(key) && (wide || portable_ahead_mmasum_fits(key)) ? 1 : 0));
        if (t.get("kAhead") != 1 && t.get("kMmaSum") != 1) continue;
        // The 4096-key tiles of the causal keys repeat at 16384: compiled once.
        if (n == 16384 && !wide) continue;
        ++taken;
        taken_mmasum += t.get("kMmaSum").value_or(0);
        const CompiledKernel ck = compile(generate(KernelSpec{key, t}));
        INFO(ck.resources.str());
        CHECK(kernel_family(key) == "sm80");
        CHECK(ck.resources.complete());
        CHECK(ck.resources.spill_store_bytes == 0);
        CHECK(ck.resources.spill_load_bytes == 0);
      }
  CHECK(taken == 18);
  CHECK(taken_mmasum == 12);
  // Not taken: bf16 (it spills there), sm_80 (not measured), short key or query sequences, ranks
  // outside the measured set.
  for (const auto& [problem, arch_name] :
       {std::pair{"b=2,h=4,n=4096,d=32,r=8,dtype=bf16", "sm_90"}, std::pair{"b=2,h=4,n=16384,d=32,r=8,dtype=bf16", "sm_90"},
        std::pair{"b=2,h=4,n=4096,d=32,r=8", "sm_80"}, std::pair{"b=2,h=4,n=16384,d=32,r=8", "sm_80"},
        std::pair{"b=2,h=4,n=16384,d=32,r=20", "sm_90"}, std::pair{"b=256,h=4,n=384,d=32,r=16", "sm_80"},
        std::pair{"b=2,h=4,nq=64,nk=4096,d=32,r=8", "sm_90"}}) {
    const ProblemSpec spec = parse_problem(problem);
    const Arch a = Arch::parse(arch_name);
    const TileConfig t = heuristic_tile(dense_problem_key(spec, a), ShapeInfo{spec.batch * spec.heads, spec.seqlen_q, spec.seqlen_k},
                                        default_smem_limit(a));
    INFO(problem << " on " << arch_name << ": " << t.str());
    CHECK(t.get("kAhead") == 0);
    CHECK(t.get("kMmaSum") == 0);
  }
}

TEST_CASE("the short-row d32 tile on Hopper sums rows on the tensor cores without spilling", "[nvrtc][generator]") {
  // Rows of at most 512 keys (af3_tri's 384) take the 128x32 two-stage tile with mmasum on sm_90
  // (docs/PERF_NOTES.md, sm80 forward step 16), whose point is four CTAs of 128 threads per SM:
  // both dtypes, both masks, and ranks with every factor-copy width (1 and 3: 2 bytes; 2: 4
  // bytes; the rest 16). At rank 128 the factor tiles' shared memory allows only three.
  const Arch arch = Arch::parse("sm_90");
  for (const char* dtype : {"f16", "bf16"})
    for (const char* mask : {"none", "causal"})
      for (int rank : {0, 1, 2, 3, 8, 16, 32, 128}) {
        const ProblemSpec spec =
            parse_problem(fmt::format("b=256,h=4,n=384,d=32,r={},mask={},dtype={}", rank, mask, dtype));
        const ProblemKey key = dense_problem_key(spec, arch);
        const TileConfig t = heuristic_tile(key, ShapeInfo{spec.batch * spec.heads, spec.seqlen_q, spec.seqlen_k},
                                            default_smem_limit(arch));
        INFO(key.str() << ": " << t.str());
        CHECK(t.get("kMmaSum") == 1);
        CHECK(t.get("kAhead") == 0);
        CHECK(t.block_m == 128);
        CHECK(t.block_n == 32);
        CHECK(t.get("kMinBlocks") == 4);
        const CompiledKernel ck = compile(generate(KernelSpec{key, t}));
        INFO(ck.resources.str());
        CHECK(ck.resources.complete());
        CHECK(ck.resources.registers <= 128);  // 4 CTAs of 128 threads per SM
        CHECK(ck.resources.spill_store_bytes == 0);
        CHECK(ck.resources.spill_load_bytes == 0);
      }
}

TEST_CASE("the Hopper forward's heuristic tiles copy narrow factor rows without spilling", "[nvrtc][generator]") {
  // Factor rows that TMA cannot address are copied by the producer under its setmaxnreg budget
  // of 32 registers: by cp.async (4- and 8-byte rows, even ranks that are not multiples of 8),
  // or by loads and stores (2-byte rows, odd ranks). Unrolled whole, the cp.async copies of wide
  // factors spilled 280-770 bytes (ranks 66 and 100, d32 to d128; session 21); the odd ranks'
  // copies by one warp took 56 registers, and the d64 consumers' remaining 152 left their wgmma
  // pipeline serialised with a spill (docs/PERF_NOTES.md, sm90 forward step 28). Long rows, and
  // for d32 the short rows' four-CTA tile.
  const Arch arch = Arch::parse("sm_90a");
  std::vector<Job> jobs;
  for (int d : {32, 64, 128, 256})
    for (int rank : {1, 2, 15, 33, 34, 65, 66, 100, 113, 114})
      for (const char* mask : {"none", "causal"})
        for (int n : {8192, 384}) {
          if (d != 64 && std::string(mask) == "causal") continue;
          if (n == 384 && (d != 32 || rank > 33)) continue;
          jobs.push_back(heuristic_job(fmt::format("b=2,h=16,n={},d={},r={},mask={}", n, d, rank, mask), arch));
        }
  compile_jobs(jobs, [&](const Job& job, const CompiledKernel& ck) {
    const KernelSpec& spec = job.spec;
    INFO(job.text << " " << spec.str() << ": " << ck.resources.str());
    CHECK(kernel_family(spec.key) == "sm90");
    CHECK((spec.key.bias_align == 2 || spec.key.bias_align == 4 || spec.key.bias_align == 8));
    CHECK(ck.resources.complete());
    CHECK(ck.resources.spill_store_bytes == 0);
    CHECK(ck.resources.spill_load_bytes == 0);
    CHECK(ck.resources.stack_frame_bytes == 0);
    CHECK_FALSE(ck.resources.wgmma_serialized);
  });
}

TEST_CASE("the backward compiles at ranks whose factor columns end in a partial 32-column chunk", "[nvrtc][generator]") {
  // The portable dq takes P Kb 32 factor columns at a time; ranks 33-56, 65-88 and 97-120 end in
  // a chunk of one, two or three n8 tiles (here 36, 112 and 56), which a static_assert rejected
  // until session 21. Both archs' heuristic tiles (ranks over 32 run the portable family on
  // Hopper as well).
  std::vector<Job> jobs;
  for (const char* a : {"sm_80", "sm_90a"})
    for (int rank : {36, 56, 112})
      jobs.push_back(heuristic_job(fmt::format("b=2,h=4,n=1024,d={},r={}", std::string(a) == "sm_80" ? 64 : 32, rank),
                                   Arch::parse(a), Direction::bwd));
  compile_jobs(jobs, [&](const Job& job, const CompiledKernel& ck) {
    INFO(job.spec.key.arch.name() << " " << job.text << " " << job.spec.str() << ": " << ck.resources.str());
    CHECK(kernel_family(job.spec.key) == "sm80");
    CHECK(ck.resources.complete());
    CHECK_FALSE(ck.cubin.empty());
  });
}

TEST_CASE("the portable family copies many 2-byte factor passes in batches without spilling", "[nvrtc][generator]") {
  // Odd ranks over 32 give 2-byte factor rows whose chunks do not tile the threads: up to 60
  // passes per thread (rank 113). Unrolled whole, the forward's walked copy hoisted every pass's
  // address and spilled 28-1020 bytes at d64 (rank 33: 28, 49: 304, 113: 1020), and the backward's
  // loader kilobytes; a rolled loop waited out every load (16-30% slower). Batches of four passes,
  // loads before stores (sm80/tile_loader.cuh, copy_narrow_batched), leave the forward without a
  // spill (docs/PERF_NOTES.md, sm80 step 17).
  const Arch arch = Arch::parse("sm_80");
  std::vector<Job> jobs;
  for (int d : {32, 64, 128})
    for (int rank : {33, 49, 113}) jobs.push_back(heuristic_job(fmt::format("b=2,h=8,n=2048,d={},r={}", d, rank), arch));
  compile_jobs(jobs, [&](const Job& job, const CompiledKernel& ck) {
    INFO(job.text << " " << job.spec.str() << ": " << ck.resources.str());
    CHECK(job.spec.key.bias_align == 2);
    CHECK(ck.resources.complete());
    CHECK(ck.resources.spill_store_bytes == 0);
    CHECK(ck.resources.spill_load_bytes == 0);
  });
}

}  // namespace flashbias
