// Helpers shared by the GPU kernel tests (forward_test.cpp, backward_test.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "generator/problem_spec.h"
#include "runtime/device.h"
#include "tuner/harness.h"

namespace flashbias::test {

/// A fresh seed per call: random inputs every run (the tests print it on failure).
inline std::uint64_t fresh_seed() {
  return std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) * 0x9E3779B97F4A7C15ull;
}

/// One problem of a test matrix and its printable label.
struct Case {
  ProblemSpec spec;
  std::string label;
};

/// The device's arch, and on Hopper also the portable family's (sm_90 without the 'a'): the
/// tests that take a DeviceInfo run every kernel family the device can run.
inline std::vector<DeviceInfo> family_devices() {
  activate_primary_context(0);
  std::vector<DeviceInfo> out{query_device(0)};
  if (out[0].arch.a) {
    out.push_back(out[0]);
    out.back().arch.a = false;
  }
  return out;
}

}  // namespace flashbias::test
