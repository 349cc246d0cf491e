// Conversions between the runtime's types and the cache's records: one place that knows how a
// CompiledKernel becomes a KernelRecord and back, and how a DeviceInfo becomes the fingerprint
// that keys tuning results. Used by the tuner (storing winners) and the store hooks (loading).
#pragma once

#include <string_view>

#include "cache/records.h"
#include "generator/kernel_source.h"
#include "runtime/compiler.h"
#include "runtime/device.h"

namespace flashbias::tuner {

/// The device fingerprint of tuning keys: name, SM count, compute capability, driver.
cache::DeviceFingerprint fingerprint(const DeviceInfo& device);

/// "13.0" (CompiledKernel::nvrtc_version) -> cache::cuda_version(13, 0). Throws
/// Error(invalid_argument) naming the text when it is not "<major>.<minor>".
int nvrtc_version_number(std::string_view text);

/// The record to store for a freshly compiled kernel (key from its source, options, NVRTC version,
/// arch and templates hash). `driver_version` is 0 when compiled without a GPU.
cache::KernelRecord kernel_record(const KernelSource& source, const CompiledKernel& kernel, int driver_version);

/// A stored kernel as the runtime loads it. `spec` is the spec the caller asked for (the record's
/// spec text must name it: a mismatch is Error(cache_error), never a silently wrong kernel).
CompiledKernel compiled_kernel(const cache::KernelRecord& record, const KernelSpec& spec);

}  // namespace flashbias::tuner
