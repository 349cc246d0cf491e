#include "runtime/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace flashbias {
namespace {

// -1: not yet read from the environment.
std::atomic<int> g_level{-1};

LogLevel parse_env() noexcept {
  const char* env = std::getenv("FLASHBIAS_LOG");
  if (env == nullptr || *env == '\0') return LogLevel::off;
  const std::string_view v(env);
  if (v == "off" || v == "0" || v == "none") return LogLevel::off;
  if (v == "error") return LogLevel::error;
  if (v == "warn" || v == "warning") return LogLevel::warn;
  if (v == "debug" || v == "trace") return LogLevel::debug;
  return LogLevel::info;
}

const char* level_name(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::error: return "error";
    case LogLevel::warn: return "warn";
    case LogLevel::info: return "info";
    case LogLevel::debug: return "debug";
    case LogLevel::off: break;
  }
  return "off";
}

}  // namespace

LogLevel log_level() noexcept {
  int level = g_level.load(std::memory_order_relaxed);
  if (level < 0) {
    // Racing first readers parse the same environment and store the same value.
    level = static_cast<int>(parse_env());
    g_level.store(level, std::memory_order_relaxed);
  }
  return static_cast<LogLevel>(level);
}

void set_log_level(LogLevel level) noexcept { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }

void log_write(LogLevel level, std::string_view message) noexcept {
  // Function-local and never destroyed: logging from static destructors stays safe.
  static std::mutex* mutex = new std::mutex;
  std::lock_guard<std::mutex> lock(*mutex);
  std::fprintf(stderr, "flashbias[%s]: %.*s\n", level_name(level), static_cast<int>(message.size()), message.data());
}

}  // namespace flashbias
