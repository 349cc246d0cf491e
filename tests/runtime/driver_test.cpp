// The driver loader, Context creation and the C ABI's error mapping. Written to pass both on
// machines without a GPU (the error paths) and with one.
#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <thread>

#include "flashbias/flashbias.h"
#include "flashbias/flashbias.hpp"
#include "runtime/device.h"
#include "runtime/driver_api.h"

namespace flashbias {

// The C statuses mirror ErrorCode value for value.
static_assert(FLASHBIAS_OK == static_cast<int>(ErrorCode::ok));
static_assert(FLASHBIAS_INVALID_ARGUMENT == static_cast<int>(ErrorCode::invalid_argument));
static_assert(FLASHBIAS_UNSUPPORTED == static_cast<int>(ErrorCode::unsupported));
static_assert(FLASHBIAS_NO_GPU == static_cast<int>(ErrorCode::no_gpu));
static_assert(FLASHBIAS_DRIVER_ERROR == static_cast<int>(ErrorCode::driver_error));
static_assert(FLASHBIAS_NVRTC_UNAVAILABLE == static_cast<int>(ErrorCode::nvrtc_unavailable));
static_assert(FLASHBIAS_COMPILE_FAILED == static_cast<int>(ErrorCode::compile_failed));
static_assert(FLASHBIAS_LAUNCH_FAILED == static_cast<int>(ErrorCode::launch_failed));
static_assert(FLASHBIAS_CACHE_ERROR == static_cast<int>(ErrorCode::cache_error));
static_assert(FLASHBIAS_NOT_FOUND == static_cast<int>(ErrorCode::not_found));
static_assert(FLASHBIAS_INTERNAL == static_cast<int>(ErrorCode::internal));

TEST_CASE("driver loader: no_gpu with a clear message, or a usable driver", "[cpu][runtime][driver]") {
  if (driver::available()) {
    const driver::Api& d = driver::api();
    CHECK(d.device_count > 0);
    CHECK(d.driver_version >= 12000);
    const auto devices = list_devices();
    REQUIRE(devices.size() == static_cast<std::size_t>(d.device_count));
    CHECK_FALSE(devices[0].name.empty());
    CHECK(devices[0].sm_count > 0);
    return;
  }
  try {
    driver::api();
    FAIL("driver::api() succeeded although available() said no");
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == ErrorCode::no_gpu);
    CHECK_THAT(e.what(), Catch::Matchers::StartsWith("no GPU:"));
  }
  CHECK_THROWS_AS(list_devices(), Error);
  try {
    Context ctx;
    FAIL("a Context was created without a GPU");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::no_gpu);
  }
}

TEST_CASE("arch of a device", "[cpu][runtime][driver]") {
  CHECK(arch_for_compute_capability(8, 0) == Arch{80, false});
  CHECK(arch_for_compute_capability(8, 6) == Arch{86, false});
  CHECK(arch_for_compute_capability(8, 9) == Arch{89, false});
  CHECK(arch_for_compute_capability(9, 0) == Arch{90, true});
}

TEST_CASE("ErrorCode names", "[cpu][runtime]") {
  std::set<std::string> names;
  for (int c = 0; c <= static_cast<int>(ErrorCode::internal); ++c) names.insert(to_string(static_cast<ErrorCode>(c)));
  CHECK(names.size() == 11);
  CHECK(std::string(to_string(ErrorCode::no_gpu)) == "no_gpu");
  CHECK(std::string(to_string(ErrorCode::compile_failed)) == "compile_failed");
}

TEST_CASE("C ABI maps errors to statuses and keeps the message", "[cpu][runtime][c_api]") {
  CHECK(std::string(flashbias_version()).size() > 0);
  CHECK(std::string(flashbias_status_string(FLASHBIAS_NO_GPU)) == "no GPU");
  CHECK(std::string(flashbias_status_string(static_cast<flashbias_status>(99))) == "unknown status");

  CHECK(flashbias_context_create(-1, FLASHBIAS_POLICY_HEURISTIC, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "out is null");

  flashbias_context* ctx = reinterpret_cast<flashbias_context*>(0x1);
  CHECK(flashbias_context_create(0, 7, &ctx) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(ctx == nullptr);
  CHECK_THAT(flashbias_last_error(), Catch::Matchers::Contains("policy"));

  flashbias_forward_args args{};
  CHECK(flashbias_forward(nullptr, &args, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "ctx is null");

  if (!driver::available()) {
    CHECK(flashbias_context_create(-1, FLASHBIAS_POLICY_HEURISTIC, &ctx) == FLASHBIAS_NO_GPU);
    CHECK(ctx == nullptr);
    CHECK_THAT(flashbias_last_error(), Catch::Matchers::StartsWith("no GPU:"));
    flashbias_context_destroy(nullptr);  // a no-op
    return;
  }
  REQUIRE(flashbias_context_create(-1, FLASHBIAS_POLICY_HEURISTIC, &ctx) == FLASHBIAS_OK);
  CHECK(std::string(flashbias_last_error()).empty());
  CHECK(flashbias_forward(ctx, nullptr, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "args is null");
  args.dtype = 1000;
  CHECK(flashbias_forward(ctx, &args, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK_THAT(flashbias_last_error(), Catch::Matchers::Contains("dtype"));
  args.dtype = FLASHBIAS_F16;
  CHECK(flashbias_forward(ctx, &args, nullptr) == FLASHBIAS_INVALID_ARGUMENT);  // batch 0
  CHECK_THAT(flashbias_last_error(), Catch::Matchers::Contains("batch must be > 0"));
  flashbias_context_destroy(ctx);
}

TEST_CASE("the C ABI's last error is per thread", "[cpu][runtime][c_api]") {
  CHECK(flashbias_forward(nullptr, nullptr, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  std::string other;
  std::thread([&] { other = flashbias_last_error(); }).join();
  CHECK(other.empty());
  CHECK(std::string(flashbias_last_error()) == "ctx is null");
}

}  // namespace flashbias
