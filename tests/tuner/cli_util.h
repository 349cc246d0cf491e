// Running the `flashbias` CLI from tests: $FLASHBIAS_CLI if set, else a `flashbias` beside the
// test binary (carry/ on the GPU machine), else the build root one level above it
// (build/tests/flashbias_tests -> build/flashbias).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <initializer_list>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace flashbias::test {

inline std::filesystem::path cli_path() {
  if (const char* env = std::getenv("FLASHBIAS_CLI"); env != nullptr && *env != '\0') return env;
  const std::filesystem::path dir = std::filesystem::canonical("/proc/self/exe").parent_path();
  if (std::filesystem::exists(dir / "flashbias")) return dir / "flashbias";
  return dir.parent_path() / "flashbias";
}

struct CliResult {
  int status = -1;     ///< exit code
  std::string output;  ///< stdout (and stderr when merged)
};

/// Run `env flashbias args` through the shell; `args` is pasted as is (quote it yourself).
/// stderr is merged into output unless `stdout_only`.
inline CliResult run_cli(const std::string& env, const std::string& args, bool stdout_only = false) {
  const std::string cmd = env + " '" + cli_path().string() + "' " + args + (stdout_only ? " 2>/dev/null" : " 2>&1");
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) throw std::runtime_error("popen failed: " + cmd);
  CliResult r;
  std::array<char, 4096> buf{};
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), f)) r.output.append(buf.data(), n);
  const int status = ::pclose(f);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

/// `env flashbias args` ends as a usage error (exit 2) whose message holds every one of `what`.
inline void check_refused(const std::string& env, const std::string& args, std::initializer_list<const char*> what) {
  const CliResult r = run_cli(env, args);
  INFO("flashbias " << args << "\n" << r.output);
  CHECK(r.status == 2);
  for (const char* w : what) CHECK_THAT(r.output, Catch::Matchers::Contains(w));
}

}  // namespace flashbias::test
