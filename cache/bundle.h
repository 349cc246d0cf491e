// Bundles (issue 7): a read-only store file (same schema as the cache) carrying precompiled
// cubins and tuned winners for chosen archs, plus these meta rows that make it self-describing:
//
//   bundle_format          "flashbias-bundle"
//   bundle_format_version  kBundleFormatVersion
//   bundle_archs           "sm_80,sm_90a" (every kernel and run in the file is of one of these)
//   bundle_created_by      library version, bundle_created_at (unix seconds)
//   bundle_nvrtc_version   NVRTC that compiled the kernels ("13.0"), bundle_templates_hash
//   bundle_content_sha256  SHA-256 over the bundle_* meta rows above and every kernel's and every
//                          winner's description (key, spec, arch, toolchain, cubin SHA-256, ...)
//
// Opening a bundle (open_bundle*) checks, before anything is used: the SQLite image (header,
// page count vs size, quick_check), the format name and version, the content digest, every blob's
// SHA-256, and optionally that it carries the device's arch. Any failure is Error(cache_error)
// naming the bundle and what is wrong; the bundle is then not used at all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/store.h"

namespace flashbias::cache {

inline constexpr const char* kBundleFormat = "flashbias-bundle";
inline constexpr int kBundleFormatVersion = 1;

/// What a bundle says about itself (its meta rows and counts).
struct BundleInfo {
  std::string source;                       ///< file path or "embedded:<name>"
  int format_version = 0;
  std::vector<std::string> archs;
  std::map<std::string, std::string> meta;  ///< every meta row
  CacheStats stats;
};

struct BundleOpenOptions {
  std::optional<std::string> require_arch;  ///< refuse a bundle that does not carry this arch
  StoreOptions store;                       ///< check defaults to OpenCheck::quick
};

/// An opened, verified bundle. Lookups go to store(); it is read-only.
class Bundle {
 public:
  const BundleInfo& info() const { return info_; }
  Store& store() { return *store_; }
  bool has_arch(const std::string& arch) const;

  /// Throws Error(cache_error) naming the file and the problem (see the header comment).
  static std::shared_ptr<Bundle> open(const std::filesystem::path& path, const BundleOpenOptions& options = {});
  /// An image in memory (embedded). `borrow`: the bytes must outlive the Bundle.
  static std::shared_ptr<Bundle> open_memory(const void* data, std::size_t n, const std::string& name,
                                             Ownership ownership, const BundleOpenOptions& options = {});

 private:
  static std::shared_ptr<Bundle> check(Store store, std::string source, const BundleOpenOptions& options);
  std::shared_ptr<Store> store_;
  BundleInfo info_;
};

/// The content digest written as bundle_content_sha256: `meta` are the bundle_* rows other than
/// the digest itself.
std::string bundle_content_digest(const Store& store, const std::map<std::string, std::string>& meta);

/// The bundle_* meta rows of a bundle's description, given its archs, NVRTC and templates hash.
std::map<std::string, std::string> bundle_meta(const std::vector<std::string>& archs, const std::string& nvrtc_version,
                                               const std::string& templates_hash);

/// Export `staging` (every kernel and latest run in it) as a bundle at `path`: meta rows and digest
/// added, written to a temporary file beside `path`, re-opened and verified, then renamed over it.
ExportReport write_bundle(const Store& staging, const std::filesystem::path& path, std::map<std::string, std::string> meta);

/// Result of verify_bundle: never throws for damage, lists it.
struct BundleVerifyReport {
  std::optional<BundleInfo> info;   ///< when the file opened
  std::int64_t blobs_checked = 0;
  std::vector<std::string> problems;
  bool ok() const { return problems.empty(); }
};
BundleVerifyReport verify_bundle(const std::filesystem::path& path);

/// A C++ source that embeds `n` bytes of a bundle and registers them from a static initialiser
/// (flashbias_register_bundle under `name`). Self-contained: it declares the function itself.
std::string bundle_cpp_source(const void* data, std::size_t n, const std::string& name);

/// An image registered with flashbias_register_bundle (include/flashbias/bundle.h).
struct EmbeddedBundle {
  const void* data = nullptr;
  std::size_t size = 0;
  std::string name;
};
/// Every registered image, in registration order (thread-safe).
std::vector<EmbeddedBundle> embedded_bundles();

}  // namespace flashbias::cache
