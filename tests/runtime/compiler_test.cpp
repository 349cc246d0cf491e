// NVRTC loading and compile(): a tiny hand-written kernel and its resource report, the error
// path, concurrency, and the compiler-less mode.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "runtime/compiler.h"
#include "runtime/nvrtc_api.h"

namespace flashbias {
namespace {

// Uses FwdParams from the embedded common/params.h, so it compiles only if compile() passes the
// templates as headers. 64 floats indexed at run time force a 256-byte stack frame; 100 floats
// of __shared__ are 400 bytes of static smem.
constexpr const char* kTinyKernel = R"(
#include "common/params.h"
extern "C" __global__ void fb_test_kernel(flashbias::FwdParams p) {
  __shared__ float tile[100];
  float local[64];
  const float* in = static_cast<const float*>(p.q);
#pragma unroll 1
  for (int i = 0; i < 64; ++i) local[(i * 7 + p.batch) & 63] = in[i * p.seqlen_q + threadIdx.x];
  tile[threadIdx.x % 100] = local[p.seqlen_k & 63] * p.scale;
  __syncthreads();
  static_cast<float*>(p.o)[threadIdx.x] = tile[(threadIdx.x + 1) % 100];
}
)";

KernelSource tiny_source(const std::string& arch) {
  KernelSource s;
  s.spec.key.arch = Arch::parse(arch);
  s.entry = "fb_test_kernel";
  s.source = kTinyKernel;
  s.options = {"--gpu-architecture=" + arch, "-std=c++17"};
  s.threads = 128;
  s.smem_bytes = 0;
  return s;
}

// Sets an environment variable for a scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("NVRTC loads and reports its version", "[nvrtc][runtime][compiler]") {
  const nvrtc::Api& api = nvrtc::api();
  CHECK(api.major >= 12);
  CHECK_FALSE(api.path.empty());
  CHECK(api.version() == std::to_string(api.major) + "." + std::to_string(api.minor));
}

TEST_CASE("compile() produces a cubin and its resource report", "[nvrtc][runtime][compiler]") {
  for (const std::string arch : {"sm_80", "sm_90a"}) {
    INFO(arch);
    const KernelSource src = tiny_source(arch);
    const CompiledKernel ck = compile(src);
    REQUIRE(ck.cubin.size() > 64);
    CHECK(std::string(ck.cubin.data() + 1, 3) == "ELF");
    CHECK(ck.entry == "fb_test_kernel");
    CHECK(ck.spec == src.spec);
    CHECK(ck.threads == 128);
    CHECK(ck.compile_ms > 0);
    CHECK(ck.nvrtc_version == nvrtc::api().version());
    CHECK_THAT(ck.log, Catch::Matchers::Contains("Compiling entry function 'fb_test_kernel'"));

    const KernelResources& r = ck.resources;
    INFO(r.str());
    CHECK(r.complete());
    CHECK(r.registers > 0);
    CHECK(r.registers <= 255);
    CHECK(r.static_smem_bytes == 400);
    CHECK(r.stack_frame_bytes == 256);
    CHECK(r.spill_store_bytes == 0);
    CHECK(r.spill_load_bytes == 0);
    CHECK(r.barriers == 1);

    // Both sources agree where they overlap.
    const auto report = parse_ptxas_report(ck.log, ck.entry);
    const auto attrs = read_cubin_attributes(ck.cubin, ck.entry);
    REQUIRE(report.has_value());
    REQUIRE(attrs.has_value());
    CHECK(attrs->registers == report->registers);
    CHECK(attrs->frame_bytes == report->stack_frame_bytes);
  }
}

TEST_CASE("compile() does not add the verbose option twice", "[nvrtc][runtime][compiler]") {
  KernelSource src = tiny_source("sm_80");
  src.options.push_back(kPtxasVerboseOption);
  const CompiledKernel ck = compile(src);
  CHECK(ck.resources.complete());
}

TEST_CASE("compile failure carries the key, the options and the NVRTC log", "[nvrtc][runtime][compiler]") {
  KernelSource src = tiny_source("sm_80");
  src.source = "extern \"C\" __global__ void fb_test_kernel() { this_is_not_declared = 1; }\n";
  try {
    compile(src);
    FAIL("a broken source compiled");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == ErrorCode::compile_failed);
    CHECK_THAT(e.what(), Catch::Matchers::Contains(src.spec.str()));
    CHECK_THAT(e.what(), Catch::Matchers::Contains("--gpu-architecture=sm_80"));
    CHECK_THAT(e.what(), Catch::Matchers::Contains("this_is_not_declared"));
    CHECK_THAT(e.what(), Catch::Matchers::Contains("log:"));
  }
}

TEST_CASE("compile() without a real architecture gives no cubin and says why", "[nvrtc][runtime][compiler]") {
  KernelSource src = tiny_source("sm_80");
  src.options = {"--gpu-architecture=compute_80"};
  try {
    compile(src);
    FAIL("a PTX-only compile was accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::compile_failed);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("compute_XX"));
  }
}

TEST_CASE("compile() runs concurrently", "[nvrtc][runtime][compiler]") {
  std::vector<std::future<CompiledKernel>> jobs;
  for (int i = 0; i < 4; ++i) {
    jobs.push_back(std::async(std::launch::async, [i] { return compile(tiny_source(i % 2 ? "sm_80" : "sm_90a")); }));
  }
  for (auto& job : jobs) {
    const CompiledKernel ck = job.get();
    CHECK(ck.resources.static_smem_bytes == 400);
  }
}

TEST_CASE("FLASHBIAS_DISABLE_NVRTC forbids the compiler", "[cpu][runtime][compiler]") {
  ScopedEnv env("FLASHBIAS_DISABLE_NVRTC", "1");
  CHECK(nvrtc::disabled_by_env());
  try {
    compile(tiny_source("sm_80"));
    FAIL("compile() ran with NVRTC disabled");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::nvrtc_unavailable);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("FLASHBIAS_DISABLE_NVRTC"));
  }
  {
    ScopedEnv zero("FLASHBIAS_DISABLE_NVRTC", "0");
    CHECK_FALSE(nvrtc::disabled_by_env());
  }
}

}  // namespace flashbias
