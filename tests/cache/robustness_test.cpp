// Never lose, never load damage: corrupt and truncated files are moved aside and rebuilt, a
// tampered blob is rejected and rebuilt, an unwritable or insecure location falls back to memory,
// each with exactly one warning; newer or foreign files are refused.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include "cache/location.h"
#include "cache/schema.h"
#include "cache/store.h"
#include "cache_test_util.h"
#include "flashbias/flashbias.hpp"

using namespace flashbias;
using namespace flashbias::cache;
using namespace flashbias::cache::test;
namespace fs = std::filesystem;

namespace {

std::vector<fs::path> corrupt_copies(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("flashbias.db.corrupt-", 0) == 0 &&
        e.path().filename().string().find("-wal") == std::string::npos) {
      out.push_back(e.path());
    }
  }
  return out;
}

// A store that can be written, with the given content, then closed (WAL folded into the file).
void fill(const fs::path& db, int kernels, std::size_t bytes) {
  Store s = Store::open(db);
  for (int i = 0; i < kernels; ++i) s.put_kernel(sample_kernel(i, "sm_80", cuda_version(12, 4), bytes));
  s.put_tuning_run(sample_run("k", "b", "bm128_bn64_w4_s1"));
}

void check_rebuilt(Store& s, const fs::path& db, const Warnings& w, const std::string& old_bytes) {
  CHECK_FALSE(s.in_memory());
  CHECK(s.path() == db.string());
  REQUIRE(w.count() == 1);
  CHECK_THAT(w.lines()[0], Catch::Contains("moved it to") && Catch::Contains(db.string()));
  auto moved = corrupt_copies(db.parent_path());
  REQUIRE(moved.size() == 1);
  CHECK(read_file(moved[0]) == old_bytes);  // kept for a post-mortem, byte for byte
  // The rebuilt cache works and persists.
  s.put_kernel(sample_kernel(100));
  CHECK(s.load_kernel(sample_kernel(100).key));
  CHECK(s.stats().kernel_count == 1);
}

}  // namespace

TEST_CASE("a file that is not a database is moved aside and rebuilt", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  std::string garbage(16384, '\0');
  for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = char(i * 131 + 7);
  write_file(db, garbage);
  Warnings w;
  Store s = Store::open(db, w.options());
  check_rebuilt(s, db, w, garbage);
}

TEST_CASE("a truncated database is moved aside and rebuilt", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  fill(db, 40, 20000);  // ~200 pages, so that half a file cuts b-tree pages away
  REQUIRE_FALSE(fs::exists(dir / "flashbias.db-wal"));  // the last close checkpointed
  const std::string whole = read_file(db);

  SECTION("cut in half") {
    const std::string half = whole.substr(0, whole.size() / 2);
    write_file(db, half);
    Warnings w;
    Store s = Store::open(db, w.options());
    check_rebuilt(s, db, w, half);
  }
  SECTION("cut inside the header") {
    const std::string stub = whole.substr(0, 60);
    write_file(db, stub);
    Warnings w;
    Store s = Store::open(db, w.options());
    check_rebuilt(s, db, w, stub);
  }
}

TEST_CASE("a database with damaged pages is moved aside and rebuilt", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  fill(db, 20, 20000);
  std::string bytes = read_file(db);
  // Scribble over the second page (the first b-tree page after the header page).
  for (std::size_t i = 4096; i < 4096 + 512 && i < bytes.size(); ++i) bytes[i] = char(0xA5);
  write_file(db, bytes);
  Warnings w;
  Store s = Store::open(db, w.options());
  check_rebuilt(s, db, w, bytes);
}

TEST_CASE("a tampered blob is rejected with one warning and recompiled", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  const KernelRecord k = sample_kernel(5);
  { Store s = Store::open(db); s.put_kernel(k); s.put_kernel(sample_kernel(6)); }
  flip_cubin_byte(db, k.key, 1234);

  Warnings w;
  Store s = Store::open(db, w.options());
  CHECK_FALSE(s.load_kernel(k.key));  // a miss: the caller recompiles
  REQUIRE(w.count() == 1);
  CHECK_THAT(w.lines()[0], Catch::Contains("SHA-256") && Catch::Contains("deleted") && Catch::Contains(k.spec));
  CHECK(s.stats().kernel_count == 1);  // the bad entry is gone, the good one stays
  CHECK(s.load_kernel(sample_kernel(6).key));
  // The recompiled kernel goes back in and loads.
  s.put_kernel(k);
  auto again = s.load_kernel(k.key);
  REQUIRE(again);
  CHECK(again->cubin == k.cubin);
  CHECK(w.count() == 1);
}

TEST_CASE("a tampered blob is skipped by find_kernel, which falls back to an older good one", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  const KernelRecord older = sample_kernel(5, "sm_80", cuda_version(12, 2));
  const KernelRecord newer = sample_kernel(5, "sm_80", cuda_version(12, 6));
  { Store s = Store::open(db); s.put_kernel(older); s.put_kernel(newer); }
  flip_cubin_byte(db, newer.key, 0);
  Warnings w;
  Store s = Store::open(db, w.options());
  auto hit = s.find_kernel(newer.spec, "sm_80", "tmplhash-1");
  REQUIRE(hit);
  CHECK(hit->key == older.key);
  CHECK(w.count() == 1);
}

TEST_CASE("an unwritable location falls back to memory with one warning", "[cpu][cache]") {
  // The tests run as root on the build machine, where chmod 0500 does not stop writes (root
  // bypasses permission bits). So unwritable locations are made in ways root cannot bypass:
  // a path through a regular file (ENOTDIR) and a directory under /proc (no mkdir there).
  TempDir dir;
  write_file(dir / "a-file", "x");
  const fs::path through_file = dir / "a-file" / "cache" / "flashbias.db";
  const fs::path under_proc = fs::path("/proc") / ("flashbias-test-" + std::to_string(::getpid())) / "flashbias.db";
  for (const fs::path& db : {through_file, under_proc}) {
    INFO(db);
    Warnings w;
    Store s = Store::open(db, w.options());
    CHECK(s.in_memory());
    REQUIRE(w.count() == 1);
    CHECK_THAT(w.lines()[0], Catch::Contains("in-memory") && Catch::Contains(db.parent_path().string()));
    // Fully usable, and quiet from now on.
    s.put_kernel(sample_kernel(1));
    CHECK(s.load_kernel(sample_kernel(1).key));
    s.put_tuning_run(sample_run("k", "b", "bm128_bn64_w4_s1"));
    CHECK(s.find_winner(sample_device(), "k", "b"));
    CHECK(s.stats().in_memory);
    CHECK(w.count() == 1);

    StoreOptions strict = w.options();
    strict.fallback_to_memory = false;
    CHECK_THROWS_AS(Store::open(db, strict), Error);
  }
  // Through open_default as well, via FLASHBIAS_CACHE_DIR.
  const char* old = std::getenv("FLASHBIAS_CACHE_DIR");
  const std::string saved = old ? old : "";
  ::setenv("FLASHBIAS_CACHE_DIR", (dir / "a-file" / "cache").c_str(), 1);
  Warnings w;
  Store s = Store::open_default(w.options());
  if (old) ::setenv("FLASHBIAS_CACHE_DIR", saved.c_str(), 1); else ::unsetenv("FLASHBIAS_CACHE_DIR");
  CHECK(s.in_memory());
  CHECK(w.count() == 1);
}

TEST_CASE("a directory others can write is refused: in-memory with one warning", "[cpu][cache]") {
  TempDir dir;
  const fs::path shared = dir / "shared";
  fs::create_directory(shared);
  ::chmod(shared.c_str(), 0777);
  Warnings w;
  Store s = Store::open(shared / "flashbias.db", w.options());
  CHECK(s.in_memory());
  REQUIRE(w.count() == 1);
  CHECK_THAT(w.lines()[0], Catch::Contains("writable by group or others"));
  CHECK_FALSE(fs::exists(shared / "flashbias.db"));
  struct stat st {};
  ::stat(shared.c_str(), &st);
  CHECK((st.st_mode & 07777) == 0777);  // never changed behind the user's back
}

TEST_CASE("a newer schema is refused with a clear error and left alone", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  { Store s = Store::open(db); s.put_kernel(sample_kernel(1)); }
  {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
    REQUIRE(sqlite3_exec(h, "UPDATE meta SET value = '99' WHERE key = 'schema_version'", nullptr, nullptr, nullptr) ==
            SQLITE_OK);
    sqlite3_close(h);
  }
  const std::string before = read_file(db);
  Warnings w;
  try {
    Store::open(db, w.options());
    FAIL("a newer schema opened");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::cache_error);
    CHECK_THAT(e.what(), Catch::Contains("schema version 99 is newer") && Catch::Contains(db.string()));
  }
  CHECK_THROWS_AS(Store::open_readonly(db), Error);
  CHECK(read_file(db) == before);
  CHECK(corrupt_copies(dir.path()).empty());
}

TEST_CASE("a foreign SQLite file is refused, not rebuilt", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  {
    sqlite3* h = nullptr;
    REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
    REQUIRE(sqlite3_exec(h, "CREATE TABLE photos (id INTEGER); INSERT INTO photos VALUES (1)", nullptr, nullptr,
                         nullptr) == SQLITE_OK);
    sqlite3_close(h);
  }
  const std::string before = read_file(db);
  try {
    Store::open(db);
    FAIL("a foreign file opened");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Catch::Contains("not a flashbias cache"));
  }
  CHECK(read_file(db) == before);
}

TEST_CASE("the database file and the directories created for it are private", "[cpu][cache]") {
  TempDir dir;
  const mode_t old_umask = ::umask(0);  // the modes must not depend on a permissive umask
  const fs::path nested = dir / "a" / "b" / "c";
  {
    Store s = Store::open(nested / "flashbias.db");
    s.put_kernel(sample_kernel(1));
  }
  ::umask(old_umask);
  for (const fs::path& p : {dir / "a", dir / "a" / "b", nested}) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    INFO(p);
    CHECK((st.st_mode & 07777) == 0700);
  }
  struct stat st {};
  REQUIRE(::stat((nested / "flashbias.db").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);

  // An existing private directory with another mode is used as it is, never loosened.
  const fs::path mine = dir / "mine";
  fs::create_directory(mine);
  ::chmod(mine.c_str(), 0750);
  ensure_private_dir(mine);
  REQUIRE(::stat(mine.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0750);
}

TEST_CASE("default_location follows FLASHBIAS_CACHE_DIR, then XDG_CACHE_HOME, then HOME", "[cpu][cache]") {
  struct SavedEnv {
    std::string name;
    std::optional<std::string> value;
    explicit SavedEnv(std::string n) : name(std::move(n)) {
      if (const char* v = std::getenv(name.c_str())) value = v;
    }
    ~SavedEnv() {
      if (value) ::setenv(name.c_str(), value->c_str(), 1); else ::unsetenv(name.c_str());
    }
  };
  SavedEnv a("FLASHBIAS_CACHE_DIR"), b("XDG_CACHE_HOME"), c("HOME");
  ::setenv("HOME", "/home/someone", 1);
  ::setenv("XDG_CACHE_HOME", "/xdg", 1);
  ::setenv("FLASHBIAS_CACHE_DIR", "/explicit/dir", 1);
  CHECK(default_location().db == fs::path("/explicit/dir/flashbias.db"));
  CHECK(default_location().source == "FLASHBIAS_CACHE_DIR");
  ::setenv("FLASHBIAS_CACHE_DIR", "", 1);  // empty counts as unset
  CHECK(default_location().db == fs::path("/xdg/flashbias/flashbias.db"));
  ::setenv("XDG_CACHE_HOME", "relative/xdg", 1);  // the XDG spec says to ignore relative paths
  CHECK(default_location().db == fs::path("/home/someone/.cache/flashbias/flashbias.db"));
  ::unsetenv("XDG_CACHE_HOME");
  CHECK(default_location().source == "HOME");
}

namespace {

int root_page(const fs::path& db, const std::string& table) {
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(h, "SELECT rootpage FROM sqlite_master WHERE name = ?", -1, &s, nullptr);
  sqlite3_bind_text(s, 1, table.c_str(), -1, SQLITE_TRANSIENT);
  const int page = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
  sqlite3_finalize(s);
  sqlite3_close(h);
  return page;
}

}  // namespace

TEST_CASE("large files skip the full check on open, but truncation still shows", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  fill(db, 40, 20000);
  const std::string whole = read_file(db);
  const std::string half = whole.substr(0, whole.size() / 2);
  write_file(db, half);
  Warnings w;
  StoreOptions o = w.options();
  o.automatic_check_max_bytes = 0;  // treat every file as "large"
  Store s = Store::open(db, o);
  // The header's page count exceeds the file: that forces quick_check, which confirms.
  check_rebuilt(s, db, w, half);
}

TEST_CASE("damage met during use flags the file; the next open checks it and moves it aside", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  fill(db, 20, 20000);
  const int page = root_page(db, "kernels");
  REQUIRE(page > 2);
  std::string bytes = read_file(db);
  for (std::size_t i = std::size_t(page - 1) * 4096; i < std::size_t(page) * 4096; ++i) bytes[i] = char(0xA5);
  write_file(db, bytes);

  Warnings w;
  StoreOptions o = w.options();
  o.automatic_check_max_bytes = 0;  // too large to check on open: the damage is met in use
  {
    Store s = Store::open(db, o);
    CHECK(w.count() == 0);
    CHECK_FALSE(s.load_kernel(sample_kernel(3, "sm_80", cuda_version(12, 4), 20000).key));
    REQUIRE(w.count() == 1);
    CHECK_THAT(w.lines()[0], Catch::Contains("corrupt") && Catch::Contains("miss"));
    CHECK(fs::exists(dir / "flashbias.db.needs-check"));
    try {
      s.put_kernel(sample_kernel(99));
      FAIL("a write into a damaged table succeeded");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::cache_error);
      CHECK_THAT(e.what(), Catch::Contains("corrupt"));
    }
  }
  Warnings w2;
  StoreOptions o2 = w2.options();
  o2.automatic_check_max_bytes = 0;
  Store s = Store::open(db, o2);
  REQUIRE(w2.count() == 1);
  CHECK_THAT(w2.lines()[0], Catch::Contains("moved it to"));
  CHECK_FALSE(fs::exists(dir / "flashbias.db.needs-check"));
  CHECK(corrupt_copies(dir.path()).size() == 1);
  s.put_kernel(sample_kernel(100));
  CHECK(s.load_kernel(sample_kernel(100).key));
}
