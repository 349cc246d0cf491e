#include "runtime/device.h"

#include <fmt/format.h>

#include "runtime/driver_api.h"

namespace flashbias {

Arch arch_for_compute_capability(int major, int minor) {
  Arch arch;
  arch.sm = major * 10 + minor;
  arch.a = arch.sm == 90;
  return arch;
}

DeviceInfo query_device(int ordinal) {
  const driver::Api& d = driver::api();
  if (ordinal < 0 || ordinal >= d.device_count) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("device ordinal {} is out of range: {} CUDA device(s) visible", ordinal, d.device_count));
  }
  CUdevice dev = 0;
  driver::check(d.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
  auto attr = [&](CUdevice_attribute a, const char* what) {
    int value = 0;
    if (CUresult r = d.cuDeviceGetAttribute(&value, a, dev); r != CUDA_SUCCESS) {
      throw Error(ErrorCode::driver_error, fmt::format("cuDeviceGetAttribute({}) failed for device {}: {}", what,
                                                       ordinal, driver::error_text(r)));
    }
    return value;
  };
  DeviceInfo info;
  info.ordinal = ordinal;
  char name[256] = {};
  driver::check(d.cuDeviceGetName(name, static_cast<int>(sizeof(name) - 1), dev), "cuDeviceGetName");
  info.name = name;
  info.arch = arch_for_compute_capability(attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability major"),
                                          attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability minor"));
  info.sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "multiprocessor count");
  info.max_smem_per_block_optin = static_cast<std::size_t>(
      attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "max shared memory per block (opt-in)"));
  info.smem_per_sm = static_cast<std::size_t>(
      attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, "max shared memory per multiprocessor"));
  info.regs_per_sm = attr(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR, "registers per multiprocessor");
  info.regs_per_block = attr(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, "registers per block");
  info.max_threads_per_block = attr(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "max threads per block");
  info.clock_rate_khz = attr(CU_DEVICE_ATTRIBUTE_CLOCK_RATE, "clock rate");
  info.memory_clock_rate_khz = attr(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, "memory clock rate");
  info.memory_bus_width_bits = attr(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, "memory bus width");
  std::size_t total = 0;
  driver::check(d.cuDeviceTotalMem(&total, dev), "cuDeviceTotalMem");
  info.total_memory = total;
  info.driver_version = d.driver_version;
  return info;
}

std::vector<DeviceInfo> list_devices() {
  const driver::Api& d = driver::api();  // throws no_gpu when there is no device
  std::vector<DeviceInfo> devices;
  devices.reserve(static_cast<std::size_t>(d.device_count));
  for (int i = 0; i < d.device_count; ++i) devices.push_back(query_device(i));
  return devices;
}

}  // namespace flashbias
