// kernel_key for a generated KernelSource. Apart from records.cpp so that code using only the
// string form does not pull the generator in.
#include "cache/records.h"
#include "generator/kernel_source.h"

namespace flashbias::cache {

std::string kernel_key(const KernelSource& source, int nvrtc_version) {
  return kernel_key(source.source, source.options, nvrtc_version, source.spec.key.arch.name(),
                    templates_hash());
}

}  // namespace flashbias::cache
