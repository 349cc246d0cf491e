// Internal to cache/: thin RAII over the SQLite C API (statements, transactions) and the one
// place that turns an SQLite failure into flashbias::Error with the path and SQLite's message.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sqlite3.h>

namespace flashbias::cache::detail {

/// Throw Error(cache_error): "flashbias cache <path>: <what>: <sqlite message> (code N)".
[[noreturn]] void throw_sqlite(sqlite3* db, int rc, std::string_view what, std::string_view path);

/// True for the result codes that mean the file is damaged or not a database at all.
inline bool is_corruption(int rc) noexcept {
  return (rc & 0xff) == SQLITE_CORRUPT || (rc & 0xff) == SQLITE_NOTADB;
}

/// Thrown internally when SQLite reports corruption; Store::open turns it into move-aside and
/// rebuild, the other entry points into Error(cache_error).
struct CorruptDatabase {
  std::string message;
};

/// Run SQL with no results (several statements allowed). Throws via throw_sqlite, or
/// CorruptDatabase when `corruption_is_special` and the code says corruption.
void exec(sqlite3* db, const std::string& sql, std::string_view path, bool corruption_is_special = false);

/// A prepared statement bound to one connection; binds are 1-based as in SQLite.
class Stmt {
 public:
  Stmt(sqlite3* db, std::string_view sql, std::string_view path);
  ~Stmt();
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, std::int64_t v);
  Stmt& bind(int i, int v) { return bind(i, std::int64_t(v)); }
  Stmt& bind(int i, double v);
  Stmt& bind(int i, std::string_view v);
  Stmt& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
  Stmt& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
  Stmt& bind(int i, const std::optional<double>& v);
  Stmt& bind(int i, const std::optional<std::string>& v);
  Stmt& bind_blob(int i, const void* data, std::size_t n);
  Stmt& bind_null(int i);

  /// Advance; true while a row is available. Throws on errors (CorruptDatabase for corruption).
  bool step();
  /// Step a statement that returns no rows.
  void run() { while (step()) {} }
  void reset();

  std::int64_t i64(int col) const { return sqlite3_column_int64(stmt_, col); }
  int i32(int col) const { return sqlite3_column_int(stmt_, col); }
  double f64(int col) const { return sqlite3_column_double(stmt_, col); }
  bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string text(int col) const;
  std::optional<double> opt_f64(int col) const;
  std::optional<std::string> opt_text(int col) const;
  std::vector<std::uint8_t> blob(int col) const;
  sqlite3_stmt* raw() const { return stmt_; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  std::string path_;
  std::string sql_;
};

/// One write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy
/// timeout), so that a read-then-write inside it can never fail with SQLITE_BUSY half way and
/// whatever it re-checks stays true until COMMIT. Rolls back unless commit() ran.
class WriteTx {
 public:
  WriteTx(sqlite3* db, std::string_view path);
  ~WriteTx();
  WriteTx(const WriteTx&) = delete;
  WriteTx& operator=(const WriteTx&) = delete;
  void commit();

 private:
  sqlite3* db_;
  std::string path_;
  bool done_ = false;
};

}  // namespace flashbias::cache::detail
