#include "gpu_session.h"


#include "generator/kernel_source.h"
#include "generator/variants.h"
#include "runtime/compiler.h"
#include "runtime/context_impl.h"
#include "runtime/loaded_kernel.h"
#include "runtime/validate.h"
#include "tuner/harness.h"
#include "tuner/parallel.h"

namespace flashbias::cli {

GpuSession::GpuSession(int device, bool portable) {
  device_ = query_device(device);
  if (portable) device_.arch.a = false;  // as ContextOptions::portable does
  activate_primary_context(device);
  ContextOptions opts;
  opts.device = device;
  opts.portable = portable;
  context_ = std::make_unique<Context>(opts);
}

std::function<void(const ForwardArgs&)> GpuSession::launcher(const ForwardArgs& args,
                                                             const std::optional<TileConfig>& tile,
                                                             KernelSpec* chosen) {
  const ProblemKey key = validate_forward(args, device_);
  if (!tile) {
    // The spec the dispatcher runs (a stored winner when the store has one for this key and
    // bucket, else the heuristic's): its own plan, made now, so the first call is a hit.
    if (chosen) {
      const ShapeInfo shape{args.batch * args.heads, args.seqlen_q, args.seqlen_k};
      *chosen = context_->impl().dispatch_plan(key, shape).spec();
    }
    Context* ctx = context_.get();
    return [ctx](const ForwardArgs& a) { ctx->forward(a, nullptr); };
  }
  const KernelSpec spec{key, *tile};
  if (std::string why = legality_error(key, *tile, device_.max_smem_per_block_optin); !why.empty())
    throw Error(ErrorCode::unsupported, spec.str() + ": " + why);
  if (chosen) *chosen = spec;
  auto it = compiled_.find(spec);
  auto loaded = it != compiled_.end() ? std::make_shared<const LoadedKernel>(*it->second)
                                      : std::make_shared<const LoadedKernel>(compile(generate(spec)));
  auto plan = std::make_shared<LaunchPlan>(loaded, spec);
  return [plan](const ForwardArgs& a) { plan->launch_forward(a, nullptr); };
}

std::vector<TileConfig> GpuSession::legal_tiles(const ForwardArgs& args) const {
  return enumerate_tiles(validate_forward(args, device_), device_.max_smem_per_block_optin);
}

void GpuSession::precompile(const ForwardArgs& args, const std::vector<std::optional<TileConfig>>& tiles) {
  const ProblemKey key = validate_forward(args, device_);
  std::vector<KernelSpec> todo;
  for (const auto& t : tiles)
    if (t && !compiled_.count(KernelSpec{key, *t})) todo.push_back(KernelSpec{key, *t});
  // One NVRTC program per hardware thread (NVRTC is thread-safe per program).
  std::vector<std::shared_ptr<const CompiledKernel>> out(todo.size());
  detail::parallel_for(std::int64_t(todo.size()), 0, [&](std::int64_t i) {
    out[std::size_t(i)] = std::make_shared<const CompiledKernel>(compile(generate(todo[std::size_t(i)])));
  });
  for (std::size_t i = 0; i < todo.size(); ++i) compiled_[todo[i]] = out[i];
}

}  // namespace flashbias::cli
