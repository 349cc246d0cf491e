// Schema versioning against golden files (STYLE 8): tests/cache/golden/v1.db is the first file
// this library ever wrote (schema v1, written by the v1 code with the hidden test case below),
// and v1.sql its reviewable dump. Every future version must still open and migrate it.
#include <catch2/catch.hpp>

#include <cstdio>
#include <sqlite3.h>

#include <fmt/format.h>

#include "cache/schema.h"
#include "cache/store.h"
#include "cache_test_util.h"
#include "flashbias/flashbias.hpp"

using namespace flashbias;
using namespace flashbias::cache;
using namespace flashbias::cache::test;
namespace fs = std::filesystem;

namespace {

fs::path golden_dir() {
  if (const char* d = std::getenv("FLASHBIAS_CACHE_GOLDEN_DIR"); d && *d) return d;
  return fs::path(__FILE__).parent_path() / "golden";
}

// The golden content: fixed records and timestamps, so that the dump is stable.
const KernelRecord& golden_kernel(int i) {
  static const KernelRecord k[2] = {
      [] {
        KernelRecord r = sample_kernel(1, "sm_80", cuda_version(12, 4), 256);
        r.created_at = r.last_used_at = 1735689600;  // 2025-01-01
        return r;
      }(),
      [] {
        KernelRecord r = sample_kernel(2, "sm_90a", cuda_version(12, 4), 300);
        r.created_at = r.last_used_at = 1735689601;
        return r;
      }(),
  };
  return k[i];
}

TuningRun golden_run() {
  TuningRun r = sample_run("fwd sm_90a f16 d64 r16 none", "nq<=1024,nk<=1024,bh<=64", "bm128_bn64_w4_s1");
  r.created_at = 1735689602;
  r.created_by = "flashbias 0.1.0";
  return r;
}

struct Db {
  sqlite3* h = nullptr;
  explicit Db(const fs::path& p, int flags = SQLITE_OPEN_READWRITE) {
    if (sqlite3_open_v2(p.c_str(), &h, flags, nullptr) != SQLITE_OK) throw std::runtime_error("open " + p.string());
  }
  ~Db() { sqlite3_close(h); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err);
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    if (rc != SQLITE_OK) throw std::runtime_error(sql + ": " + msg);
  }
};

std::string quote(sqlite3_stmt* s, int col) {
  switch (sqlite3_column_type(s, col)) {
    case SQLITE_NULL: return "NULL";
    case SQLITE_INTEGER: return std::to_string(sqlite3_column_int64(s, col));
    case SQLITE_FLOAT: return fmt::format("{:.17g}", sqlite3_column_double(s, col));
    case SQLITE_BLOB: {
      const auto* p = static_cast<const unsigned char*>(sqlite3_column_blob(s, col));
      std::string out = "X'";
      for (int i = 0; i < sqlite3_column_bytes(s, col); ++i) out += fmt::format("{:02x}", p[i]);
      return out + "'";
    }
    default: {
      std::string t = reinterpret_cast<const char*>(sqlite3_column_text(s, col));
      std::string out = "'";
      for (char c : t) out += c == '\'' ? std::string("''") : std::string(1, c);
      return out + "'";
    }
  }
}

// The schema part of a dump: every table and index definition, in a stable order.
std::string dump_schema(sqlite3* db) {
  std::string out;
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA auto_vacuum", -1, &s, nullptr);
  sqlite3_step(s);
  out += fmt::format("-- auto_vacuum = {}\n", sqlite3_column_int(s, 0));
  sqlite3_finalize(s);
  sqlite3_prepare_v2(db,
                     "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
                     "ORDER BY type DESC, name",
                     -1, &s, nullptr);
  while (sqlite3_step(s) == SQLITE_ROW) out += std::string(reinterpret_cast<const char*>(sqlite3_column_text(s, 0))) + ";\n";
  sqlite3_finalize(s);
  return out;
}

// Schema plus every row as an INSERT (blobs in hex): a text file a reviewer can read and diff.
std::string dump_sql(sqlite3* db) {
  std::string out = "-- flashbias cache golden dump (tests/cache/schema_test.cpp writes it)\n" + dump_schema(db);
  for (const char* table : {"meta", "kernels", "tuning_runs", "tuning_candidates"}) {
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, fmt::format("SELECT * FROM {} ORDER BY 1, 2", table).c_str(), -1, &s, nullptr);
    while (sqlite3_step(s) == SQLITE_ROW) {
      std::string row;
      for (int c = 0; c < sqlite3_column_count(s); ++c) row += (c ? ", " : "") + quote(s, c);
      out += fmt::format("INSERT INTO {} VALUES ({});\n", table, row);
    }
    sqlite3_finalize(s);
  }
  return out;
}

fs::path copy_golden(const TempDir& dir) {
  const fs::path src = golden_dir() / "v1.db";
  REQUIRE(fs::exists(src));
  const fs::path dst = dir / "flashbias.db";
  fs::copy_file(src, dst);
  fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write);
  return dst;
}

}  // namespace

// Hidden ([.]): run once, by hand, when a schema version is first released:
//   FLASHBIAS_CACHE_GOLDEN_DIR=$PWD/tests/cache/golden ./flashbias_tests "[.generate-golden]"
// Never rerun it for an existing version: the point of the file is that it does not change.
TEST_CASE("write the golden v1 database and its dump", "[.generate-golden]") {
  static_assert(kSchemaVersion == 1, "the golden writer makes v1 files; add a v2 golden instead of rewriting v1");
  TempDir dir;
  const fs::path db = dir / "flashbias.db";
  {
    Store s = Store::open(db);
    s.put_kernel(golden_kernel(0));
    s.put_kernel(golden_kernel(1));
    s.put_tuning_run(golden_run());
  }
  {
    // One self-contained file: rollback journal, compacted.
    Db h(db);
    h.exec("PRAGMA journal_mode = DELETE; VACUUM");
  }
  const fs::path out = golden_dir();
  fs::create_directories(out);
  fs::copy_file(db, out / "v1.db", fs::copy_options::overwrite_existing);
  Db h(out / "v1.db", SQLITE_OPEN_READONLY);
  write_file(out / "v1.sql", dump_sql(h.h));
}

TEST_CASE("golden v1 dump matches the golden v1 file", "[cpu][cache][golden]") {
  Db h(golden_dir() / "v1.db", SQLITE_OPEN_READONLY);
  CHECK(dump_sql(h.h) == read_file(golden_dir() / "v1.sql"));
}

TEST_CASE("the golden v1 file opens, migrates to the current schema and serves its content", "[cpu][cache][golden]") {
  TempDir dir;
  const fs::path db = copy_golden(dir);
  Warnings w;
  {
    Store s = Store::open(db, w.options());
    CHECK_FALSE(s.in_memory());
    CHECK(s.schema_version() == kSchemaVersion);
    for (int i = 0; i < 2; ++i) {
      auto k = s.load_kernel(golden_kernel(i).key);
      REQUIRE(k);
      CHECK(k->spec == golden_kernel(i).spec);
      CHECK(k->cubin == golden_kernel(i).cubin);
      CHECK(k->created_at == golden_kernel(i).created_at);
    }
    const TuningRun g = golden_run();
    auto win = s.find_winner(g.device, g.problem_key, g.bucket);
    REQUIRE(win);
    CHECK(win->tile == "bm128_bn64_w4_s1");
    auto run = s.load_tuning_run(win->run_id);
    REQUIRE(run);
    CHECK(run->candidates == g.candidates);
    CHECK(run->created_by == "flashbias 0.1.0");
    CHECK(s.verify().ok());
    // Writable after migration.
    s.put_kernel(sample_kernel(50));
  }
  CHECK(w.count() == 0);
  // A migrated golden file has exactly the schema of a freshly created one.
  TempDir fresh_dir;
  { Store fresh = Store::open(fresh_dir / "flashbias.db"); }
  Db migrated(db), fresh(fresh_dir / "flashbias.db");
  CHECK(dump_schema(migrated.h) == dump_schema(fresh.h));
  // And the read-only opens accept the golden file too (a v1 bundle).
  CHECK(Store::open_readonly(golden_dir() / "v1.db").stats().kernel_count == 2);
  const std::string bytes = read_file(golden_dir() / "v1.db");
  CHECK(Store::open_readonly_memory(bytes.data(), bytes.size()).stats().tuning_runs == 1);
}

TEST_CASE("migrations run each missing step once, in one transaction", "[cpu][cache][golden]") {
  TempDir dir;
  const fs::path db = copy_golden(dir);
  // A pretend v2 on top of the real steps: what the next schema change will look like.
  std::vector<Migration> steps = migrations();
  int applied = 0;
  steps.push_back({1, "add kernels.note", [&](sqlite3* h, std::string_view) {
                     ++applied;
                     REQUIRE(sqlite3_exec(h, "ALTER TABLE kernels ADD COLUMN note TEXT NOT NULL DEFAULT ''", nullptr,
                                          nullptr, nullptr) == SQLITE_OK);
                   }});
  Db h(db);
  CHECK(read_schema_version(h.h, db.string()) == 1);
  CHECK(migrate(h.h, db.string(), steps, 2, "test") == 1);
  CHECK(applied == 1);
  CHECK(read_schema_version(h.h, db.string()) == 2);
  CHECK(migrate(h.h, db.string(), steps, 2, "test") == 2);  // nothing left to do
  CHECK(applied == 1);
  h.exec("SELECT note FROM kernels");

  // A failing step leaves the file at its old version, with nothing half applied.
  TempDir dir2;
  const fs::path db2 = copy_golden(dir2);
  std::vector<Migration> failing = migrations();
  failing.push_back({1, "breaks half way", [](sqlite3* h2, std::string_view) {
                       sqlite3_exec(h2, "ALTER TABLE kernels ADD COLUMN note TEXT", nullptr, nullptr, nullptr);
                       throw Error(ErrorCode::internal, "step failed");
                     }});
  Db h2(db2);
  CHECK_THROWS_AS(migrate(h2.h, db2.string(), failing, 2, "test"), Error);
  CHECK(read_schema_version(h2.h, db2.string()) == 1);
  CHECK(sqlite3_exec(h2.h, "SELECT note FROM kernels", nullptr, nullptr, nullptr) != SQLITE_OK);

  // A missing step is an error, not a silent version bump.
  CHECK_THROWS_AS(migrate(h2.h, db2.string(), migrations(), 3, "test"), Error);
  CHECK(read_schema_version(h2.h, db2.string()) == 1);
}

TEST_CASE("a fresh database records its format, version and writer", "[cpu][cache][golden]") {
  Store s = Store::open_memory();
  CHECK(s.get_meta("format") == std::optional<std::string>(kFormatName));
  CHECK(s.get_meta("schema_version") == std::optional<std::string>(std::to_string(kSchemaVersion)));
  CHECK(s.get_meta("created_by") == std::optional<std::string>(library_version()));
}
