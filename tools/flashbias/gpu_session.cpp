#include "gpu_session.h"

#include <future>
#include <thread>

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
  const unsigned jobs = std::max(1u, std::thread::hardware_concurrency());
  for (std::size_t begin = 0; begin < todo.size(); begin += jobs) {
    std::vector<std::future<std::shared_ptr<const CompiledKernel>>> batch;
    for (std::size_t i = begin; i < std::min(todo.size(), begin + jobs); ++i)
      batch.push_back(std::async(std::launch::async, [spec = todo[i]] {
        return std::make_shared<const CompiledKernel>(compile(generate(spec)));
      }));
    for (std::size_t i = 0; i < batch.size(); ++i) compiled_[todo[begin + i]] = batch[i].get();
  }
}

}  // namespace flashbias::cli
