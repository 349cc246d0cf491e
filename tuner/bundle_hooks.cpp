#include "tuner/bundle_hooks.h"

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "cache/store.h"
#include "generator/kernel_source.h"
#include "generator/shape_bucket.h"
#include "runtime/log.h"
#include "tuner/default_hooks.h"
#include "tuner/store_records.h"

namespace fs = std::filesystem;

namespace flashbias::tuner {

ContextHooks layer_bundle_hooks(ContextHooks inner, std::vector<std::shared_ptr<cache::Bundle>> bundles,
                                const DeviceInfo& device) {
  if (bundles.empty()) return inner;
  ContextHooks h = inner;
  const std::string device_fp = fingerprint(device).str();
  auto shared = std::make_shared<const std::vector<std::shared_ptr<cache::Bundle>>>(std::move(bundles));

  h.find_tile = [inner_find = inner.find_tile, shared, device_fp](
                    const ProblemKey& key, const ShapeInfo& shape, const DeviceInfo& dev) -> std::optional<TileConfig> {
    if (inner_find)
      if (auto t = inner_find(key, shape, dev)) return t;
    const std::string bucket = shape_bucket(shape).str();
    for (const auto& b : *shared) {
      auto w = b->store().find_winner(device_fp, key.str(), bucket);
      if (!w) continue;
      try {
        TileConfig tile = TileConfig::parse(w->tile);
        if (std::string why = legality_error(key, tile, dev.max_smem_per_block_optin); !why.empty()) {
          log(LogLevel::warn, "bundle {}: winner {} for {} is not legal here ({}): ignoring it", b->info().source,
              w->tile, key.str(), why);
          continue;
        }
        log(LogLevel::info, "bundle {}: tuned tile {} for {} bucket {}", b->info().source, tile.str(), key.str(),
            bucket);
        return tile;
      } catch (const Error& e) {
        log(LogLevel::warn, "bundle {}: winner '{}' does not parse here ({}): ignoring it", b->info().source, w->tile,
            e.what());
      }
    }
    return std::nullopt;
  };

  h.find_kernel = [inner_find = inner.find_kernel, shared](const KernelSource& source) -> std::optional<CompiledKernel> {
    if (inner_find)
      if (auto k = inner_find(source)) return k;
    const KernelSpec& spec = source.spec;
    const std::string arch = spec.key.arch.name();
    for (const auto& b : *shared) {
      if (!b->has_arch(arch)) continue;
      auto rec = b->store().find_kernel(spec.str(), arch, templates_hash());
      if (!rec) continue;
      log(LogLevel::info, "bundle {}: kernel {} ({} bytes, hash verified)", b->info().source, spec.str(),
          rec->cubin.size());
      return compiled_kernel(*rec, spec);
    }
    std::string names;
    for (const auto& b : *shared) names += (names.empty() ? "" : ", ") + b->info().source;
    log(LogLevel::info, "kernel {} (arch {}) is in no bundle ({})", spec.str(), arch, names);
    return std::nullopt;
  };
  return h;
}

std::vector<fs::path> bundle_paths_from_env() {
  std::vector<fs::path> out;
  const char* env = std::getenv("FLASHBIAS_BUNDLE");
  if (env == nullptr) return out;
  std::string s(env);
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t end = s.find(':', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

namespace {

// Bundles are opened and fully verified once per process and arch, then shared by Contexts.
std::mutex& open_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::pair<std::string, std::string>, std::shared_ptr<cache::Bundle>>& opened() {
  static std::map<std::pair<std::string, std::string>, std::shared_ptr<cache::Bundle>> m;
  return m;
}

}  // namespace

std::vector<std::shared_ptr<cache::Bundle>> open_bundles_for(const DeviceInfo& device, const std::vector<fs::path>& paths,
                                                             bool include_env, bool include_embedded) {
  const std::string arch = device.arch.name();
  cache::BundleOpenOptions o;
  o.require_arch = arch;
  std::vector<std::shared_ptr<cache::Bundle>> out;
  std::lock_guard lock(open_mutex());
  auto get = [&](const std::string& id, auto&& open) {
    auto& slot = opened()[{id, arch}];
    if (!slot) {
      slot = open();
      log(LogLevel::info, "bundle {}: {} kernels, archs {}", slot->info().source, slot->info().stats.kernel_count,
          fmt::join(slot->info().archs, ","));
    }
    out.push_back(slot);
  };
  std::vector<fs::path> all = paths;
  if (include_env)
    for (auto& p : bundle_paths_from_env()) all.push_back(p);
  for (const fs::path& p : all) {
    std::error_code ec;
    fs::path canon = fs::weakly_canonical(p, ec);
    get("file:" + (ec ? p.string() : canon.string()), [&] { return cache::Bundle::open(p, o); });
  }
  if (include_embedded) {
    for (const cache::EmbeddedBundle& e : cache::embedded_bundles()) {
      get(fmt::format("mem:{}:{}", e.data, e.size),
          [&] { return cache::Bundle::open_memory(e.data, e.size, e.name, cache::Ownership::borrow, o); });
    }
  }
  return out;
}

void install_bundle_hooks(Context& context, const std::vector<fs::path>& paths, std::shared_ptr<cache::Store> store) {
  ContextImpl& impl = context.impl();
  ContextHooks inner;
  if (store) inner = make_store_hooks(std::move(store), impl.device(), hook_options_from_env(impl.options().policy));
  impl.set_hooks(layer_bundle_hooks(std::move(inner), open_bundles_for(impl.device(), paths), impl.device()));
}

void enable_bundle_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    DefaultHooksFactory previous = set_default_hooks_factory(nullptr);
    set_default_hooks_factory([previous](const ContextImpl& ctx) -> ContextHooks {
      ContextHooks inner = previous ? previous(ctx) : ContextHooks{};
      return layer_bundle_hooks(std::move(inner), open_bundles_for(ctx.device(), {}), ctx.device());
    });
  });
}

}  // namespace flashbias::tuner
