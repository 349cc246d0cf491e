#include "cache/schema.h"

#include <ctime>

#include <fmt/format.h>

#include "cache/sqlite_util.h"
#include "flashbias/flashbias.hpp"

namespace flashbias::cache {
namespace {

using detail::exec;
using detail::Stmt;

// Schema v1. Frozen: change it only through a new Migration (see schema.h).
//
// Tuning results are two tables rather than one row with a JSON column: candidates are queried
// on their own (every failure of one config across runs, pruning by age), SQL CHECKs keep the
// outcome vocabulary closed, a migration can add a column without rewriting JSON, and the golden
// dump stays readable. ON DELETE CASCADE removes a run's candidates with it.
constexpr const char* kSchemaV1 = R"sql(
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE kernels (
  key               TEXT PRIMARY KEY,   -- kernel_key(): sha256(source, options, nvrtc, arch, templates)
  spec              TEXT NOT NULL,      -- KernelSpec::str()
  arch              TEXT NOT NULL,      -- sm_80, sm_90a
  nvrtc_version     INTEGER NOT NULL,   -- major*1000 + minor*10
  driver_version    INTEGER NOT NULL,   -- driver at compile time, 0 if none
  templates_hash    TEXT NOT NULL,
  options           TEXT NOT NULL,      -- NVRTC options, one per line
  entry             TEXT NOT NULL,
  threads           INTEGER NOT NULL,
  smem_bytes        INTEGER NOT NULL,
  registers         INTEGER NOT NULL,
  spill_store_bytes INTEGER NOT NULL,
  spill_load_bytes  INTEGER NOT NULL,
  stack_bytes       INTEGER NOT NULL,
  compile_ms        REAL NOT NULL,
  cubin             BLOB NOT NULL,
  cubin_bytes       INTEGER NOT NULL,   -- length(cubin), kept so that stats never read blobs
  cubin_sha256      TEXT NOT NULL,      -- checked on every load
  created_at        INTEGER NOT NULL,   -- unix seconds
  last_used_at      INTEGER NOT NULL,
  hits              INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX kernels_by_spec ON kernels (spec, arch, templates_hash);
CREATE INDEX kernels_by_use ON kernels (last_used_at);
CREATE TABLE tuning_runs (
  id             INTEGER PRIMARY KEY,
  device         TEXT NOT NULL,         -- DeviceFingerprint::str()
  gpu_name       TEXT NOT NULL,
  sm_count       INTEGER NOT NULL,
  cc_major       INTEGER NOT NULL,
  cc_minor       INTEGER NOT NULL,
  driver_version INTEGER NOT NULL,
  problem_key    TEXT NOT NULL,         -- ProblemKey::str()
  arch           TEXT NOT NULL,
  bucket         TEXT NOT NULL,         -- shape bucket
  strategy       TEXT NOT NULL,
  templates_hash TEXT NOT NULL,
  nvrtc_version  INTEGER NOT NULL,
  winner_tile    TEXT,                  -- NULL when no candidate passed
  winner_ms      REAL,
  tuning_seconds REAL NOT NULL,
  created_at     INTEGER NOT NULL,
  created_by     TEXT NOT NULL
);
CREATE INDEX tuning_runs_lookup ON tuning_runs (device, problem_key, bucket, created_at);
CREATE TABLE tuning_candidates (
  run_id     INTEGER NOT NULL REFERENCES tuning_runs (id) ON DELETE CASCADE,
  idx        INTEGER NOT NULL,          -- order tried
  tile       TEXT NOT NULL,             -- TileConfig::str()
  outcome    TEXT NOT NULL CHECK (outcome IN
               ('passed', 'incorrect', 'compile_failed', 'launch_failed', 'not_supported')),
  reason     TEXT NOT NULL,
  median_ms  REAL,
  min_ms     REAL,
  max_ms     REAL,
  repeats    INTEGER NOT NULL,
  compile_ms REAL,
  max_error  REAL,
  PRIMARY KEY (run_id, idx)
);
)sql";

void create_v1(sqlite3* db, std::string_view path) { exec(db, kSchemaV1, path); }

std::string meta_value(sqlite3* db, std::string_view path, const char* key) {
  Stmt s(db, "SELECT value FROM meta WHERE key = ?", path);
  s.bind(1, key);
  return s.step() ? s.text(0) : std::string();
}

}  // namespace

void prepare_new_file(sqlite3* db, std::string_view path) {
  // Incremental auto-vacuum lets prune/clear give pages back to the file system without a full
  // VACUUM (which rewrites the file and needs twice its size). SQLite only honours it while the
  // file has no page yet: outside any transaction and before journal_mode = WAL writes the
  // header. On an existing file it is a no-op.
  exec(db, "PRAGMA auto_vacuum = INCREMENTAL", path, true);
}

const std::vector<Migration>& migrations() {
  static const std::vector<Migration> steps = {
      {0, "create schema v1: meta, kernels, tuning_runs, tuning_candidates", create_v1},
  };
  return steps;
}

int read_schema_version(sqlite3* db, std::string_view path) {
  Stmt tables(db, "SELECT count(*), sum(name = 'meta') FROM sqlite_master WHERE type = 'table'", path);
  tables.step();
  const std::int64_t n_tables = tables.i64(0);
  const bool has_meta = tables.i64(1) > 0;
  if (n_tables == 0) return 0;
  if (!has_meta) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: this SQLite file is not a flashbias cache (it has "
                            "tables but no meta table); refusing to touch it",
                            path));
  }
  const std::string format = meta_value(db, path, "format");
  if (format != kFormatName) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: meta.format is '{}', expected '{}'; not a flashbias cache",
                            path, format, kFormatName));
  }
  const std::string v = meta_value(db, path, "schema_version");
  int version = 0;
  try {
    version = std::stoi(v);
  } catch (const std::exception&) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: meta.schema_version '{}' is not a number", path, v));
  }
  if (version < 1) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: meta.schema_version {} is invalid", path, version));
  }
  return version;
}

int migrate(sqlite3* db, std::string_view path, const std::vector<Migration>& steps, int target,
            std::string_view created_by) {
  auto check_not_newer = [&](int v) {
    if (v > target) {
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache {}: schema version {} is newer than this library "
                              "supports ({}); it was written by a newer flashbias. Upgrade, or set "
                              "FLASHBIAS_CACHE_DIR to another directory",
                              path, v, target));
    }
  };
  const int seen = read_schema_version(db, path);
  check_not_newer(seen);
  if (seen == target) return seen;

  detail::WriteTx tx(db, path);
  // Re-check under the write lock: another process may have created or migrated the file
  // between our read and BEGIN IMMEDIATE.
  const int found = read_schema_version(db, path);
  check_not_newer(found);
  for (int v = found; v < target; ++v) {
    if (std::size_t(v) >= steps.size() || steps[std::size_t(v)].from_version != v) {
      throw Error(ErrorCode::internal,
                  fmt::format("flashbias cache {}: no migration step from schema version {}", path, v));
    }
    steps[std::size_t(v)].apply(db, path);
  }
  Stmt put(db, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
           path);
  auto set = [&](const char* k, const std::string& val) {
    put.reset();
    put.bind(1, k).bind(2, val);
    put.run();
  };
  if (found == 0) {
    set("format", kFormatName);
    set("created_by", std::string(created_by));
    set("created_at", std::to_string(std::time(nullptr)));
  } else {
    set("migrated_by", std::string(created_by));
    set("migrated_from", std::to_string(found));
  }
  set("schema_version", std::to_string(target));
  tx.commit();
  return found;
}

}  // namespace flashbias::cache
