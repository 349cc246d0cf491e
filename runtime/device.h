// What the runtime and the tuner need to know about a CUDA device.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "generator/problem_key.h"

namespace flashbias {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  Arch arch;                           ///< sm_90 devices get {90, a=true}: we compile sm_90a on Hopper
  int sm_count = 0;
  std::size_t max_smem_per_block_optin = 0;  ///< the most dynamic+static smem one CTA may opt into
  std::size_t smem_per_sm = 0;
  int regs_per_sm = 0;
  int regs_per_block = 0;
  int max_threads_per_block = 0;
  int clock_rate_khz = 0;              ///< SM clock (max boost)
  int memory_clock_rate_khz = 0;
  int memory_bus_width_bits = 0;
  std::size_t total_memory = 0;        ///< bytes
  int driver_version = 0;              ///< cuDriverGetVersion, e.g. 13000
};

/// The arch we compile for on a device of compute capability major.minor: sm_90 becomes sm_90a
/// (wgmma and setmaxnreg need the arch-specific feature set); others are taken as they are.
Arch arch_for_compute_capability(int major, int minor);

/// Query one device. Throws Error(no_gpu) without a driver, Error(invalid_argument) for an
/// ordinal out of range, Error(driver_error) if a query fails.
DeviceInfo query_device(int ordinal);

/// Every visible device. Throws Error(no_gpu) when there is none.
std::vector<DeviceInfo> list_devices();

}  // namespace flashbias
