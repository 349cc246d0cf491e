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

// flashbias_context_options mirrors ContextOptions; its policy values are Policy's.
static_assert(FLASHBIAS_POLICY_HEURISTIC == static_cast<int>(Policy::heuristic));
static_assert(FLASHBIAS_POLICY_TUNE == static_cast<int>(Policy::tune));
static_assert(FLASHBIAS_POLICY_CACHE_ONLY == static_cast<int>(Policy::cache_only));

TEST_CASE("C ABI context options: defaults, validation of each field, creation", "[cpu][runtime][c_api]") {
  flashbias_context_options opts;
  opts.device = 5, opts.policy = 9, opts.check_pointers = 7, opts.portable = 7;
  flashbias_context_options_init(&opts);
  const ContextOptions cpp;  // the C defaults are the C++ ones
  CHECK(opts.device == -1);
  CHECK(opts.device == cpp.device);
  CHECK(opts.policy == FLASHBIAS_POLICY_HEURISTIC);
  CHECK(opts.policy == static_cast<int>(cpp.policy));
  CHECK(opts.check_pointers == 1);
  CHECK(cpp.check_pointers);
  CHECK(opts.portable == 0);
  CHECK_FALSE(cpp.portable);
  flashbias_context_options_init(nullptr);  // a no-op

  flashbias_context* ctx = reinterpret_cast<flashbias_context*>(0x1);
  CHECK(flashbias_context_create_with_options(&opts, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "out is null");
  CHECK(flashbias_context_create_with_options(nullptr, &ctx) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "opts is null");
  CHECK(ctx == nullptr);
  CHECK(flashbias_context_create_with_options(nullptr, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "out is null");

  struct Bad {
    const char* field;
    void (*set)(flashbias_context_options&);
    const char* message;
  };
  const Bad bad[] = {
      {"device", [](flashbias_context_options& o) { o.device = -2; },
       "device has the invalid value -2 (a CUDA ordinal >= 0, or -1 for the current context's device)"},
      {"policy", [](flashbias_context_options& o) { o.policy = 3; },
       "policy has the invalid value 3 (heuristic = 0, tune = 1, cache_only = 2)"},
      {"policy", [](flashbias_context_options& o) { o.policy = -1; },
       "policy has the invalid value -1 (heuristic = 0, tune = 1, cache_only = 2)"},
      {"check_pointers", [](flashbias_context_options& o) { o.check_pointers = 2; },
       "check_pointers has the invalid value 2 (0 = off, 1 = on)"},
      {"check_pointers", [](flashbias_context_options& o) { o.check_pointers = -1; },
       "check_pointers has the invalid value -1 (0 = off, 1 = on)"},
      {"portable", [](flashbias_context_options& o) { o.portable = 2; },
       "portable has the invalid value 2 (0 = off, 1 = on)"},
  };
  for (const Bad& b : bad) {
    INFO(b.field);
    flashbias_context_options o;
    flashbias_context_options_init(&o);
    b.set(o);
    ctx = reinterpret_cast<flashbias_context*>(0x1);
    CHECK(flashbias_context_create_with_options(&o, &ctx) == FLASHBIAS_INVALID_ARGUMENT);
    CHECK(ctx == nullptr);
    CHECK(std::string(flashbias_last_error()) == b.message);
  }
  // The plain create validates device and policy the same way (one shared check).
  CHECK(flashbias_context_create(-2, FLASHBIAS_POLICY_HEURISTIC, &ctx) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK_THAT(flashbias_last_error(), Catch::Matchers::StartsWith("device has the invalid value -2"));
  CHECK(flashbias_context_create(0, 3, &ctx) == FLASHBIAS_INVALID_ARGUMENT);
  CHECK(std::string(flashbias_last_error()) == "policy has the invalid value 3 (heuristic = 0, tune = 1, cache_only = 2)");

  // Every valid combination gets past validation: without a GPU creation says no_gpu, as
  // flashbias_context_create does; with one it succeeds.
  for (int check = 0; check <= 1; ++check) {
    for (int portable = 0; portable <= 1; ++portable) {
      INFO("check_pointers " << check << ", portable " << portable);
      flashbias_context_options o;
      flashbias_context_options_init(&o);
      o.check_pointers = check;
      o.portable = portable;
      ctx = reinterpret_cast<flashbias_context*>(0x1);
      const flashbias_status st = flashbias_context_create_with_options(&o, &ctx);
      if (!driver::available()) {
        CHECK(st == FLASHBIAS_NO_GPU);
        CHECK(ctx == nullptr);
        CHECK_THAT(flashbias_last_error(), Catch::Matchers::StartsWith("no GPU:"));
      } else {
        REQUIRE(st == FLASHBIAS_OK);
        CHECK(ctx != nullptr);
        CHECK(std::string(flashbias_last_error()).empty());
        flashbias_context_destroy(ctx);
      }
    }
  }
}

TEST_CASE("the C ABI's last error is per thread", "[cpu][runtime][c_api]") {
  CHECK(flashbias_forward(nullptr, nullptr, nullptr) == FLASHBIAS_INVALID_ARGUMENT);
  std::string other;
  std::thread([&] { other = flashbias_last_error(); }).join();
  CHECK(other.empty());
  CHECK(std::string(flashbias_last_error()) == "ctx is null");
}

}  // namespace flashbias
