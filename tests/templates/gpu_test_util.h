// Helpers shared by the GPU kernel tests (forward_test.cpp, backward_test.cpp).
#pragma once

#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
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

/// A problem size of a test matrix.
struct MatrixShape {
  std::int64_t nq, nk, b, h;
};

/// A test matrix: dtype x D x R x causal, each combination on one shape drawn (deterministically,
/// by rotation) from `shapes`, and the four factor broadcast patterns rotating for Qb with the
/// case index and for Kb with every fourth case (offset by `kb_shift`), so that every size and
/// pattern meets every kernel class.
inline std::vector<Case> rotation_matrix(const std::vector<int>& ds, const std::vector<int>& rs,
                                         const std::vector<MatrixShape>& shapes, int kb_shift) {
  const FactorLayout layouts[] = {{false, false}, {true, false}, {false, true}, {true, true}};
  std::vector<Case> out;
  int i = 0;
  for (DType dt : {DType::f16, DType::bf16})
    for (int d : ds)
      for (int r : rs)
        for (MaskKind m : {MaskKind::none, MaskKind::causal}) {
          const MatrixShape& s = shapes[std::size_t(i) % shapes.size()];
          ProblemSpec p;
          p.dtype = dt;
          p.batch = s.b;
          p.heads = s.h;
          p.seqlen_q = s.nq;
          p.seqlen_k = s.nk;
          p.head_dim = d;
          p.rank = r;
          p.mask = m;
          if (r > 0) {
            p.qb_layout = layouts[i % 4];
            p.kb_layout = layouts[(i / 4 + kb_shift) % 4];
          }
          out.push_back({p, to_string(p)});
          ++i;
        }
  return out;
}

/// Runs check(case, seed) for every case on `threads` host threads, each with the device's
/// primary context current, so that first-call compilations of different keys overlap. `check`
/// returns an empty string on a pass, else the failure's text; a throw counts as a failure too.
/// Every failure is reported with its case and seed.
template <class Check>
void run_parallel(const std::vector<Case>& cases, unsigned threads, Check&& check) {
  activate_primary_context(0);
  std::atomic<std::size_t> next{0};
  std::mutex mu;
  std::vector<std::string> failures;
  std::atomic<int> passed{0};
  auto worker = [&] {
    activate_primary_context(0);
    for (std::size_t i = next++; i < cases.size(); i = next++) {
      const Case& c = cases[i];
      const std::uint64_t seed = fresh_seed() + i;
      std::string failure;
      try {
        failure = check(c, seed);
      } catch (const std::exception& e) {
        failure = fmt::format("threw {}", e.what());
      }
      if (failure.empty()) {
        ++passed;
      } else {
        std::lock_guard<std::mutex> lock(mu);
        failures.push_back(fmt::format("{} seed {}: {}", c.label, seed, failure));
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  for (const std::string& f : failures) UNSCOPED_INFO(f);
  INFO(fmt::format("{} of {} cases passed", passed.load(), cases.size()));
  CHECK(failures.empty());
  CHECK(passed.load() == int(cases.size()));
}

}  // namespace flashbias::test
