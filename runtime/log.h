// Tiny diagnostic log for dispatch decisions. FLASHBIAS_LOG=error|warn|info|debug (read once)
// selects what reaches stderr; unset or "off" prints nothing. Callers test log_enabled() first so
// that a disabled log costs one relaxed load and formats nothing on the hot path.
#pragma once

#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace flashbias {

enum class LogLevel : int { off = 0, error = 1, warn = 2, info = 3, debug = 4 };

/// The level chosen by FLASHBIAS_LOG (parsed on first use; an unknown value means info, so a
/// typo still shows something rather than silently nothing).
LogLevel log_level() noexcept;
/// Override the level (tests, the CLI's --verbose).
void set_log_level(LogLevel level) noexcept;
inline bool log_enabled(LogLevel level) noexcept { return level != LogLevel::off && level <= log_level(); }

/// Write one line "flashbias[<level>]: <message>" to stderr; lines from threads never interleave.
void log_write(LogLevel level, std::string_view message) noexcept;

template <class... Args>
void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (!log_enabled(level)) return;
  log_write(level, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace flashbias
