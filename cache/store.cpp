#include "cache/store.h"

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <mutex>
#include <thread>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <sqlite3.h>

#include "cache/location.h"
#include "cache/schema.h"
#include "cache/sha256.h"
#include "cache/sqlite_util.h"
#include "flashbias/flashbias.hpp"

#ifndef FLASHBIAS_VERSION_STRING
#define FLASHBIAS_VERSION_STRING "unknown"
#endif

namespace flashbias::cache {

namespace fs = std::filesystem;
using detail::CorruptDatabase;
using detail::exec;
using detail::Stmt;
using detail::WriteTx;

const std::string& library_version() {
  static const std::string v = std::string("flashbias ") + FLASHBIAS_VERSION_STRING;
  return v;
}

namespace {

constexpr const char* kMemoryPath = ":memory:";

// Raised while opening a file that this process cannot write; Store::open falls back to memory.
struct Unwritable {
  std::string message;
};

std::int64_t now_seconds() { return std::int64_t(std::time(nullptr)); }

WarningSink sink_or_default(const WarningSink& sink) {
  if (sink) return sink;
  return [](const std::string& msg) { std::fprintf(stderr, "flashbias: warning: %s\n", msg.c_str()); };
}

std::int64_t file_size_or_zero(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? std::int64_t(st.st_size) : 0;
}

fs::path with_suffix(const fs::path& p, std::string_view suffix) {
  return fs::path(p.string() + std::string(suffix));
}

// The SQLite result codes that mean "this process may not write here", as opposed to damage.
bool is_unwritable_code(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_IOERR:
    case SQLITE_FULL:
      return true;
    default:
      return false;
  }
}

std::string quick_check(sqlite3* db, std::string_view path, OpenCheck check) {
  if (check == OpenCheck::none || check == OpenCheck::automatic) return "ok";
  // Ten messages are enough to say what is wrong; the full list can be thousands of lines.
  Stmt s(db, check == OpenCheck::full ? "PRAGMA integrity_check(10)" : "PRAGMA quick_check(10)", path);
  std::string out;
  while (s.step()) {
    if (!out.empty()) out += "; ";
    out += s.text(0);
  }
  return out;
}

// Left next to a file in which a process met corruption during use, so that the next open checks
// the whole file (and moves it aside) even when it is too large for the automatic check.
fs::path needs_check_marker(const fs::path& file) { return with_suffix(file, ".needs-check"); }

// O(1) checks on the raw header (`head`: the first bytes, `total`: the whole size): the magic
// string, a valid page size, and a file at least as long as the page count the header records.
// Returns "" when they pass.
std::string header_problem(const unsigned char* h, std::size_t got, std::int64_t total) {
  if (got < 100) return fmt::format("{} bytes, shorter than an SQLite header", total);
  if (std::memcmp(h, "SQLite format 3", 16) != 0) return "no SQLite header (file is not a database)";
  const auto be32 = [&](int o) {
    return (std::uint32_t(h[o]) << 24) | (std::uint32_t(h[o + 1]) << 16) | (std::uint32_t(h[o + 2]) << 8) | h[o + 3];
  };
  std::uint32_t page = (std::uint32_t(h[16]) << 8) | h[17];
  if (page == 1) page = 65536;  // the header's encoding of 64 KiB
  if (page < 512 || (page & (page - 1)) != 0) return fmt::format("invalid page size {}", page);
  // The in-header page count is only valid when the change counter matches version-valid-for
  // (SQLite file format, section 1.3.7); otherwise SQLite derives it from the file size.
  if (be32(24) != be32(92)) return {};
  const std::int64_t expected = std::int64_t(be32(28)) * page;
  if (total < expected) {
    return fmt::format("{} bytes, but the header says {} pages of {} bytes (truncated)", total, be32(28), page);
  }
  return {};
}

std::string header_problem(const fs::path& file) {
  unsigned char h[100];
  FILE* f = std::fopen(file.c_str(), "rb");
  if (!f) return {};  // unreadable: the open reports it
  const std::size_t got = std::fread(h, 1, sizeof h, f);
  std::fclose(f);
  return header_problem(h, got, file_size_or_zero(file));
}

// Columns of a kernel row in the order read_kernel expects.
constexpr const char* kKernelColumns =
    "key, spec, arch, nvrtc_version, driver_version, templates_hash, options, entry, threads, smem_bytes, "
    "registers, spill_store_bytes, spill_load_bytes, stack_bytes, compile_ms, cubin_bytes, cubin_sha256, "
    "created_at, last_used_at, hits";

KernelRecord read_kernel_columns(const Stmt& s) {
  KernelRecord r;
  r.key = s.text(0);
  r.spec = s.text(1);
  r.arch = s.text(2);
  r.nvrtc_version = s.i32(3);
  r.driver_version = s.i32(4);
  r.templates_hash = s.text(5);
  r.options = s.text(6);
  r.entry = s.text(7);
  r.threads = s.i32(8);
  r.smem_bytes = s.i64(9);
  r.registers = s.i32(10);
  r.spill_store_bytes = s.i32(11);
  r.spill_load_bytes = s.i32(12);
  r.stack_bytes = s.i32(13);
  r.compile_ms = s.f64(14);
  r.cubin_bytes = s.i64(15);
  r.cubin_sha256 = s.text(16);
  r.created_at = s.i64(17);
  r.last_used_at = s.i64(18);
  r.hits = s.i64(19);
  return r;
}

// Why a blob does not match its record, or "" when it does.
std::string blob_problem(const void* data, std::size_t n, std::int64_t stored_bytes, const std::string& stored_sha) {
  if (std::int64_t(n) != stored_bytes) {
    return fmt::format("cubin is {} bytes, the record says {} (truncated or altered)", n, stored_bytes);
  }
  const std::string actual = sha256_hex(data, n);
  if (actual != stored_sha) {
    return fmt::format("cubin SHA-256 is {}, the record says {} (tampered or corrupted)", actual, stored_sha);
  }
  return {};
}

// "file:" URI for sqlite3_open_v2 with SQLITE_OPEN_URI; '%', '?' and '#' must be escaped in a path.
std::string file_uri(const fs::path& p, std::string_view query) {
  std::string uri = "file:";
  for (char c : fs::absolute(p).string()) {
    if (c == '%' || c == '?' || c == '#') {
      uri += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    } else {
      uri += c;
    }
  }
  uri += "?";
  uri += query;
  return uri;
}

std::string timestamp_for_name() {
  const std::time_t t = std::time(nullptr);
  std::tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

// Exclusive flock on "<db>.lock" for the move-aside decision, released on scope exit.
class FileLock {
 public:
  explicit FileLock(const fs::path& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ < 0) return;  // no lock possible: the rename below is still checked against the inode
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the flock
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

struct FileId {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const FileId&) const = default;
};

FileId file_id(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return {};
  return {true, st.st_dev, st.st_ino};
}

}  // namespace

// ---------------------------------------------------------------------------------------------

class Store::Impl {
 public:
  sqlite3* db = nullptr;
  std::string path = kMemoryPath;  // for messages and stats
  fs::path file;                   // empty in memory
  bool memory = false;
  bool readonly = false;
  int version = 0;
  WarningSink warn;
  std::chrono::milliseconds busy_timeout{10000};
  mutable std::mutex mu;

  ~Impl() {
    if (db) sqlite3_close_v2(db);
  }

  // Make the next open check this file fully (see StoreOptions::automatic_check_max_bytes).
  void flag_for_check() const {
    if (memory || readonly || file.empty()) return;
    const int fd = ::open(needs_check_marker(file).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) ::close(fd);
  }

  [[noreturn]] void corrupt(const CorruptDatabase& c) const {
    flag_for_check();
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: the database is corrupt ({}); it is moved aside and "
                            "rebuilt on the next open",
                            path, c.message));
  }

  void require_writable(std::string_view what) const {
    if (readonly) {
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache {}: cannot {}: the store is read-only", path, what));
    }
  }

  // Load one kernel row by key and verify it; handles a bad blob (warning, deletion).
  std::optional<KernelRecord> load_verified(const std::string& key) {
    std::optional<KernelRecord> rec;
    std::string problem;
    {
      Stmt s(db, fmt::format("SELECT {}, cubin FROM kernels WHERE key = ?", kKernelColumns), path);
      s.bind(1, key);
      if (!s.step()) return std::nullopt;
      rec = read_kernel_columns(s);
      const void* blob = sqlite3_column_blob(s.raw(), 20);
      const auto n = std::size_t(sqlite3_column_bytes(s.raw(), 20));
      problem = blob_problem(blob, n, rec->cubin_bytes, rec->cubin_sha256);
      if (problem.empty()) rec->cubin.assign(static_cast<const std::uint8_t*>(blob),
                                             static_cast<const std::uint8_t*>(blob) + n);
    }
    if (!problem.empty()) {
      reject(*rec, problem);
      return std::nullopt;
    }
    count_hit(*rec);
    return rec;
  }

  // A bad blob: delete it (re-checked under the write lock, since another process may have
  // replaced the row with a good one meanwhile) and say so once.
  void reject(const KernelRecord& rec, const std::string& problem) {
    bool deleted = false;
    if (!readonly) {
      WriteTx tx(db, path);
      Stmt s(db, "SELECT cubin, cubin_bytes, cubin_sha256 FROM kernels WHERE key = ?", path);
      s.bind(1, rec.key);
      if (s.step()) {
        const std::string still = blob_problem(sqlite3_column_blob(s.raw(), 0),
                                               std::size_t(sqlite3_column_bytes(s.raw(), 0)), s.i64(1), s.text(2));
        if (!still.empty()) {
          Stmt del(db, "DELETE FROM kernels WHERE key = ?", path);
          del.bind(1, rec.key);
          del.run();
          deleted = true;
        }
      }
      tx.commit();
    }
    warn(fmt::format("flashbias cache {}: kernel {} ({}, key {}) failed its integrity check: {}; {}", path,
                     rec.spec, rec.arch, rec.key.substr(0, 16), problem,
                     readonly ? "not loaded (read-only store)"
                              : (deleted ? "entry deleted, it will be recompiled" : "not loaded")));
  }

  // Hit counts are statistics: never wait long for them and never fail a load over them.
  void count_hit(KernelRecord& rec) {
    rec.hits += 1;
    rec.last_used_at = now_seconds();
    if (readonly) return;
    sqlite3_busy_timeout(db, 50);
    // synchronous = NORMAL for this commit only: in WAL mode it skips the fsync (10+ ms on a
    // disk), which a counter does not deserve on the first-call path; a power cut may lose the
    // increment, never the database.
    sqlite3_exec(db, "PRAGMA synchronous = NORMAL", nullptr, nullptr, nullptr);
    try {
      Stmt s(db, "UPDATE kernels SET hits = hits + 1, last_used_at = ? WHERE key = ?", path);
      s.bind(1, rec.last_used_at).bind(2, rec.key);
      s.run();
    } catch (const Error&) {
      // Busy for more than 50 ms or a full disk: the count stays one short, the load is fine.
    } catch (const CorruptDatabase&) {
      // Surfaced by the next write or open; this load's blob was verified by its hash.
    }
    sqlite3_exec(db, "PRAGMA synchronous = FULL", nullptr, nullptr, nullptr);
    sqlite3_busy_timeout(db, int(busy_timeout.count()));
  }

  std::int64_t file_bytes() const {
    if (memory || file.empty()) return 0;
    return file_size_or_zero(file) + file_size_or_zero(with_suffix(file, "-wal"));
  }

  // After deletions: hand free pages back to the file system and fold the WAL into the file.
  void reclaim() {
    if (readonly) return;
    try {
      exec(db, "PRAGMA incremental_vacuum", path);
      if (!memory) exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", path);
    } catch (const Error&) {
      // A reader holding an old snapshot blocks the truncation; the pages are reused later.
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Opening

namespace {

void configure_common(sqlite3* db, std::string_view path, std::chrono::milliseconds busy) {
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, int(busy.count()));
  // Cascades delete a run's candidates with the run.
  exec(db, "PRAGMA foreign_keys = ON", path, true);
}

// Read-only health check of an existing file: throws CorruptDatabase for damage, Error for a
// newer or foreign file; returns quietly for a healthy or empty one.
void inspect_existing(const fs::path& file, const StoreOptions& options) {
  // The raw header is read without SQLite's locks, so a checkpoint in progress elsewhere can make
  // a healthy file look short for a moment: a header problem only forces the full check below,
  // whose verdict (taken under SQLite's locks) decides.
  const std::string header = header_problem(file);
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(file.c_str(), &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  // Closed on every path; a read-only connection never checkpoints, so closing writes nothing.
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> guard(db, sqlite3_close_v2);
  const std::string path = file.string();
  if (rc != SQLITE_OK) {
    if (detail::is_corruption(rc)) throw CorruptDatabase{sqlite3_errmsg(db)};
    if (is_unwritable_code(rc)) throw Unwritable{fmt::format("cannot open {}: {}", path, sqlite3_errmsg(db))};
    detail::throw_sqlite(db, rc, "opening", path);
  }
  try {
    configure_common(db, path, options.busy_timeout);
    OpenCheck level = options.check;
    if (level != OpenCheck::full &&
        (!header.empty() || (level == OpenCheck::automatic && (file_size_or_zero(file) <= options.automatic_check_max_bytes ||
                                                             fs::exists(needs_check_marker(file)))))) {
      level = OpenCheck::quick;
    }
    const std::string check = quick_check(db, path, level);
    if (check != "ok") throw CorruptDatabase{fmt::format("integrity check: {}", check)};
    const int v = read_schema_version(db, path);
    if (v > kSchemaVersion) {
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache {}: schema version {} is newer than this library supports ({}); "
                              "it was written by a newer flashbias. Upgrade, or set FLASHBIAS_CACHE_DIR to "
                              "another directory",
                              path, v, kSchemaVersion));
    }
    // A bundle is a store file too, but a sealed one: its content digest covers every row, so a
    // write (a cache clear or prune, a compile stored through --db) would damage it for good.
    if (v > 0) {
      Stmt b(db, "SELECT count(*) FROM meta WHERE key = 'bundle_format'", path);
      b.step();
      if (b.i64(0) > 0) {
        throw Error(ErrorCode::cache_error,
                    fmt::format("flashbias cache {}: this file is a flashbias bundle, which is read-only (its content "
                                "digest covers every row); refusing to open it as a writable cache. Read it with "
                                "`flashbias bundle inspect|verify`, or load it through FLASHBIAS_BUNDLE",
                                path));
      }
    }
  } catch (const Error&) {
    const int code = sqlite3_extended_errcode(db);
    if (detail::is_corruption(code)) throw CorruptDatabase{sqlite3_errmsg(db)};
    // A WAL file whose -shm cannot be created here (read-only directory) cannot even be read.
    if (is_unwritable_code(code)) throw Unwritable{fmt::format("cannot read {}: {}", path, sqlite3_errmsg(db))};
    throw;
  }
  // Checked clean (or found too large to check, with no damage reported): any old marker is moot.
  if (options.check != OpenCheck::none) ::unlink(needs_check_marker(file).c_str());
}

// PRAGMA journal_mode = WAL on a file that may still be in rollback mode: the switch needs the
// file's exclusive lock. Where this connection holds a shared lock while another holds the
// reserved lock and waits for the exclusive one (processes opening a new file at once: one
// creating the schema, one switching), SQLite answers SQLITE_BUSY at once, without the busy
// handler, since waiting would deadlock; the statement holds no lock after the failure. So the
// switch is retried until `timeout` (the store's busy timeout) has passed. Returns the journal
// mode the file ends in. (Seen once in CI: 8 processes creating one database, one of them
// failing with "database is locked".)
std::string set_wal_mode(sqlite3* db, std::string_view path, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    try {
      Stmt s(db, "PRAGMA journal_mode = WAL", path);
      s.step();
      return s.text(0);
    } catch (const Error&) {
      const int code = sqlite3_extended_errcode(db) & 0xff;
      if ((code != SQLITE_BUSY && code != SQLITE_LOCKED) || std::chrono::steady_clock::now() >= deadline) throw;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Open and prepare a writable file. Throws Unwritable, CorruptDatabase or Error.
std::unique_ptr<Store::Impl> open_file_rw(const fs::path& file, const StoreOptions& options, const WarningSink& warn) {
  auto impl = std::make_unique<Store::Impl>();
  impl->path = file.string();
  impl->file = file;
  impl->warn = warn;
  impl->busy_timeout = options.busy_timeout;

  // Create the file ourselves so that it (and the -wal and -shm files SQLite derives from it) is
  // 0600 whatever the umask: it holds executable code.
  const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
  } else if (errno != EEXIST) {
    throw Unwritable{fmt::format("cannot create {}: {}", file.string(), std::strerror(errno))};
  }

  // Judge an existing file through a read-only connection first, so that a file that is refused
  // (corrupt, newer, foreign) is left byte for byte as it was: the read-write connection below
  // would already rewrite its header to switch it to WAL.
  const bool is_new = file_size_or_zero(file) == 0;
  if (!is_new) inspect_existing(file, options);

  const int rc = sqlite3_open_v2(file.c_str(), &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = impl->db ? sqlite3_errmsg(impl->db) : sqlite3_errstr(rc);
    if (detail::is_corruption(rc)) throw CorruptDatabase{msg};
    if (is_unwritable_code(rc)) throw Unwritable{fmt::format("cannot open {}: {}", file.string(), msg)};
    detail::throw_sqlite(impl->db, rc, "opening", impl->path);
  }
  sqlite3* db = impl->db;
  if (sqlite3_db_readonly(db, "main") == 1) {
    throw Unwritable{fmt::format("{} is not writable by this user", file.string())};
  }
  try {
    configure_common(db, impl->path, options.busy_timeout);
    // Only for a new file: on an existing one the pragma is a no-op that still costs tens of ms.
    if (is_new) prepare_new_file(db, impl->path);
    // WAL: readers never block the writer and the writer never blocks readers, so processes that
    // tune and processes that only look up kernels share one file.
    {
      const std::string mode = set_wal_mode(db, impl->path, options.busy_timeout);
      if (mode != "wal") {
        warn(fmt::format("flashbias cache {}: WAL mode unavailable (journal mode is '{}'); concurrent "
                         "processes will wait for each other more",
                         impl->path, mode));
      }
    }
    // FULL: a commit survives power loss, not just a crash. Writes are rare (a compile, a tuning
    // run), so the extra fsync costs nothing that matters.
    exec(db, "PRAGMA synchronous = FULL", impl->path, true);
    migrate(db, impl->path, migrations(), kSchemaVersion, library_version());
    impl->version = read_schema_version(db, impl->path);
  } catch (const Error&) {
    const int code = sqlite3_extended_errcode(db);
    if (is_unwritable_code(code)) {
      throw Unwritable{fmt::format("cannot write {}: {}", file.string(), sqlite3_errmsg(db))};
    }
    throw;
  }
  return impl;
}

std::unique_ptr<Store::Impl> open_memory_impl(const StoreOptions& options, const WarningSink& warn) {
  auto impl = std::make_unique<Store::Impl>();
  impl->memory = true;
  impl->warn = warn;
  impl->busy_timeout = options.busy_timeout;
  const int rc = sqlite3_open_v2(kMemoryPath, &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) detail::throw_sqlite(impl->db, rc, "opening an in-memory database", kMemoryPath);
  configure_common(impl->db, kMemoryPath, options.busy_timeout);
  prepare_new_file(impl->db, kMemoryPath);
  migrate(impl->db, kMemoryPath, migrations(), kSchemaVersion, library_version());
  impl->version = kSchemaVersion;
  return impl;
}

// Move a corrupt database (and its WAL and journal) aside, unless another process already did.
// Returns the new name, or "" when the file had already been replaced.
std::string move_aside(const fs::path& file, const FileId& seen) {
  FileLock lock(with_suffix(file, ".lock"));
  // Re-check under the lock: if the inode changed, another process moved the bad file aside and
  // created a new one, which must not be moved too.
  if (!(file_id(file) == seen)) return {};
  const std::string stamp = timestamp_for_name();
  fs::path target = with_suffix(file, ".corrupt-" + stamp);
  for (int n = 1; fs::exists(target); ++n) target = with_suffix(file, fmt::format(".corrupt-{}-{}", stamp, n));
  if (::rename(file.c_str(), target.c_str()) != 0) {
    const int err = errno;
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: the database is corrupt and cannot be moved aside to {}: {}",
                            file.string(), target.string(), std::strerror(err)));
  }
  // A WAL or journal belongs to the old file; applied to the new one it would corrupt it again.
  for (const char* suffix : {"-wal", "-journal"}) {
    const fs::path side = with_suffix(file, suffix);
    if (fs::exists(side)) ::rename(side.c_str(), with_suffix(target, suffix).c_str());
  }
  ::unlink(with_suffix(file, "-shm").c_str());  // shared-memory index: derived data, rebuilt on open
  ::unlink(needs_check_marker(file).c_str());
  return target.string();
}

// Read-only checks shared by open_readonly and open_readonly_memory.
void check_readonly(Store::Impl& impl, const StoreOptions& options, std::int64_t bytes) {
  try {
    configure_common(impl.db, impl.path, options.busy_timeout);
    exec(impl.db, "PRAGMA query_only = ON", impl.path, true);
    // Bundles are read-only and usually small: automatic checks them whole unless they are large.
    OpenCheck level = options.check;
    if (level == OpenCheck::automatic && bytes <= options.automatic_check_max_bytes) level = OpenCheck::quick;
    const std::string check = quick_check(impl.db, impl.path, level);
    if (check != "ok") throw CorruptDatabase{fmt::format("integrity check: {}", check)};
    const int v = read_schema_version(impl.db, impl.path);
    if (v == 0) {
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache {}: empty database, not a flashbias cache or bundle", impl.path));
    }
    if (v > kSchemaVersion) {
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache {}: schema version {} is newer than this library supports ({}); "
                              "it was written by a newer flashbias",
                              impl.path, v, kSchemaVersion));
    }
    if (v < kSchemaVersion) {
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache {}: schema version {} is older than this library's ({}) and a "
                              "read-only file cannot be migrated; re-export it",
                              impl.path, v, kSchemaVersion));
    }
    impl.version = v;
  } catch (const CorruptDatabase& c) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: corrupt or truncated database, not loaded: {}", impl.path, c.message));
  }
}

}  // namespace

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::Store(Store&&) noexcept = default;
Store& Store::operator=(Store&&) noexcept = default;
Store::~Store() = default;

Store Store::open_default(StoreOptions options) {
  CacheLocation loc;
  try {
    loc = default_location();
  } catch (const Error& e) {
    if (!options.fallback_to_memory) throw;
    const WarningSink warn = sink_or_default(options.warn);
    warn(fmt::format("{}; using an in-memory cache for this process", e.what()));
    return Store(open_memory_impl(options, warn));
  }
  return open(loc.db, std::move(options));
}

Store Store::open(const fs::path& db_path, StoreOptions options) {
  const WarningSink warn = sink_or_default(options.warn);
  auto fallback = [&](const std::string& why) {
    if (!options.fallback_to_memory) {
      throw Error(ErrorCode::cache_error, fmt::format("flashbias cache {}: {}", db_path.string(), why));
    }
    warn(fmt::format("flashbias cache {}: {}; using an in-memory cache for this process (nothing is kept "
                     "after it exits)",
                     db_path.string(), why));
    return Store(open_memory_impl(options, warn));
  };

  try {
    ensure_private_dir(db_path.parent_path());
  } catch (const Error& e) {
    // ensure_private_dir's message already names the path.
    if (!options.fallback_to_memory) throw;
    warn(fmt::format("{}; using an in-memory cache for this process (nothing is kept after it exits)", e.what()));
    return Store(open_memory_impl(options, warn));
  }

  // Two passes: the second opens the rebuilt file. A third failure means something keeps
  // corrupting the file, which must not loop forever.
  std::string last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    const FileId seen = file_id(db_path);
    try {
      return Store(open_file_rw(db_path, options, warn));
    } catch (const Unwritable& u) {
      return fallback(u.message);
    } catch (const CorruptDatabase& c) {
      last = c.message;
      const std::string moved = move_aside(db_path, seen);
      if (!moved.empty()) {
        warn(fmt::format("flashbias cache {}: corrupt or truncated database ({}); moved it to {} and "
                         "started a new cache",
                         db_path.string(), c.message, moved));
      }
    }
  }
  throw Error(ErrorCode::cache_error,
              fmt::format("flashbias cache {}: still corrupt after rebuilding it: {}", db_path.string(), last));
}

Store Store::open_memory(StoreOptions options) {
  return Store(open_memory_impl(options, sink_or_default(options.warn)));
}

Store Store::open_readonly(const fs::path& db_path, StoreOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->path = db_path.string();
  impl->file = db_path;
  impl->readonly = true;
  impl->warn = sink_or_default(options.warn);
  impl->busy_timeout = options.busy_timeout;
  if (!fs::is_regular_file(db_path)) {
    throw Error(ErrorCode::cache_error, fmt::format("flashbias cache {}: no such file", db_path.string()));
  }
  if (std::string p = header_problem(db_path); !p.empty()) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: corrupt or truncated database, not loaded: {}", impl->path, p));
  }
  // immutable=1: no locks, no WAL, no -shm, so a bundle on a read-only medium opens. The file
  // must then not change while open; bundles are written once by export_to's rename.
  const std::string uri = file_uri(db_path, "immutable=1");
  const int rc = sqlite3_open_v2(uri.c_str(), &impl->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
  if (rc != SQLITE_OK) detail::throw_sqlite(impl->db, rc, "opening read-only", impl->path);
  check_readonly(*impl, options, file_size_or_zero(db_path));
  return Store(std::move(impl));
}

Store Store::open_readonly_memory(const void* data, std::size_t n, Ownership ownership, StoreOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->path = fmt::format("<memory image of {} bytes>", n);
  impl->memory = true;
  impl->readonly = true;
  impl->warn = sink_or_default(options.warn);
  impl->busy_timeout = options.busy_timeout;
  static constexpr char kMagic[] = "SQLite format 3";  // 16 bytes with the terminating NUL
  if (data == nullptr || n < 512 || std::memcmp(data, kMagic, sizeof kMagic) != 0) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: not an SQLite database image (bad header or too short)", impl->path));
  }
  if (std::string p = header_problem(static_cast<const unsigned char*>(data), n, std::int64_t(n)); !p.empty()) {
    throw Error(ErrorCode::cache_error,
                fmt::format("flashbias cache {}: corrupt or truncated image, not loaded: {}", impl->path, p));
  }
  const auto* bytes = static_cast<const unsigned char*>(data);
  // Header bytes 18 and 19 are 2 for a WAL-mode file; an in-memory image has no WAL to go with
  // it, so such an image is copied and marked as a rollback-journal file instead.
  const bool wal_header = bytes[18] == 2 || bytes[19] == 2;
  const int rc = sqlite3_open_v2(kMemoryPath, &impl->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) detail::throw_sqlite(impl->db, rc, "opening", impl->path);
  unsigned char* image = nullptr;
  unsigned flags = SQLITE_DESERIALIZE_READONLY;
  if (ownership == Ownership::copy || wal_header) {
    image = static_cast<unsigned char*>(sqlite3_malloc64(n));
    if (!image) throw Error(ErrorCode::cache_error, fmt::format("flashbias cache {}: out of memory", impl->path));
    std::memcpy(image, data, n);
    if (wal_header) image[18] = image[19] = 1;
    flags |= SQLITE_DESERIALIZE_FREEONCLOSE;  // SQLite frees it, even if deserialize fails
  } else {
    // READONLY: SQLite never writes through this pointer, so the const_cast is sound.
    image = const_cast<unsigned char*>(bytes);
  }
  const int drc = sqlite3_deserialize(impl->db, "main", image, sqlite3_int64(n), sqlite3_int64(n), flags);
  if (drc != SQLITE_OK) detail::throw_sqlite(impl->db, drc, "deserializing", impl->path);
  check_readonly(*impl, options, std::int64_t(n));
  return Store(std::move(impl));
}

// ---------------------------------------------------------------------------------------------
// Accessors

const std::string& Store::path() const { return impl_->path; }
bool Store::in_memory() const { return impl_->memory; }
bool Store::read_only() const { return impl_->readonly; }
int Store::schema_version() const { return impl_->version; }

std::optional<std::string> Store::get_meta(const std::string& key) const {
  std::lock_guard lock(impl_->mu);
  try {
    Stmt s(impl_->db, "SELECT value FROM meta WHERE key = ?", impl_->path);
    s.bind(1, key);
    if (!s.step()) return std::nullopt;
    return s.text(0);
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

void Store::set_meta(const std::string& key, const std::string& value) {
  if (key == "format" || key == "schema_version") {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("flashbias cache: meta key '{}' is managed by the store and cannot be set", key));
  }
  std::lock_guard lock(impl_->mu);
  impl_->require_writable("set meta");
  try {
    WriteTx tx(impl_->db, impl_->path);
    Stmt s(impl_->db, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
           impl_->path);
    s.bind(1, key).bind(2, value);
    s.run();
    tx.commit();
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels

void Store::put_kernel(const KernelRecord& r) {
  auto invalid = [&](std::string_view why) {
    return Error(ErrorCode::invalid_argument,
                 fmt::format("flashbias cache: put_kernel({}): {}", r.spec.empty() ? r.key : r.spec, why));
  };
  if (r.key.size() != 64 || r.key.find_first_not_of("0123456789abcdef") != std::string::npos) {
    throw invalid("key must be 64 lowercase hex characters (kernel_key())");
  }
  if (r.spec.empty() || r.arch.empty() || r.entry.empty()) throw invalid("spec, arch and entry must be set");
  if (r.cubin.empty()) throw invalid("empty cubin");
  const std::string sha = sha256_hex(r.cubin.data(), r.cubin.size());
  const std::int64_t now = now_seconds();
  const std::int64_t created = r.created_at ? r.created_at : now;
  const std::int64_t used = r.last_used_at ? r.last_used_at : created;

  std::lock_guard lock(impl_->mu);
  impl_->require_writable("store a kernel");
  try {
    WriteTx tx(impl_->db, impl_->path);
    // A concurrent compile of the same key produced the same cubin; replacing keeps the newest
    // metadata while the history (hits, creation time) stays with the key.
    Stmt s(impl_->db,
           "INSERT INTO kernels (key, spec, arch, nvrtc_version, driver_version, templates_hash, options, entry, "
           "threads, smem_bytes, registers, spill_store_bytes, spill_load_bytes, stack_bytes, compile_ms, cubin, "
           "cubin_bytes, cubin_sha256, created_at, last_used_at, hits) "
           "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) "
           "ON CONFLICT (key) DO UPDATE SET spec = excluded.spec, arch = excluded.arch, "
           "nvrtc_version = excluded.nvrtc_version, driver_version = excluded.driver_version, "
           "templates_hash = excluded.templates_hash, options = excluded.options, entry = excluded.entry, "
           "threads = excluded.threads, smem_bytes = excluded.smem_bytes, registers = excluded.registers, "
           "spill_store_bytes = excluded.spill_store_bytes, spill_load_bytes = excluded.spill_load_bytes, "
           "stack_bytes = excluded.stack_bytes, compile_ms = excluded.compile_ms, cubin = excluded.cubin, "
           "cubin_bytes = excluded.cubin_bytes, cubin_sha256 = excluded.cubin_sha256",
           impl_->path);
    s.bind(1, r.key).bind(2, r.spec).bind(3, r.arch).bind(4, r.nvrtc_version).bind(5, r.driver_version);
    s.bind(6, r.templates_hash).bind(7, r.options).bind(8, r.entry).bind(9, r.threads).bind(10, r.smem_bytes);
    s.bind(11, r.registers).bind(12, r.spill_store_bytes).bind(13, r.spill_load_bytes).bind(14, r.stack_bytes);
    s.bind(15, r.compile_ms).bind_blob(16, r.cubin.data(), r.cubin.size());
    s.bind(17, std::int64_t(r.cubin.size())).bind(18, sha).bind(19, created).bind(20, used).bind(21, r.hits);
    s.run();
    tx.commit();
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

std::optional<KernelRecord> Store::load_kernel(const std::string& key) {
  std::lock_guard lock(impl_->mu);
  try {
    return impl_->load_verified(key);
  } catch (const CorruptDatabase& c) {
    // A load is allowed to miss: the caller recompiles, and the next open rebuilds the file.
    impl_->flag_for_check();
    impl_->warn(fmt::format("flashbias cache {}: reading kernel {} hit a corrupt database ({}); treating it as a miss",
                            impl_->path, key.substr(0, 16), c.message));
    return std::nullopt;
  }
}

std::optional<KernelRecord> Store::find_kernel(const std::string& spec, const std::string& arch,
                                               const std::string& templates_hash, std::optional<int> nvrtc_version) {
  std::lock_guard lock(impl_->mu);
  try {
    std::vector<std::string> keys;
    {
      Stmt s(impl_->db,
             std::string("SELECT key FROM kernels WHERE spec = ?1 AND arch = ?2 AND templates_hash = ?3") +
                 (nvrtc_version ? " AND nvrtc_version = ?4" : "") +
                 " ORDER BY nvrtc_version DESC, created_at DESC, key",
             impl_->path);
      s.bind(1, spec).bind(2, arch).bind(3, templates_hash);
      if (nvrtc_version) s.bind(4, *nvrtc_version);
      while (s.step()) keys.push_back(s.text(0));
    }
    // Newest first; a candidate that fails its hash check is dropped and the next one tried.
    for (const auto& k : keys) {
      if (auto rec = impl_->load_verified(k)) return rec;
    }
    return std::nullopt;
  } catch (const CorruptDatabase& c) {
    impl_->flag_for_check();
    impl_->warn(fmt::format("flashbias cache {}: looking up kernel {} hit a corrupt database ({}); treating it as a miss",
                            impl_->path, spec, c.message));
    return std::nullopt;
  }
}

bool Store::erase_kernel(const std::string& key) {
  std::lock_guard lock(impl_->mu);
  impl_->require_writable("erase a kernel");
  try {
    WriteTx tx(impl_->db, impl_->path);
    Stmt s(impl_->db, "DELETE FROM kernels WHERE key = ?", impl_->path);
    s.bind(1, key);
    s.run();
    const bool existed = sqlite3_changes(impl_->db) > 0;
    tx.commit();
    return existed;
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

std::vector<KernelRecord> Store::list_kernels() const {
  std::lock_guard lock(impl_->mu);
  try {
    std::vector<KernelRecord> out;
    Stmt s(impl_->db, fmt::format("SELECT {} FROM kernels ORDER BY created_at DESC, key", kKernelColumns), impl_->path);
    while (s.step()) out.push_back(read_kernel_columns(s));
    return out;
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Tuning

std::int64_t Store::put_tuning_run(const TuningRun& run) {
  auto invalid = [&](const std::string& why) {
    return Error(ErrorCode::invalid_argument,
                 fmt::format("flashbias cache: tuning run for {} / {} on {}: {}", run.problem_key, run.bucket,
                             run.device.str(), why));
  };
  if (run.device.name.empty() || run.problem_key.empty() || run.bucket.empty() || run.strategy.empty() ||
      run.arch.empty()) {
    throw invalid("device name, problem key, arch, bucket and strategy must be set");
  }
  std::optional<double> winner_ms;
  if (run.winner_tile) {
    for (const auto& c : run.candidates) {
      if (c.tile == *run.winner_tile && c.outcome == Outcome::passed && c.median_ms) {
        winner_ms = c.median_ms;
        break;
      }
    }
    if (!winner_ms) {
      throw invalid(fmt::format("winner '{}' is not a passed, timed candidate of the run; only a candidate that "
                                "matched the reference can win",
                                *run.winner_tile));
    }
  }
  const std::int64_t created = run.created_at ? run.created_at : now_seconds();
  const std::string& created_by = run.created_by.empty() ? library_version() : run.created_by;

  std::lock_guard lock(impl_->mu);
  impl_->require_writable("store a tuning run");
  try {
    WriteTx tx(impl_->db, impl_->path);
    Stmt s(impl_->db,
           "INSERT INTO tuning_runs (device, gpu_name, sm_count, cc_major, cc_minor, driver_version, problem_key, "
           "arch, bucket, strategy, templates_hash, nvrtc_version, winner_tile, winner_ms, tuning_seconds, "
           "created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
           impl_->path);
    s.bind(1, run.device.str()).bind(2, run.device.name).bind(3, run.device.sm_count).bind(4, run.device.cc_major);
    s.bind(5, run.device.cc_minor).bind(6, run.device.driver_version).bind(7, run.problem_key).bind(8, run.arch);
    s.bind(9, run.bucket).bind(10, run.strategy).bind(11, run.templates_hash).bind(12, run.nvrtc_version);
    s.bind(13, run.winner_tile).bind(14, winner_ms).bind(15, run.tuning_seconds).bind(16, created);
    s.bind(17, created_by);
    s.run();
    const std::int64_t id = sqlite3_last_insert_rowid(impl_->db);
    Stmt c(impl_->db,
           "INSERT INTO tuning_candidates (run_id, idx, tile, outcome, reason, median_ms, min_ms, max_ms, repeats, "
           "compile_ms, max_error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
           impl_->path);
    for (std::size_t i = 0; i < run.candidates.size(); ++i) {
      const auto& k = run.candidates[i];
      c.reset();
      c.bind(1, id).bind(2, std::int64_t(i)).bind(3, k.tile).bind(4, to_string(k.outcome)).bind(5, k.reason);
      c.bind(6, k.median_ms).bind(7, k.min_ms).bind(8, k.max_ms).bind(9, k.repeats).bind(10, k.compile_ms);
      c.bind(11, k.max_error);
      c.run();
    }
    tx.commit();
    return id;
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

std::optional<TuningWinner> Store::find_winner(const std::string& device_fp, const std::string& problem_key,
                                               const std::string& bucket) const {
  std::lock_guard lock(impl_->mu);
  try {
    // Newest run wins: a re-tune (new templates, a longer budget) supersedes the old answer, and
    // the old runs stay as history.
    Stmt s(impl_->db,
           "SELECT id, winner_tile, winner_ms, strategy, tuning_seconds, created_at FROM tuning_runs "
           "WHERE device = ? AND problem_key = ? AND bucket = ? AND winner_tile IS NOT NULL "
           "ORDER BY created_at DESC, id DESC LIMIT 1",
           impl_->path);
    s.bind(1, device_fp).bind(2, problem_key).bind(3, bucket);
    if (!s.step()) return std::nullopt;
    TuningWinner w;
    w.run_id = s.i64(0);
    w.tile = s.text(1);
    w.median_ms = s.f64(2);
    w.strategy = s.text(3);
    w.tuning_seconds = s.f64(4);
    w.created_at = s.i64(5);
    return w;
  } catch (const CorruptDatabase& c) {
    impl_->flag_for_check();
    impl_->warn(fmt::format("flashbias cache {}: looking up the winner for {} hit a corrupt database ({}); treating "
                            "it as a miss",
                            impl_->path, problem_key, c.message));
    return std::nullopt;
  }
}

std::optional<TuningRun> Store::load_tuning_run(std::int64_t id) const {
  std::lock_guard lock(impl_->mu);
  try {
    Stmt s(impl_->db,
           "SELECT gpu_name, sm_count, cc_major, cc_minor, driver_version, problem_key, arch, bucket, strategy, "
           "templates_hash, nvrtc_version, winner_tile, tuning_seconds, created_at, created_by FROM tuning_runs "
           "WHERE id = ?",
           impl_->path);
    s.bind(1, id);
    if (!s.step()) return std::nullopt;
    TuningRun r;
    r.id = id;
    r.device = {s.text(0), s.i32(1), s.i32(2), s.i32(3), s.i32(4)};
    r.problem_key = s.text(5);
    r.arch = s.text(6);
    r.bucket = s.text(7);
    r.strategy = s.text(8);
    r.templates_hash = s.text(9);
    r.nvrtc_version = s.i32(10);
    r.winner_tile = s.opt_text(11);
    r.tuning_seconds = s.f64(12);
    r.created_at = s.i64(13);
    r.created_by = s.text(14);
    Stmt c(impl_->db,
           "SELECT tile, outcome, reason, median_ms, min_ms, max_ms, repeats, compile_ms, max_error "
           "FROM tuning_candidates WHERE run_id = ? ORDER BY idx",
           impl_->path);
    c.bind(1, id);
    while (c.step()) {
      TuningCandidate k;
      k.tile = c.text(0);
      k.outcome = parse_outcome(c.text(1));
      k.reason = c.text(2);
      k.median_ms = c.opt_f64(3);
      k.min_ms = c.opt_f64(4);
      k.max_ms = c.opt_f64(5);
      k.repeats = c.i32(6);
      k.compile_ms = c.opt_f64(7);
      k.max_error = c.opt_f64(8);
      r.candidates.push_back(std::move(k));
    }
    return r;
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

namespace {
// Runs that find_winner would answer with: the newest run with a winner of each triple.
constexpr const char* kCurrentWinnerRuns =
    "SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY device, problem_key, bucket "
    "ORDER BY created_at DESC, id DESC) AS rn FROM tuning_runs WHERE winner_tile IS NOT NULL) WHERE rn = 1";
}  // namespace

std::vector<WinnerEntry> Store::list_winners(const std::optional<std::string>& device_fp) const {
  std::lock_guard lock(impl_->mu);
  try {
    Stmt s(impl_->db,
           fmt::format("SELECT r.device, r.problem_key, r.arch, r.bucket, r.id, r.winner_tile, r.winner_ms, r.strategy, "
                       "r.tuning_seconds, r.created_at, "
                       "(SELECT count(*) FROM tuning_candidates c WHERE c.run_id = r.id), "
                       "(SELECT count(*) FROM tuning_candidates c WHERE c.run_id = r.id AND c.outcome = 'passed') "
                       "FROM tuning_runs r WHERE r.id IN ({}) {} ORDER BY r.device, r.problem_key, r.bucket",
                       kCurrentWinnerRuns, device_fp ? "AND r.device = ?1" : ""),
           impl_->path);
    if (device_fp) s.bind(1, *device_fp);
    std::vector<WinnerEntry> out;
    while (s.step()) {
      WinnerEntry e;
      e.device = s.text(0);
      e.problem_key = s.text(1);
      e.arch = s.text(2);
      e.bucket = s.text(3);
      e.winner.run_id = s.i64(4);
      e.winner.tile = s.text(5);
      e.winner.median_ms = s.f64(6);
      e.winner.strategy = s.text(7);
      e.winner.tuning_seconds = s.f64(8);
      e.winner.created_at = s.i64(9);
      e.candidates = s.i32(10);
      e.passed = s.i32(11);
      out.push_back(std::move(e));
    }
    return out;
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

// ---------------------------------------------------------------------------------------------
// Maintenance

CacheStats Store::stats() const {
  std::lock_guard lock(impl_->mu);
  try {
    CacheStats st;
    st.path = impl_->path;
    st.in_memory = impl_->memory;
    st.read_only = impl_->readonly;
    st.schema_version = impl_->version;
    st.file_bytes = impl_->file_bytes();
    {
      Stmt s(impl_->db, "SELECT count(*), coalesce(sum(cubin_bytes), 0), coalesce(sum(hits), 0) FROM kernels",
             impl_->path);
      s.step();
      st.kernel_count = s.i64(0);
      st.kernel_bytes = s.i64(1);
      st.kernel_hits = s.i64(2);
    }
    {
      Stmt s(impl_->db,
             fmt::format("SELECT (SELECT count(*) FROM tuning_runs), (SELECT count(*) FROM tuning_candidates), "
                         "(SELECT count(*) FROM ({}))",
                         kCurrentWinnerRuns),
             impl_->path);
      s.step();
      st.tuning_runs = s.i64(0);
      st.tuning_candidates = s.i64(1);
      st.winners = s.i64(2);
    }
    {
      Stmt s(impl_->db,
             "SELECT arch, count(*), sum(cubin_bytes), sum(hits) FROM kernels GROUP BY arch ORDER BY arch", impl_->path);
      while (s.step()) st.by_arch.push_back({s.text(0), s.i64(1), s.i64(2), s.i64(3)});
    }
    {
      Stmt s(impl_->db,
             fmt::format("SELECT r.device, count(*), sum(r.id IN ({})), "
                         "(SELECT count(*) FROM tuning_candidates c JOIN tuning_runs r2 ON c.run_id = r2.id "
                         " WHERE r2.device = r.device) "
                         "FROM tuning_runs r GROUP BY r.device ORDER BY r.device",
                         kCurrentWinnerRuns),
             impl_->path);
      while (s.step()) st.by_device.push_back({s.text(0), s.i64(1), s.i64(2), s.i64(3)});
    }
    return st;
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
}

VerifyReport Store::verify(bool delete_bad) {
  std::lock_guard lock(impl_->mu);
  VerifyReport rep;
  try {
    rep.integrity = quick_check(impl_->db, impl_->path, OpenCheck::quick);
    {
      // One row at a time: the blob is hashed in place, never the whole table in memory.
      Stmt s(impl_->db, "SELECT key, spec, arch, cubin, cubin_bytes, cubin_sha256 FROM kernels ORDER BY key",
             impl_->path);
      while (s.step()) {
        ++rep.checked;
        const std::string problem =
            blob_problem(sqlite3_column_blob(s.raw(), 3), std::size_t(sqlite3_column_bytes(s.raw(), 3)), s.i64(4),
                         s.text(5));
        if (!problem.empty()) rep.bad.push_back({s.text(0), s.text(1), s.text(2), problem});
      }
    }
    if (delete_bad && !rep.bad.empty()) {
      impl_->require_writable("delete bad kernels");
      WriteTx tx(impl_->db, impl_->path);
      Stmt check(impl_->db, "SELECT cubin, cubin_bytes, cubin_sha256 FROM kernels WHERE key = ?", impl_->path);
      Stmt del(impl_->db, "DELETE FROM kernels WHERE key = ?", impl_->path);
      for (const auto& b : rep.bad) {
        // Re-check under the lock: another process may have rewritten the entry since.
        check.reset();
        check.bind(1, b.key);
        if (!check.step()) continue;
        const std::string still = blob_problem(sqlite3_column_blob(check.raw(), 0),
                                               std::size_t(sqlite3_column_bytes(check.raw(), 0)), check.i64(1),
                                               check.text(2));
        if (still.empty()) continue;
        del.reset();
        del.bind(1, b.key);
        del.run();
        ++rep.deleted;
      }
      tx.commit();
      impl_->reclaim();
    }
  } catch (const CorruptDatabase& c) {
    // verify reports rather than throws: the CLI shows what it found.
    rep.integrity = rep.integrity == "ok" || rep.integrity.empty() ? c.message : rep.integrity + "; " + c.message;
  }
  return rep;
}

RemovalReport Store::clear(const ClearFilter& filter) {
  std::lock_guard lock(impl_->mu);
  impl_->require_writable("clear");
  RemovalReport rep;
  rep.file_bytes_before = impl_->file_bytes();
  try {
    WriteTx tx(impl_->db, impl_->path);
    // Kernels belong to an arch, not to a device, so a device filter leaves them alone.
    if (!filter.device) {
      Stmt count(impl_->db,
                 std::string("SELECT count(*), coalesce(sum(cubin_bytes), 0) FROM kernels") +
                     (filter.arch ? " WHERE arch = ?1" : ""),
                 impl_->path);
      if (filter.arch) count.bind(1, *filter.arch);
      count.step();
      rep.kernels = count.i64(0);
      rep.kernel_bytes = count.i64(1);
      Stmt del(impl_->db, std::string("DELETE FROM kernels") + (filter.arch ? " WHERE arch = ?1" : ""), impl_->path);
      if (filter.arch) del.bind(1, *filter.arch);
      del.run();
    }
    std::string where = " WHERE 1";
    if (filter.device) where += " AND device = ?1";
    if (filter.arch) where += " AND arch = ?2";
    Stmt del(impl_->db, "DELETE FROM tuning_runs" + where, impl_->path);
    if (filter.device) del.bind(1, *filter.device);
    if (filter.arch) del.bind(2, *filter.arch);
    del.run();
    rep.tuning_runs = sqlite3_changes(impl_->db);
    tx.commit();
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
  impl_->reclaim();
  rep.file_bytes_after = impl_->file_bytes();
  return rep;
}

RemovalReport Store::prune(const PruneOptions& options) {
  std::lock_guard lock(impl_->mu);
  impl_->require_writable("prune");
  RemovalReport rep;
  rep.file_bytes_before = impl_->file_bytes();
  const std::int64_t now = now_seconds();
  try {
    WriteTx tx(impl_->db, impl_->path);
    struct Row { std::string key; std::int64_t bytes, created, used; };
    std::vector<Row> rows;  // least recently used first
    {
      Stmt s(impl_->db, "SELECT key, cubin_bytes, created_at, last_used_at FROM kernels ORDER BY last_used_at, created_at, key",
             impl_->path);
      while (s.step()) rows.push_back({s.text(0), s.i64(1), s.i64(2), s.i64(3)});
    }
    std::vector<bool> drop(rows.size(), false);
    std::int64_t kept_bytes = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (options.older_than && rows[i].created < now - options.older_than->count()) drop[i] = true;
      if (options.unused_for && rows[i].used < now - options.unused_for->count()) drop[i] = true;
      if (!drop[i]) kept_bytes += rows[i].bytes;
    }
    if (options.max_bytes) {
      for (std::size_t i = 0; i < rows.size() && kept_bytes > *options.max_bytes; ++i) {
        if (drop[i]) continue;
        drop[i] = true;
        kept_bytes -= rows[i].bytes;
      }
    }
    Stmt del(impl_->db, "DELETE FROM kernels WHERE key = ?", impl_->path);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (!drop[i]) continue;
      ++rep.kernels;
      rep.kernel_bytes += rows[i].bytes;
      if (options.dry_run) continue;
      del.reset();
      del.bind(1, rows[i].key);
      del.run();
    }
    if (options.older_than) {
      // Only superseded runs: a current winner is the result of minutes of tuning and is kept
      // until the user clears it explicitly.
      const std::string where =
          fmt::format("FROM tuning_runs WHERE created_at < ?1 AND id NOT IN ({})", kCurrentWinnerRuns);
      Stmt count(impl_->db, "SELECT count(*) " + where, impl_->path);
      count.bind(1, now - options.older_than->count());
      count.step();
      rep.tuning_runs = count.i64(0);
      if (!options.dry_run) {
        Stmt d(impl_->db, "DELETE " + where, impl_->path);
        d.bind(1, now - options.older_than->count());
        d.run();
      }
    }
    if (!options.dry_run) tx.commit();  // a dry run rolls back in ~WriteTx (nothing was written)
  } catch (const CorruptDatabase& c) {
    impl_->corrupt(c);
  }
  if (!options.dry_run) impl_->reclaim();
  rep.file_bytes_after = impl_->file_bytes();
  return rep;
}

// ---------------------------------------------------------------------------------------------
// Export

namespace {

// A read transaction on the source so that kernels and runs come from one snapshot.
class ReadTx {
 public:
  ReadTx(sqlite3* db, std::string_view path) : db_(db) { exec(db_, "BEGIN", path, true); }
  ~ReadTx() { sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr); }
  ReadTx(const ReadTx&) = delete;
  ReadTx& operator=(const ReadTx&) = delete;

 private:
  sqlite3* db_;
};

// "col IN (?, ?, ...)" over `values`, appending them to `binds`; "1" when values is empty.
std::string in_list(const char* col, const std::vector<std::string>& values, std::vector<std::string>& binds) {
  if (values.empty()) return "1";
  std::string s = fmt::format("{} IN (", col);
  for (std::size_t i = 0; i < values.size(); ++i) {
    s += i ? ", ?" : "?";
    binds.push_back(values[i]);
  }
  return s + ")";
}

std::vector<std::string> table_columns(sqlite3* db, std::string_view path, const char* table) {
  std::vector<std::string> cols;
  Stmt s(db, fmt::format("PRAGMA table_info({})", table), path);
  while (s.step()) cols.push_back(s.text(1));
  return cols;
}

// Copy the rows of `table` selected by `where` from src to dst, column by column, values as they
// are (sqlite3_bind_value copies them, across connections). Returns the number of rows.
std::int64_t copy_rows(sqlite3* src, std::string_view src_path, sqlite3* dst, std::string_view dst_path,
                       const char* table, const std::string& where, const std::vector<std::string>& binds) {
  const auto cols = table_columns(dst, dst_path, table);
  std::string list, marks;
  for (std::size_t i = 0; i < cols.size(); ++i) {
    list += (i ? ", " : "") + cols[i];
    marks += i ? ", ?" : "?";
  }
  Stmt sel(src, fmt::format("SELECT {} FROM {} WHERE {}", list, table, where), src_path);
  for (std::size_t i = 0; i < binds.size(); ++i) sel.bind(int(i + 1), binds[i]);
  Stmt ins(dst, fmt::format("INSERT INTO {} ({}) VALUES ({})", table, list, marks), dst_path);
  std::int64_t n = 0;
  while (sel.step()) {
    ins.reset();
    for (std::size_t i = 0; i < cols.size(); ++i) {
      const int rc = sqlite3_bind_value(ins.raw(), int(i + 1), sqlite3_column_value(sel.raw(), int(i)));
      if (rc != SQLITE_OK) detail::throw_sqlite(dst, rc, "copying a value", dst_path);
    }
    ins.run();
    ++n;
  }
  return n;
}

void fsync_path(const fs::path& p, int flags) {
  const int fd = ::open(p.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

ExportReport Store::export_to(const fs::path& path, const ExportFilter& filter) const {
  for (const auto& [k, v] : filter.meta) {
    if (k == "format" || k == "schema_version") {
      throw Error(ErrorCode::invalid_argument,
                  fmt::format("flashbias cache: export meta key '{}' is managed by the store", k));
    }
  }
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  static std::atomic<int> counter{0};
  const fs::path tmp = dir / fmt::format(".{}.tmp-{}-{}", path.filename().string(), ::getpid(), counter++);
  ::unlink(tmp.c_str());

  std::lock_guard lock(impl_->mu);
  sqlite3* dst = nullptr;
  const std::string tmp_name = tmp.string();
  auto cleanup = [&]() {
    if (dst) sqlite3_close_v2(dst);
    dst = nullptr;
    ::unlink(tmp.c_str());
    ::unlink(with_suffix(tmp, "-journal").c_str());
  };
  ExportReport rep;
  rep.path = path;
  try {
    const int rc = sqlite3_open_v2(tmp.c_str(), &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                   nullptr);
    if (rc != SQLITE_OK) detail::throw_sqlite(dst, rc, "creating the export file", tmp_name);
    sqlite3_extended_result_codes(dst, 1);
    prepare_new_file(dst, tmp_name);
    // Rollback journal, not WAL: the result is opened immutable or from memory, neither of which
    // can read a WAL.
    exec(dst, "PRAGMA journal_mode = DELETE; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", tmp_name);
    migrate(dst, tmp_name, migrations(), kSchemaVersion, library_version());

    WriteTx tx(dst, tmp_name);
    {
      Stmt m(dst, "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
             tmp_name);
      auto put = [&](const std::string& k, const std::string& v) {
        m.reset();
        m.bind(1, k).bind(2, v);
        m.run();
      };
      put("exported_at", std::to_string(now_seconds()));
      put("exported_by", library_version());
      for (const auto& [k, v] : filter.meta) put(k, v);
    }
    {
      ReadTx snapshot(impl_->db, impl_->path);
      if (filter.kernels) {
        std::vector<std::string> binds;
        const std::string where =
            in_list("arch", filter.archs, binds) + " AND " + in_list("key", filter.kernel_keys, binds);
        copy_rows(impl_->db, impl_->path, dst, tmp_name, "kernels", where, binds);
      }
      if (filter.tuning) {
        std::vector<std::string> binds;
        std::string where = in_list("arch", filter.archs, binds) + " AND " + in_list("device", filter.devices, binds) +
                            " AND " + in_list("problem_key", filter.problem_keys, binds);
        if (filter.latest_runs_only) where += fmt::format(" AND id IN ({})", kCurrentWinnerRuns);
        rep.tuning_runs = copy_rows(impl_->db, impl_->path, dst, tmp_name, "tuning_runs", where, binds);
        if (filter.candidates) {
          copy_rows(impl_->db, impl_->path, dst, tmp_name, "tuning_candidates",
                    "run_id IN (SELECT id FROM tuning_runs WHERE " + where + ")", binds);
        }
      }
    }
    // A bundle never carries a bad blob: re-hash what was copied and drop what fails.
    {
      std::vector<std::pair<std::string, std::string>> bad;
      Stmt s(dst, "SELECT key, spec, cubin, cubin_bytes, cubin_sha256 FROM kernels", tmp_name);
      while (s.step()) {
        const std::string problem = blob_problem(sqlite3_column_blob(s.raw(), 2),
                                                 std::size_t(sqlite3_column_bytes(s.raw(), 2)), s.i64(3), s.text(4));
        if (problem.empty()) {
          ++rep.kernels;
          rep.kernel_bytes += s.i64(3);
        } else {
          bad.emplace_back(s.text(0), s.text(1) + ": " + problem);
        }
      }
      Stmt del(dst, "DELETE FROM kernels WHERE key = ?", tmp_name);
      for (const auto& [key, why] : bad) {
        impl_->warn(fmt::format("flashbias cache {}: not exporting kernel {}", impl_->path, why));
        del.reset();
        del.bind(1, key);
        del.run();
      }
      // Usage counters describe this machine, not the bundle.
      exec(dst, "UPDATE kernels SET hits = 0, last_used_at = created_at", tmp_name);
    }
    tx.commit();
    const int crc = sqlite3_close_v2(dst);
    dst = nullptr;
    if (crc != SQLITE_OK) detail::throw_sqlite(nullptr, crc, "closing the export file", tmp_name);
    fsync_path(tmp, O_RDONLY);
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      throw Error(ErrorCode::cache_error,
                  fmt::format("flashbias cache: cannot rename {} to {}: {}", tmp_name, path.string(), std::strerror(err)));
    }
    fsync_path(dir, O_RDONLY | O_DIRECTORY);  // make the rename itself durable
  } catch (const CorruptDatabase& c) {
    cleanup();
    impl_->corrupt(c);
  } catch (...) {
    cleanup();
    throw;
  }
  rep.file_bytes = file_size_or_zero(path);
  return rep;
}

}  // namespace flashbias::cache
