// The SQLite store: compiled kernels and tuning results, one database file per user (or a
// read-only bundle, issue 7, which is the same file format).
//
// Guarantees (issue 3):
// - Every write is one transaction taken with BEGIN IMMEDIATE; anything read to decide a write is
//   re-read under that lock. WAL mode and a busy timeout let many processes tune and read one
//   file at once without losing a write.
// - Every kernel load re-hashes the cubin; a mismatch deletes the entry, warns, and reports a miss,
//   so the caller recompiles. A tampered blob is never returned.
// - A corrupt or truncated file is moved aside (flashbias.db.corrupt-<timestamp>) with one
//   warning and rebuilt; an unwritable or insecure location gives an in-memory store with one
//   warning. A file with a newer schema is refused with Error(cache_error).
//
// Thread-safety: a Store may be shared by threads; calls are serialised by an internal mutex.
// Processes each open their own Store (never across fork()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/records.h"

namespace flashbias::cache {

/// How much checking an open does before trusting a file. Every level reads the header and the
/// schema and compares the file size with the page count in the header (catches truncation, O(1)).
enum class OpenCheck : std::uint8_t {
  none,       ///< nothing more; damage shows on first use (blob hashes, SQLITE_CORRUPT)
  automatic,  ///< quick_check when the file is small or a process saw damage in it (default)
  quick,      ///< PRAGMA quick_check: b-tree structure, every page (about 1 ms per MB)
  full,       ///< PRAGMA integrity_check: also indexes against tables
};

struct StoreOptions {
  WarningSink warn;  ///< empty: "flashbias: warning: ..." on stderr
  std::chrono::milliseconds busy_timeout{10000};  ///< wait this long for another process's write lock
  OpenCheck check = OpenCheck::automatic;
  /// OpenCheck::automatic runs quick_check up to this file size. Above it a full walk of every
  /// page would cost more than the runtime's first-call budget (20 ms), so large files rely on the
  /// header check, the blob hashes and SQLITE_CORRUPT during use; a process that meets damage
  /// leaves "<db>.needs-check" behind, and the next open checks fully and moves the file aside.
  std::int64_t automatic_check_max_bytes = std::int64_t(8) << 20;
  /// On an unwritable or insecure location, use an in-memory store (with one warning) instead of
  /// throwing. Corruption is always handled by moving the file aside.
  bool fallback_to_memory = true;
};

/// For open_readonly_memory: whether the store copies the bytes or borrows them.
enum class Ownership : std::uint8_t {
  copy,    ///< the store keeps its own copy; the caller's buffer may go away
  borrow,  ///< zero-copy; the bytes must outlive the Store (embedded bundles in .rodata)
};

/// Cache statistics for `flashbias cache stats`.
struct CacheStats {
  struct Arch { std::string arch; std::int64_t kernels = 0, bytes = 0, hits = 0; };
  struct Device { std::string device; std::int64_t runs = 0, winners = 0, candidates = 0; };
  std::string path;                    ///< file path, or ":memory:"
  bool in_memory = false;
  bool read_only = false;
  int schema_version = 0;
  std::int64_t file_bytes = 0;         ///< database file plus its WAL; 0 in memory
  std::int64_t kernel_count = 0;
  std::int64_t kernel_bytes = 0;       ///< sum of cubin sizes
  std::int64_t kernel_hits = 0;
  std::int64_t tuning_runs = 0;
  std::int64_t tuning_candidates = 0;
  std::int64_t winners = 0;            ///< distinct (device, key, bucket) with a winner
  std::vector<Arch> by_arch;
  std::vector<Device> by_device;
};

/// Result of verify(): every blob re-hashed.
struct VerifyReport {
  struct Bad { std::string key, spec, arch, reason; };
  std::int64_t checked = 0;
  std::vector<Bad> bad;
  std::int64_t deleted = 0;
  std::string integrity;               ///< PRAGMA quick_check's answer ("ok" when healthy)
  bool ok() const { return bad.empty() && integrity == "ok"; }
};

/// What clear() removes. Both empty: everything.
struct ClearFilter {
  std::optional<std::string> device;   ///< DeviceFingerprint::str(): that device's tuning runs
  std::optional<std::string> arch;     ///< that arch's kernels (and tuning runs for it)
};

/// prune(): any combination; kernels that match any rule are removed.
struct PruneOptions {
  std::optional<std::chrono::seconds> older_than;  ///< kernels created, and superseded runs, before now - this
  std::optional<std::chrono::seconds> unused_for;  ///< kernels not loaded within this
  std::optional<std::int64_t> max_bytes;           ///< then drop least recently used kernels until their total fits
  bool dry_run = false;                            ///< count only
};

struct RemovalReport {
  std::int64_t kernels = 0;
  std::int64_t kernel_bytes = 0;
  std::int64_t tuning_runs = 0;
  std::int64_t file_bytes_before = 0;
  std::int64_t file_bytes_after = 0;
};

/// What export_to copies. Empty lists mean "all".
struct ExportFilter {
  std::vector<std::string> archs;        ///< kernels and runs of these archs
  std::vector<std::string> devices;      ///< runs of these DeviceFingerprint::str()
  std::vector<std::string> problem_keys; ///< runs of these ProblemKey::str()
  std::vector<std::string> kernel_keys;  ///< exactly these kernels (with archs, both must match)
  bool kernels = true;
  bool tuning = true;
  bool latest_runs_only = true;          ///< only the run that find_winner would answer with
  bool candidates = true;                ///< copy candidates of exported runs
  std::map<std::string, std::string> meta;  ///< extra meta rows (bundle format version, archs, ...)
};

struct ExportReport {
  std::filesystem::path path;
  std::int64_t kernels = 0;
  std::int64_t kernel_bytes = 0;
  std::int64_t tuning_runs = 0;
  std::int64_t file_bytes = 0;
};

class Store {
 public:
  /// The per-user cache at default_location(). Never throws for an unwritable, insecure or
  /// corrupt location (see the guarantees above) unless options.fallback_to_memory is false;
  /// throws Error(cache_error) for a file with a newer schema or a foreign SQLite file.
  static Store open_default(StoreOptions options = {});

  /// A writable store at `db_path`, its directory created 0700 if missing. Same rules as
  /// open_default.
  static Store open(const std::filesystem::path& db_path, StoreOptions options = {});

  /// A private in-memory store with the current schema.
  static Store open_memory(StoreOptions options = {});

  /// An existing file, read-only and immutable (no locks, no WAL; for bundles). Corruption or a
  /// foreign or newer file throws Error(cache_error): a bundle is never moved or rewritten.
  static Store open_readonly(const std::filesystem::path& db_path, StoreOptions options = {});

  /// A database image in memory (an embedded bundle), read-only, via sqlite3_deserialize.
  /// Throws Error(cache_error) for bytes that are not a valid current-schema database.
  static Store open_readonly_memory(const void* data, std::size_t n, Ownership ownership = Ownership::copy,
                                    StoreOptions options = {});

  Store(Store&&) noexcept;
  Store& operator=(Store&&) noexcept;
  ~Store();

  const std::string& path() const;  ///< file path, or ":memory:"
  bool in_memory() const;
  bool read_only() const;
  int schema_version() const;
  std::optional<std::string> get_meta(const std::string& key) const;
  /// Writes one meta row. Keys written by the store itself (format, schema_version) are refused.
  void set_meta(const std::string& key, const std::string& value);

  // ---- kernels ----------------------------------------------------------------------------

  /// Insert or replace a compiled kernel. The store computes cubin_sha256 and cubin_bytes; a
  /// replaced entry keeps its hit count and creation time. Throws Error(cache_error).
  void put_kernel(const KernelRecord& record);

  /// The kernel under `key`, its blob verified. A hash mismatch deletes the entry (on writable
  /// stores), warns and returns nullopt, exactly like a miss. Counts a hit (best effort).
  std::optional<KernelRecord> load_kernel(const std::string& key);

  /// For a runtime without NVRTC (bundles, cache-only): the newest kernel for this spec, arch and
  /// templates hash, optionally of one NVRTC version. Same verification as load_kernel.
  std::optional<KernelRecord> find_kernel(const std::string& spec, const std::string& arch,
                                          const std::string& templates_hash,
                                          std::optional<int> nvrtc_version = std::nullopt);

  /// Remove one kernel (for example after the driver refused to load it). True if it existed.
  bool erase_kernel(const std::string& key);

  /// Every kernel without its blob (cubin empty, cubin_bytes set), newest first.
  std::vector<KernelRecord> list_kernels() const;

  // ---- tuning -----------------------------------------------------------------------------

  /// Store one run and all its candidates in one transaction; returns its id. Throws
  /// Error(invalid_argument) when winner_tile does not name a passed, timed candidate: a fast
  /// wrong kernel can never become a winner, whoever calls this.
  std::int64_t put_tuning_run(const TuningRun& run);

  /// The winner of the newest run with a winner for (device, key, bucket), if any.
  std::optional<TuningWinner> find_winner(const std::string& device_fp, const std::string& problem_key,
                                          const std::string& bucket) const;
  std::optional<TuningWinner> find_winner(const DeviceFingerprint& device, const std::string& problem_key,
                                          const std::string& bucket) const {
    return find_winner(device.str(), problem_key, bucket);
  }

  /// One run with its candidates.
  std::optional<TuningRun> load_tuning_run(std::int64_t id) const;

  /// The current winner of every (device, key, bucket), optionally of one device.
  std::vector<WinnerEntry> list_winners(const std::optional<std::string>& device_fp = std::nullopt) const;

  // ---- maintenance (flashbias cache stats|list|verify|clear|prune) ------------------------

  CacheStats stats() const;
  /// Re-hash every blob and run quick_check. With delete_bad, remove the bad entries.
  VerifyReport verify(bool delete_bad = false);
  RemovalReport clear(const ClearFilter& filter = {});
  RemovalReport prune(const PruneOptions& options);

  /// Write the selected kernels and runs into a new standalone database at `path` (a bundle):
  /// written to a temporary file in the same directory, synced, then renamed over `path`, so a
  /// reader never sees half a file. Rollback journal mode, so that it opens immutable.
  ExportReport export_to(const std::filesystem::path& path, const ExportFilter& filter = {}) const;

  class Impl;

 private:
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The library version that stores write into created_by ("flashbias 0.1.0").
const std::string& library_version();

}  // namespace flashbias::cache
