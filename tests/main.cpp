// Test runner. `--require-gpu` (used by the CTest entry of the gpu label) makes the binary exit
// with 77, which CTest reports as skipped, when no CUDA device can be used, after saying why.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <vector>

#include "runtime/driver_api.h"

int main(int argc, char** argv) {
  std::vector<char*> args;
  bool require_gpu = false;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--require-gpu") == 0) require_gpu = true;
    else args.push_back(argv[i]);
  }
  if (require_gpu && !flashbias::driver::available()) {
    std::string why;
    try {
      flashbias::driver::api();
    } catch (const std::exception& e) {
      why = e.what();
    }
    std::printf("SKIPPED: the gpu tests need a CUDA device: %s\n", why.c_str());
    return 77;
  }
  return Catch::Session().run(int(args.size()), args.data());
}
