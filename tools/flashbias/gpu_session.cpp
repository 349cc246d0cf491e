#include "gpu_session.h"

#include "generator/kernel_source.h"
#include "generator/variants.h"
#include "runtime/compiler.h"
#include "runtime/loaded_kernel.h"
#include "runtime/validate.h"
#include "tuner/harness.h"

namespace flashbias::cli {

GpuSession::GpuSession(int device) {
  device_ = query_device(device);
  activate_primary_context(device);
  ContextOptions opts;
  opts.device = device;
  context_ = std::make_unique<Context>(opts);
}

std::function<void(const ForwardArgs&)> GpuSession::launcher(const ForwardArgs& args,
                                                             const std::optional<TileConfig>& tile,
                                                             KernelSpec* chosen) {
  const ProblemKey key = validate_forward(args, device_);
  if (!tile) {
    if (chosen) {
      chosen->key = key;
      chosen->tile = heuristic_tile(key, ShapeInfo{args.batch * args.heads, args.seqlen_q, args.seqlen_k},
                                    device_.max_smem_per_block_optin);
    }
    Context* ctx = context_.get();
    return [ctx](const ForwardArgs& a) { ctx->forward(a, nullptr); };
  }
  const KernelSpec spec{key, *tile};
  if (std::string why = legality_error(key, *tile, device_.max_smem_per_block_optin); !why.empty())
    throw Error(ErrorCode::unsupported, spec.str() + ": " + why);
  if (chosen) *chosen = spec;
  auto loaded = std::make_shared<const LoadedKernel>(compile(generate(spec)));
  auto plan = std::make_shared<LaunchPlan>(loaded, spec);
  return [plan](const ForwardArgs& a) { plan->launch_forward(a, nullptr); };
}

}  // namespace flashbias::cli
