#include "cache/location.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "flashbias/flashbias.hpp"

namespace flashbias::cache {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string home_dir() {
  if (std::string h = env("HOME"); !h.empty()) return h;
  // Services started without HOME (systemd units, some containers) still have a passwd entry.
  if (const passwd* pw = getpwuid(geteuid()); pw && pw->pw_dir && *pw->pw_dir) return pw->pw_dir;
  return {};
}

}  // namespace

CacheLocation default_location() {
  namespace fs = std::filesystem;
  CacheLocation loc;
  if (std::string d = env("FLASHBIAS_CACHE_DIR"); !d.empty()) {
    loc.dir = fs::path(d);
    loc.source = "FLASHBIAS_CACHE_DIR";
  } else if (std::string x = env("XDG_CACHE_HOME"); !x.empty() && fs::path(x).is_absolute()) {
    loc.dir = fs::path(x) / "flashbias";
    loc.source = "XDG_CACHE_HOME";
  } else {
    const std::string home = home_dir();
    if (home.empty()) {
      throw Error(ErrorCode::cache_error,
                  "flashbias cache: no location: FLASHBIAS_CACHE_DIR, XDG_CACHE_HOME and HOME are unset "
                  "and the user has no home directory; set FLASHBIAS_CACHE_DIR");
    }
    loc.dir = fs::path(home) / ".cache" / "flashbias";
    loc.source = "HOME";
  }
  loc.db = loc.dir / "flashbias.db";
  return loc;
}

void ensure_private_dir(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  if (dir.empty()) return;  // the current directory: the caller chose it explicitly
  const fs::path abs = fs::absolute(dir).lexically_normal();
  // Create missing components one by one so that each gets 0700 whatever the umask; mkdir's
  // mode is filtered by the umask, so chmod afterwards, but only directories created here.
  fs::path partial;
  for (const auto& part : abs) {
    partial /= part;
    if (partial == partial.root_path()) continue;
    if (::mkdir(partial.c_str(), 0700) == 0) {
      if (::chmod(partial.c_str(), 0700) != 0) {
        const int err = errno;
        throw Error(ErrorCode::cache_error,
                    fmt::format("flashbias cache: cannot set mode 0700 on {}: {}", partial.string(),
                                std::strerror(err)));
      }
    } else if (errno != EEXIST) {
      const int err = errno;
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache: cannot create directory {}: {}", partial.string(),
                              std::strerror(err)));
    }
  }
  struct stat st {};
  if (::stat(abs.c_str(), &st) != 0) {
    const int err = errno;
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache: cannot stat {}: {}", abs.string(), std::strerror(err)));
  }
  if (!S_ISDIR(st.st_mode)) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache: {} exists and is not a directory", abs.string()));
  }
  const uid_t me = geteuid();
  // A root-owned directory passes when nobody else can write it (checked next): for a normal
  // user it is then merely read-only, which the open reports as an unwritable location.
  if (st.st_uid != me && st.st_uid != 0) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache: {} is owned by uid {}, not by this user (uid {}); cached "
                            "kernels are executable code, so the cache directory must be private",
                            abs.string(), st.st_uid, me));
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache: {} is writable by group or others (mode {:o}); cached "
                            "kernels are executable code, so refuse it: chmod 700 it or set "
                            "FLASHBIAS_CACHE_DIR to a private directory",
                            abs.string(), st.st_mode & 07777));
  }
}

}  // namespace flashbias::cache
