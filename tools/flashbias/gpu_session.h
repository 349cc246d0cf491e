// What every GPU subcommand needs: a current primary context on the chosen device, a Context,
// and a way to launch either the dispatcher's choice or one forced tile configuration.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "runtime/compiler.h"

#include "flashbias/flashbias.hpp"
#include "generator/problem_key.h"
#include "runtime/device.h"
#include "runtime/launch_plan.h"

namespace flashbias::cli {

class GpuSession {
 public:
  /// `portable`: run the portable (sm80) kernel family even where a faster one exists (sm_90a).
  explicit GpuSession(int device, bool portable = false);
  const DeviceInfo& device() const { return device_; }
  Context& context() { return *context_; }
  /// A launcher for `args`-shaped problems: the dispatcher's kernel, or (with `tile`) that tile
  /// compiled and loaded here. The returned plan is kept alive by the launcher.
  std::function<void(const ForwardArgs&)> launcher(const ForwardArgs& args, const std::optional<TileConfig>& tile,
                                                   KernelSpec* chosen = nullptr);
  /// Every tile the variant table allows for `args` on this device.
  std::vector<TileConfig> legal_tiles(const ForwardArgs& args) const;
  /// Compile the given tiles for `args` in parallel (one NVRTC program per hardware thread), so
  /// that launcher() finds them compiled.
  void precompile(const ForwardArgs& args, const std::vector<std::optional<TileConfig>>& tiles);

 private:
  DeviceInfo device_;
  std::unique_ptr<Context> context_;
  std::unordered_map<KernelSpec, std::shared_ptr<const CompiledKernel>> compiled_;
};

}  // namespace flashbias::cli
