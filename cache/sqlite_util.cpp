#include "cache/sqlite_util.h"

#include <fmt/format.h>

#include "flashbias/flashbias.hpp"

namespace flashbias::cache::detail {

void throw_sqlite(sqlite3* db, int rc, std::string_view what, std::string_view path) {
  const char* msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  throw Error(ErrorCode::cache_error,
              fmt::format("flashbias cache {}: {}: {} (sqlite code {})", path, what, msg, rc));
}

namespace {
[[noreturn]] void fail(sqlite3* db, int rc, std::string_view what, std::string_view path, bool special) {
  if (special && is_corruption(rc)) {
    throw CorruptDatabase{fmt::format("{}: {} (sqlite code {})", what, sqlite3_errmsg(db), rc)};
  }
  throw_sqlite(db, rc, what, path);
}
}  // namespace

void exec(sqlite3* db, const std::string& sql, std::string_view path, bool corruption_is_special) {
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    const std::string what = fmt::format("'{}' failed: {}", sql.substr(0, 60), msg);
    if (corruption_is_special && is_corruption(rc)) throw CorruptDatabase{what};
    throw Error(ErrorCode::cache_error, fmt::format("flashbias cache {}: {} (sqlite code {})", path, what, rc));
  }
}

Stmt::Stmt(sqlite3* db, std::string_view sql, std::string_view path) : db_(db), path_(path), sql_(sql) {
  const int rc = sqlite3_prepare_v2(db, sql.data(), int(sql.size()), &stmt_, nullptr);
  if (rc != SQLITE_OK) fail(db, rc, fmt::format("preparing '{}'", sql_.substr(0, 80)), path_, true);
}

Stmt::~Stmt() { sqlite3_finalize(stmt_); }

namespace {
void check_bind(sqlite3* db, int rc, const std::string& path) {
  if (rc != SQLITE_OK) throw_sqlite(db, rc, "binding a parameter", path);
}
}  // namespace

Stmt& Stmt::bind(int i, std::int64_t v) { check_bind(db_, sqlite3_bind_int64(stmt_, i, v), path_); return *this; }
Stmt& Stmt::bind(int i, double v) { check_bind(db_, sqlite3_bind_double(stmt_, i, v), path_); return *this; }
Stmt& Stmt::bind(int i, std::string_view v) {
  check_bind(db_, sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8), path_);
  return *this;
}
Stmt& Stmt::bind(int i, const std::optional<double>& v) { return v ? bind(i, *v) : bind_null(i); }
Stmt& Stmt::bind(int i, const std::optional<std::string>& v) { return v ? bind(i, std::string_view(*v)) : bind_null(i); }
Stmt& Stmt::bind_blob(int i, const void* data, std::size_t n) {
  // A zero-length blob must still be a BLOB, not NULL: SQLite treats a null pointer as NULL.
  static const std::uint8_t kEmpty = 0;
  check_bind(db_, sqlite3_bind_blob64(stmt_, i, n ? data : &kEmpty, n, SQLITE_TRANSIENT), path_);
  return *this;
}
Stmt& Stmt::bind_null(int i) { check_bind(db_, sqlite3_bind_null(stmt_, i), path_); return *this; }

bool Stmt::step() {
  const int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  fail(db_, rc, fmt::format("running '{}'", sql_.substr(0, 80)), path_, true);
}

void Stmt::reset() {
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
}

std::string Stmt::text(int col) const {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
  const int n = sqlite3_column_bytes(stmt_, col);
  return p ? std::string(p, std::size_t(n)) : std::string();
}

std::optional<double> Stmt::opt_f64(int col) const {
  if (is_null(col)) return std::nullopt;
  return f64(col);
}

std::optional<std::string> Stmt::opt_text(int col) const {
  if (is_null(col)) return std::nullopt;
  return text(col);
}

std::vector<std::uint8_t> Stmt::blob(int col) const {
  const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(stmt_, col));
  const int n = sqlite3_column_bytes(stmt_, col);
  return p ? std::vector<std::uint8_t>(p, p + n) : std::vector<std::uint8_t>();
}

WriteTx::WriteTx(sqlite3* db, std::string_view path) : db_(db), path_(path) {
  exec(db_, "BEGIN IMMEDIATE", path_, true);
}

WriteTx::~WriteTx() {
  if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

void WriteTx::commit() {
  exec(db_, "COMMIT", path_, true);
  done_ = true;
}

}  // namespace flashbias::cache::detail
