// The bundle format against a checked-in file (STYLE 8): tests/cache/golden/bundle_v1.fbbundle was
// written by `flashbias bundle export -o bundle_v1.fbbundle --arch sm_80 --problem
// "b=1,h=1,n=64,d=32,r=1"` (format version 1, 2026-11-24). Every later build must still open and
// verify it; a format change that cannot must bump kBundleFormatVersion and add a new golden file.
#include <catch2/catch.hpp>

#include <filesystem>

#include "cache/bundle.h"
#include "flashbias/flashbias.hpp"

namespace flashbias::cache {
namespace {
std::filesystem::path golden_bundle() {
  return std::filesystem::path(__FILE__).parent_path() / "golden" / "bundle_v1.fbbundle";
}
}  // namespace

TEST_CASE("the golden v1 bundle opens, verifies and describes itself", "[cpu][cache][bundle]") {
  REQUIRE(std::filesystem::exists(golden_bundle()));
  const auto bundle = Bundle::open(golden_bundle());
  const BundleInfo& info = bundle->info();
  CHECK(info.format_version == 1);
  CHECK(info.archs == std::vector<std::string>{"sm_80"});
  CHECK(info.meta.at("bundle_format") == kBundleFormat);
  CHECK(info.stats.kernel_count == 1);
  CHECK(bundle->has_arch("sm_80"));
  CHECK_FALSE(bundle->has_arch("sm_90a"));

  const BundleVerifyReport report = verify_bundle(golden_bundle());
  INFO((report.problems.empty() ? std::string() : report.problems.front()));
  CHECK(report.ok());
  CHECK(report.blobs_checked == 1);

  const std::vector<KernelRecord> kernels = bundle->store().list_kernels();
  REQUIRE(kernels.size() == 1);
  CHECK(kernels[0].spec.rfind("sm_80_fwd_f16_d32_r1_none_bc0_a16.2/", 0) == 0);
}

TEST_CASE("the golden bundle is refused for an arch it does not carry", "[cpu][cache][bundle]") {
  BundleOpenOptions opts;
  opts.require_arch = "sm_90a";
  try {
    Bundle::open(golden_bundle(), opts);
    FAIL("a bundle without sm_90a was opened for sm_90a");
  } catch (const flashbias::Error& e) {
    CHECK(e.code() == ErrorCode::cache_error);
    CHECK(std::string(e.what()).find("sm_90a") != std::string::npos);
  }
}

}  // namespace flashbias::cache
