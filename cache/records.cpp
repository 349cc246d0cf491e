#include "cache/records.h"

#include <fmt/format.h>

#include "cache/sha256.h"
#include "flashbias/flashbias.hpp"

namespace flashbias::cache {

std::string kernel_key(std::string_view source, const std::vector<std::string>& options,
                       int nvrtc_version, std::string_view arch, std::string_view templates_hash) {
  Sha256 h;
  // Each field as "<tag><length>:<bytes>": unambiguous, so ("ab", "c") and ("a", "bc") differ.
  auto field = [&h](char tag, std::string_view bytes) {
    const std::string head = fmt::format("{}{}:", tag, bytes.size());
    h.update(head);
    h.update(bytes);
  };
  field('V', "flashbias-kernel-key-1");  // bump if the key's inputs ever change
  field('S', source);
  field('O', std::to_string(options.size()));
  for (const auto& o : options) field('o', o);
  field('N', std::to_string(nvrtc_version));
  field('A', arch);
  field('T', templates_hash);
  return h.hex_digest();
}

const char* to_string(Outcome o) noexcept {
  switch (o) {
    case Outcome::passed: return "passed";
    case Outcome::incorrect: return "incorrect";
    case Outcome::compile_failed: return "compile_failed";
    case Outcome::launch_failed: return "launch_failed";
    case Outcome::not_supported: return "not_supported";
  }
  return "?";
}

Outcome parse_outcome(std::string_view s) {
  for (Outcome o : {Outcome::passed, Outcome::incorrect, Outcome::compile_failed, Outcome::launch_failed,
                    Outcome::not_supported}) {
    if (s == to_string(o)) return o;
  }
  throw Error(ErrorCode::invalid_argument,
              fmt::format("unknown tuning outcome '{}' (expected passed, incorrect, compile_failed, "
                          "launch_failed or not_supported)",
                          s));
}

std::string DeviceFingerprint::str() const {
  return fmt::format("{}|sm{}|cc{}.{}|drv{}", name, sm_count, cc_major, cc_minor, driver_version);
}

DeviceFingerprint DeviceFingerprint::parse(std::string_view s) {
  auto bad = [&]() {
    return Error(ErrorCode::invalid_argument,
                 fmt::format("device fingerprint '{}' is not of the form NAME|smN|ccM.m|drvV", s));
  };
  // Split from the right: the three numeric fields never contain '|', the GPU name might.
  std::string_view rest = s;
  std::string_view parts[3];
  for (int i = 2; i >= 0; --i) {
    const auto bar = rest.rfind('|');
    if (bar == std::string_view::npos) throw bad();
    parts[i] = rest.substr(bar + 1);
    rest = rest.substr(0, bar);
  }
  DeviceFingerprint d;
  d.name = std::string(rest);
  auto number = [&](std::string_view text, std::string_view prefix) {
    if (text.substr(0, prefix.size()) != prefix || text.size() == prefix.size()) throw bad();
    int v = 0;
    for (char c : text.substr(prefix.size())) {
      if (c < '0' || c > '9' || v > 100000000) throw bad();
      v = v * 10 + (c - '0');
    }
    return v;
  };
  d.sm_count = number(parts[0], "sm");
  const auto dot = parts[1].find('.');
  if (dot == std::string_view::npos) throw bad();
  d.cc_major = number(parts[1].substr(0, dot), "cc");
  d.cc_minor = number(parts[1].substr(dot + 1), "");
  d.driver_version = number(parts[2], "drv");
  if (d.name.empty()) throw bad();
  return d;
}

}  // namespace flashbias::cache
