// The runtime on a real GPU: LoadedKernel launches, Context::forward against the fp64 reference,
// the hit path, compile-once under concurrent first calls, pointer checks, context push/pop.
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "generator/problem_spec.h"
#include "runtime/compiler.h"
#include "runtime/context_impl.h"
#include "runtime/driver_api.h"
#include "runtime/loaded_kernel.h"
#include "runtime/validate.h"
#include "tuner/harness.h"

namespace flashbias {
namespace {

// Row sums of a small matrix, through FwdParams so the real parameter block is exercised.
constexpr const char* kRowSumKernel = R"(
#include "common/params.h"
extern "C" __global__ void fb_row_sum(flashbias::FwdParams p) {
  const float* in = static_cast<const float*>(p.q);
  float* out = static_cast<float*>(p.o);
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= p.seqlen_q) return;
  float s = 0.f;
  for (int j = 0; j < p.seqlen_k; ++j) s += in[row * p.q_row_stride + j];
  out[row] = s * p.scale;
}
)";

const DeviceInfo& device0() {
  static const DeviceInfo info = query_device(0);
  return info;
}

}  // namespace

TEST_CASE("LoadedKernel loads a cubin and launches it", "[gpu][runtime]") {
  activate_primary_context(0);
  KernelSource src;
  src.spec.key.arch = device0().arch;
  src.entry = "fb_row_sum";
  src.source = kRowSumKernel;
  src.options = {"--gpu-architecture=" + device0().arch.name(), "-std=c++17"};
  src.threads = 64;
  const CompiledKernel ck = compile(src);
  LoadedKernel kernel(ck);
  CHECK(kernel.attribute(CU_FUNC_ATTRIBUTE_NUM_REGS) == ck.resources.registers);
  CHECK(kernel.attribute(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES) == ck.resources.static_smem_bytes);
  CHECK(kernel.max_active_blocks_per_sm() > 0);

  const int rows = 100, cols = 37;
  std::vector<float> host(rows * cols);
  for (int i = 0; i < rows * cols; ++i) host[i] = float(i % 7);
  DeviceBuffer in(host.size() * sizeof(float)), out(rows * sizeof(float));
  in.upload(host.data(), in.bytes());
  FwdParams p{};
  p.q = in.get();
  p.o = out.get();
  p.q_row_stride = cols;
  p.seqlen_q = rows;
  p.seqlen_k = cols;
  p.scale = 0.5f;
  void* params[] = {&p};
  kernel.launch((rows + 63) / 64, 1, 1, nullptr, params);
  std::vector<float> result(rows);
  out.download(result.data(), out.bytes());
  for (int r = 0; r < rows; ++r) {
    float expected = 0;
    for (int j = 0; j < cols; ++j) expected += host[r * cols + j];
    CHECK(result[r] == expected * 0.5f);
  }

  LoadedKernel moved = std::move(kernel);
  CHECK(kernel.function() == nullptr);
  CHECK(moved.function() != nullptr);
}

TEST_CASE("Context::forward matches the reference; repeated calls are hits", "[gpu][runtime][context]") {
  activate_primary_context(0);
  Context context;
  ContextImpl& impl = context.impl();
  for (const char* text : {"b=2,h=3,nq=17,nk=113,d=64,r=4", "b=1,h=2,n=239,d=128,mask=causal",
                           "b=2,h=2,nq=1,nk=240,d=32,r=8,qb=1n1r,kb=bn1r,dtype=bf16"}) {
    INFO(text);
    DeviceProblem problem(parse_problem(text), 1234);
    const CheckResult r =
        check_forward(problem, [&](const ForwardArgs& a) { context.forward(a, nullptr); }, 256);
    INFO(r.str());
    CHECK(r.pass);
    const ContextStats before = impl.stats();
    context.forward(problem.forward_args(), nullptr);
    const ContextStats after = impl.stats();
    CHECK(after.dispatch_misses == before.dispatch_misses);
    CHECK(after.compiles == before.compiles);
  }
  CHECK(impl.stats().compiles == 3);
  driver::check(driver::api().cuCtxSynchronize(), "cuCtxSynchronize");
}

TEST_CASE("dispatch_plan is the plan forward runs, and makes its first call a hit", "[gpu][runtime][context]") {
  activate_primary_context(0);
  Context context;
  ContextImpl& impl = context.impl();
  DeviceProblem problem(parse_problem("b=2,h=3,nq=100,nk=300,d=32,r=8"), 4321);
  const ForwardArgs args = problem.forward_args();
  const ProblemKey key = validate_forward(args, impl.device());
  const LaunchPlan& plan = impl.dispatch_plan(key, ShapeInfo{args.batch * args.heads, args.seqlen_q, args.seqlen_k});
  CHECK(plan.spec().key == key);
  const ContextStats before = impl.stats();
  CHECK(before.dispatch_misses == 1);
  const CheckResult r = check_forward(problem, [&](const ForwardArgs& a) { context.forward(a, nullptr); }, 100);
  INFO(r.str());
  CHECK(r.pass);
  const ContextStats after = impl.stats();
  CHECK(after.dispatch_misses == 1);
  CHECK(after.compiles == before.compiles);
  driver::check(driver::api().cuCtxSynchronize(), "cuCtxSynchronize");
}

TEST_CASE("concurrent first calls compile a kernel once", "[gpu][runtime][context]") {
  activate_primary_context(0);
  DeviceProblem problem(parse_problem("b=1,h=4,n=128,d=64,r=2"), 7);
  Context context;
  const ForwardArgs args = problem.forward_args();
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      try {
        activate_primary_context(0);
        context.forward(args, nullptr);
      } catch (...) {
        ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  driver::check(driver::api().cuCtxSynchronize(), "cuCtxSynchronize");
  CHECK(errors == 0);
  CHECK(context.impl().stats().compiles == 1);
  CHECK(context.impl().stats().plans == 1);
}

TEST_CASE("Context rejects host pointers and works without a current context", "[gpu][runtime][context]") {
  const CUcontext primary = activate_primary_context(0);
  DeviceProblem problem(parse_problem("b=1,h=1,n=64,d=64"), 3);
  Context context;
  ForwardArgs args = problem.forward_args();
  std::vector<std::uint16_t> host(64 * 64);
  args.q = host.data();
  try {
    context.forward(args, nullptr);
    FAIL("a host pointer was accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK_THAT(e.what(), Catch::Matchers::StartsWith("q ("));
  }

  // A thread with no current context: the Context pushes its own and restores "none".
  const driver::Api& d = driver::api();
  driver::check(d.cuCtxSetCurrent(nullptr), "cuCtxSetCurrent");
  context.forward(problem.forward_args(), nullptr);
  CUcontext current = reinterpret_cast<CUcontext>(0x1);
  driver::check(d.cuCtxGetCurrent(&current), "cuCtxGetCurrent");
  CHECK(current == nullptr);
  driver::check(d.cuCtxSetCurrent(primary), "cuCtxSetCurrent");
  driver::check(d.cuCtxSynchronize(), "cuCtxSynchronize");
}

TEST_CASE("Policy::cache_only without a store reports the missing kernel", "[gpu][runtime][context]") {
  activate_primary_context(0);
  DeviceProblem problem(parse_problem("b=1,h=1,n=64,d=64"), 3);
  ContextOptions options;
  options.policy = Policy::cache_only;
  Context context(options);
  try {
    context.forward(problem.forward_args(), nullptr);
    FAIL("cache_only compiled a kernel");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::not_found);
    CHECK_THAT(e.what(), Catch::Matchers::Contains("_fwd_f16_d64_r0"));
  }
  CHECK(context.impl().stats().compiles == 0);
}

}  // namespace flashbias
