// The on-disk schema of the cache database (and of bundles, which are the same file format) and
// the migrations that bring an older file to the current version.
//
// Versioning rule: a released schema version is never edited. A change adds a Migration from
// version N to N+1 and bumps kSchemaVersion; tests/cache/golden/ keeps the first file ever written
// (v1) and checks that it still opens and migrates.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace flashbias::cache {

/// The schema version this library writes. A file with a newer version is refused.
inline constexpr int kSchemaVersion = 1;

/// The `meta` table's `format` value; anything else in a file with a meta table is refused.
inline constexpr const char* kFormatName = "flashbias-cache";

/// One step from `from_version` to `from_version + 1`, run inside the migrating transaction.
struct Migration {
  int from_version;
  std::string description;
  std::function<void(sqlite3* db, std::string_view path)> apply;
};

/// The library's steps in order: steps[i].from_version == i. Step 0 creates schema v1.
const std::vector<Migration>& migrations();

/// Call first thing after opening a connection (before journal_mode and before migrate): sets
/// the file-level settings that a new file must get before its first page is written (incremental
/// auto-vacuum). No effect on an existing file.
void prepare_new_file(sqlite3* db, std::string_view path);

/// The schema version recorded in `db`: 0 for an empty database (no tables at all). Throws
/// Error(cache_error) for a database that has tables but is not a flashbias cache.
int read_schema_version(sqlite3* db, std::string_view path);

/// Bring `db` to `target` with `steps`. Cheap when nothing is to do (one read, no write lock).
/// Otherwise takes the write lock (BEGIN IMMEDIATE), re-reads the version, since another process
/// may have migrated meanwhile, and runs the missing steps and the version update in that one
/// transaction, so that a crash leaves the old version intact. Throws Error(cache_error) when
/// the file is newer than `target` or a step is missing. Returns the version found before.
int migrate(sqlite3* db, std::string_view path, const std::vector<Migration>& steps, int target,
            std::string_view created_by);

}  // namespace flashbias::cache
