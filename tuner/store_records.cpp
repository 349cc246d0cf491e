#include "tuner/store_records.h"

#include <fmt/format.h>

#include <charconv>

#include "flashbias/flashbias.hpp"

namespace flashbias::tuner {

cache::DeviceFingerprint fingerprint(const DeviceInfo& device) {
  cache::DeviceFingerprint f;
  f.name = device.name;
  f.sm_count = device.sm_count;
  f.cc_major = device.arch.sm / 10;
  f.cc_minor = device.arch.sm % 10;
  // cuDriverGetVersion already uses the major * 1000 + minor * 10 encoding of cache::cuda_version.
  f.driver_version = device.driver_version;
  return f;
}

int nvrtc_version_number(std::string_view text) {
  int major = 0, minor = 0;
  const char* p = text.data();
  const char* end = text.data() + text.size();
  auto [p1, e1] = std::from_chars(p, end, major);
  if (e1 != std::errc{} || p1 == end || *p1 != '.')
    throw Error(ErrorCode::invalid_argument, fmt::format("NVRTC version '{}' is not <major>.<minor>", text));
  auto [p2, e2] = std::from_chars(p1 + 1, end, minor);
  if (e2 != std::errc{} || p2 != end)
    throw Error(ErrorCode::invalid_argument, fmt::format("NVRTC version '{}' is not <major>.<minor>", text));
  return cache::cuda_version(major, minor);
}

cache::KernelRecord kernel_record(const KernelSource& source, const CompiledKernel& kernel, int driver_version) {
  cache::KernelRecord r;
  const int nvrtc = nvrtc_version_number(kernel.nvrtc_version);
  r.key = cache::kernel_key(source, nvrtc);
  r.spec = kernel.spec.str();
  r.arch = kernel.spec.key.arch.name();
  r.nvrtc_version = nvrtc;
  r.driver_version = driver_version;
  r.templates_hash = templates_hash();
  for (const std::string& o : source.options) {
    if (!r.options.empty()) r.options += '\n';
    r.options += o;
  }
  r.entry = kernel.entry;
  r.threads = kernel.threads;
  r.smem_bytes = static_cast<std::int64_t>(kernel.smem_bytes);
  r.registers = kernel.resources.registers;
  r.spill_store_bytes = kernel.resources.spill_store_bytes;
  r.spill_load_bytes = kernel.resources.spill_load_bytes;
  r.stack_bytes = kernel.resources.stack_frame_bytes;
  r.compile_ms = kernel.compile_ms;
  r.cubin.assign(kernel.cubin.begin(), kernel.cubin.end());
  return r;
}

CompiledKernel compiled_kernel(const cache::KernelRecord& record, const KernelSpec& spec) {
  if (record.spec != spec.str()) {
    throw Error(ErrorCode::cache_error, fmt::format("stored kernel {} is for spec {}, not the requested {}",
                                                    record.key, record.spec, spec.str()));
  }
  CompiledKernel k;
  k.spec = spec;
  k.entry = record.entry;
  k.cubin.assign(record.cubin.begin(), record.cubin.end());
  k.threads = record.threads;
  k.smem_bytes = static_cast<std::size_t>(record.smem_bytes);
  k.resources.registers = record.registers;
  k.resources.spill_store_bytes = record.spill_store_bytes;
  k.resources.spill_load_bytes = record.spill_load_bytes;
  k.resources.stack_frame_bytes = record.stack_bytes;
  k.compile_ms = record.compile_ms;
  k.nvrtc_version = fmt::format("{}.{}", record.nvrtc_version / 1000, (record.nvrtc_version % 1000) / 10);
  return k;
}

}  // namespace flashbias::tuner
