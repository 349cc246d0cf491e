// Where the cache lives and the permission rules for it. The database holds executable code
// (cubins the runtime loads into the GPU), so its directory must be private to its owner.
#pragma once

#include <filesystem>
#include <string>

namespace flashbias::cache {

/// The default database path and which rule chose it.
struct CacheLocation {
  std::filesystem::path dir;  ///< folder holding the database
  std::filesystem::path db;   ///< dir / "flashbias.db"
  std::string source;         ///< "FLASHBIAS_CACHE_DIR", "XDG_CACHE_HOME" or "HOME"
};

/// `$FLASHBIAS_CACHE_DIR/flashbias.db`, else `$XDG_CACHE_HOME/flashbias/flashbias.db`, else
/// `~/.cache/flashbias/flashbias.db` (HOME, else the password database). Empty variables count
/// as unset, and a relative XDG_CACHE_HOME is ignored, as the XDG spec says. Throws
/// Error(cache_error) when no home directory can be found.
CacheLocation default_location();

/// Create `dir` (and missing parents) with mode 0700 and check that the final directory is
/// private: a directory, owned by this user (or by root when running as root), and not writable
/// by group or others. An existing directory's mode is never changed, neither loosened nor
/// tightened behind the user's back. Throws Error(cache_error) naming the directory and the rule.
void ensure_private_dir(const std::filesystem::path& dir);

}  // namespace flashbias::cache
