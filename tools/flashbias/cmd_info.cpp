// `flashbias info`: GPUs, driver and NVRTC versions. Exits 0 without a GPU, saying so.
#include <fmt/format.h>

#include "commands.h"
#include "generator/kernel_source.h"
#include "runtime/device.h"
#include "runtime/driver_api.h"
#include "runtime/nvrtc_api.h"

namespace flashbias::cli {

void add_info(CLI::App& app, int& rc) {
  CLI::App* cmd = app.add_subcommand("info", "GPUs (name, arch, SMs, shared memory), driver and NVRTC versions");
  cmd->callback([&rc] {
    fmt::print("flashbias 0.1.0, templates {}\n", templates_hash().substr(0, 16));
    try {
      const nvrtc::Api& n = nvrtc::api();
      fmt::print("NVRTC {} ({})\n", n.version(), n.path);
    } catch (const Error& e) {
      fmt::print("NVRTC: not available: {}\n", e.what());
    }
    if (!driver::available()) {
      std::string why;
      try {
        driver::api();
      } catch (const Error& e) {
        why = e.what();
      }
      fmt::print("GPU: none found ({})\n", why);
      rc = 0;
      return;
    }
    const driver::Api& d = driver::api();
    fmt::print("CUDA driver {}.{}\n", d.driver_version / 1000, (d.driver_version % 1000) / 10);
    for (const DeviceInfo& dev : list_devices()) {
      fmt::print("GPU {}: {} | {} | {} SMs | smem {} KiB/block (opt-in), {} KiB/SM | {} MiB | SM clock {} MHz\n",
                 dev.ordinal, dev.name, dev.arch.name(), dev.sm_count, dev.max_smem_per_block_optin / 1024,
                 dev.smem_per_sm / 1024, dev.total_memory >> 20, dev.clock_rate_khz / 1000);
    }
    rc = 0;
  });
}

}  // namespace flashbias::cli
