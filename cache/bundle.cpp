#include "cache/bundle.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <system_error>
#include <tuple>
#include <unistd.h>

#include "cache/sha256.h"
#include "flashbias/bundle.h"
#include "flashbias/flashbias.hpp"

namespace fs = std::filesystem;

namespace flashbias::cache {

namespace {

constexpr const char* kDigestKey = "bundle_content_sha256";
// Meta rows that describe the bundle; all but the digest go into the digest.
const std::vector<std::string>& described_keys() {
  static const std::vector<std::string> keys = {"bundle_format",       "bundle_format_version", "bundle_archs",
                                                "bundle_created_by",   "bundle_created_at",     "bundle_nvrtc_version",
                                                "bundle_templates_hash"};
  return keys;
}

void add(std::string& out, const std::string& field) {
  out += std::to_string(field.size());
  out += ':';
  out += field;
  out += ';';
}

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

[[noreturn]] void refuse(const std::string& source, const std::string& why) {
  throw Error(ErrorCode::cache_error, fmt::format("flashbias bundle {}: {}; not loaded", source, why));
}

struct Registry {
  std::mutex mutex;
  std::vector<EmbeddedBundle> items;
};
Registry& registry() {
  static Registry r;  // function-local: safe from other translation units' static initialisers
  return r;
}

}  // namespace

bool Bundle::has_arch(const std::string& arch) const {
  return std::find(info_.archs.begin(), info_.archs.end(), arch) != info_.archs.end();
}

std::string bundle_content_digest(const Store& store, const std::map<std::string, std::string>& meta) {
  std::string text = "flashbias-bundle-digest-v1;";
  for (const std::string& k : described_keys()) {
    auto it = meta.find(k);
    add(text, k);
    add(text, it == meta.end() ? std::string("<absent>") : it->second);
  }
  std::vector<KernelRecord> kernels = store.list_kernels();
  std::sort(kernels.begin(), kernels.end(), [](const KernelRecord& a, const KernelRecord& b) { return a.key < b.key; });
  for (const KernelRecord& k : kernels) {
    add(text, "kernel");
    for (const std::string& f :
         {k.key, k.spec, k.arch, std::to_string(k.nvrtc_version), k.templates_hash, k.options, k.entry,
          std::to_string(k.threads), std::to_string(k.smem_bytes), std::to_string(k.registers),
          std::to_string(k.spill_store_bytes), std::to_string(k.spill_load_bytes), std::to_string(k.stack_bytes),
          k.cubin_sha256, std::to_string(k.cubin_bytes)})
      add(text, f);
  }
  std::vector<WinnerEntry> winners = store.list_winners();
  std::sort(winners.begin(), winners.end(), [](const WinnerEntry& a, const WinnerEntry& b) {
    return std::tie(a.device, a.problem_key, a.bucket) < std::tie(b.device, b.problem_key, b.bucket);
  });
  for (const WinnerEntry& w : winners) {
    add(text, "winner");
    for (const std::string& f : {w.device, w.problem_key, w.arch, w.bucket, w.winner.tile, w.winner.strategy,
                                 fmt::format("{:.9g}", w.winner.median_ms)})
      add(text, f);
  }
  return sha256_hex(text);
}

std::map<std::string, std::string> bundle_meta(const std::vector<std::string>& archs, const std::string& nvrtc_version,
                                               const std::string& templates_hash) {
  std::string joined;
  for (const std::string& a : archs) joined += (joined.empty() ? "" : ",") + a;
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return {{"bundle_format", kBundleFormat},
          {"bundle_format_version", std::to_string(kBundleFormatVersion)},
          {"bundle_archs", joined},
          {"bundle_created_by", library_version()},
          {"bundle_created_at", std::to_string(now)},
          {"bundle_nvrtc_version", nvrtc_version},
          {"bundle_templates_hash", templates_hash}};
}

std::shared_ptr<Bundle> Bundle::check(Store store, std::string source, const BundleOpenOptions& options) {
  auto b = std::shared_ptr<Bundle>(new Bundle());
  b->info_.source = source;
  for (const std::string& k : described_keys())
    if (auto v = store.get_meta(k)) b->info_.meta[k] = *v;
  if (auto v = store.get_meta(kDigestKey)) b->info_.meta[kDigestKey] = *v;
  for (const char* k : {"format", "schema_version", "created_by"})
    if (auto v = store.get_meta(k)) b->info_.meta[k] = *v;

  auto meta = [&](const std::string& k) -> std::string {
    auto it = b->info_.meta.find(k);
    return it == b->info_.meta.end() ? std::string() : it->second;
  };
  if (meta("bundle_format") != kBundleFormat)
    refuse(source, "not a flashbias bundle (no bundle_format meta row; a plain cache file? export one with "
                   "`flashbias bundle export`)");
  const std::string version = meta("bundle_format_version");
  if (version != std::to_string(kBundleFormatVersion))
    refuse(source, fmt::format("bundle format version '{}', this library reads version {}: re-export it with this "
                               "version's `flashbias bundle export`",
                               version, kBundleFormatVersion));
  b->info_.format_version = kBundleFormatVersion;
  b->info_.archs = split_archs(meta("bundle_archs"));
  if (b->info_.archs.empty()) refuse(source, "no archs listed (bundle_archs)");

  const std::string want = meta(kDigestKey);
  const std::string got = bundle_content_digest(store, b->info_.meta);
  if (want.empty() || want != got)
    refuse(source, fmt::format("content digest mismatch (recorded {}, computed {}): the file was modified or damaged",
                               want.empty() ? "<none>" : want.substr(0, 16), got.substr(0, 16)));
  for (const KernelRecord& k : store.list_kernels())
    if (std::find(b->info_.archs.begin(), b->info_.archs.end(), k.arch) == b->info_.archs.end())
      refuse(source, fmt::format("kernel {} is for {}, which the bundle does not list", k.spec, k.arch));

  const VerifyReport v = store.verify(false);
  if (!v.ok()) {
    std::string why = v.integrity == "ok" ? "" : fmt::format("integrity check: {}", v.integrity);
    for (const auto& bad : v.bad) {
      why += fmt::format("{}blob of {} ({}): {}", why.empty() ? "" : "; ", bad.spec, bad.arch, bad.reason);
      break;
    }
    if (v.bad.size() > 1) why += fmt::format(" (and {} more)", v.bad.size() - 1);
    refuse(source, "damaged: " + why);
  }
  if (options.require_arch && !b->has_arch(*options.require_arch))
    refuse(source, fmt::format("carries kernels for {} only, not for this device's {}: export one with --arch {}",
                               meta("bundle_archs"), *options.require_arch, *options.require_arch));
  b->info_.stats = store.stats();
  b->store_ = std::make_shared<Store>(std::move(store));
  return b;
}

namespace {
StoreOptions bundle_store_options(const BundleOpenOptions& options) {
  StoreOptions s = options.store;
  if (s.check == OpenCheck::automatic || s.check == OpenCheck::none) s.check = OpenCheck::quick;
  return s;
}
}  // namespace

std::shared_ptr<Bundle> Bundle::open(const fs::path& path, const BundleOpenOptions& options) {
  std::optional<Store> store;
  try {
    store.emplace(Store::open_readonly(path, bundle_store_options(options)));
  } catch (const Error& e) {
    refuse(path.string(), e.what());
  }
  try {
    return check(std::move(*store), path.string(), options);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::cache_error && std::string_view(e.what()).find("flashbias bundle ") == 0) throw;
    refuse(path.string(), e.what());
  }
}

std::shared_ptr<Bundle> Bundle::open_memory(const void* data, std::size_t n, const std::string& name,
                                            Ownership ownership, const BundleOpenOptions& options) {
  const std::string source = "embedded:" + name;
  std::optional<Store> store;
  try {
    store.emplace(Store::open_readonly_memory(data, n, ownership, bundle_store_options(options)));
  } catch (const Error& e) {
    refuse(source, e.what());
  }
  try {
    return check(std::move(*store), source, options);
  } catch (const Error& e) {
    if (e.code() == ErrorCode::cache_error && std::string_view(e.what()).find("flashbias bundle ") == 0) throw;
    refuse(source, e.what());
  }
}

ExportReport write_bundle(const Store& staging, const fs::path& path, std::map<std::string, std::string> meta) {
  meta[kDigestKey] = bundle_content_digest(staging, meta);
  ExportFilter filter;
  filter.latest_runs_only = true;
  filter.meta = meta;
  fs::path tmp = path;
  tmp += fmt::format(".tmp-{}", ::getpid());
  ExportReport r;
  try {
    r = staging.export_to(tmp, filter);
    Bundle::open(tmp);  // the digest must match what the file holds, or nothing is published
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  fs::rename(tmp, path);
  r.path = path;
  return r;
}

BundleVerifyReport verify_bundle(const fs::path& path) {
  BundleVerifyReport r;
  try {
    auto b = Bundle::open(path);
    r.info = b->info();
    r.blobs_checked = b->info().stats.kernel_count;
  } catch (const Error& e) {
    r.problems.push_back(e.what());
  }
  return r;
}

std::string bundle_cpp_source(const void* data, std::size_t n, const std::string& name) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::string quoted;
  for (char c : name) {
    if (c == '"' || c == '\\') quoted += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) quoted += c;
  }
  std::string s;
  s.reserve(n * 5 + 1024);
  s += fmt::format(
      "// Generated by `flashbias bundle export --emit-cpp`: the bundle {} ({} bytes) embedded.\n"
      "// Link this object into the application: a static initialiser registers the bytes, and every\n"
      "// flashbias Context then finds the bundle's kernels without NVRTC (include/flashbias/bundle.h).\n"
      "#include <cstddef>\n\n"
      "extern \"C\" int flashbias_register_bundle(const void* data, std::size_t size, const char* name);\n\n"
      "namespace {{\n\nalignas(64) const unsigned char kBundle[{}] = {{",
      quoted, n, n);
  for (std::size_t i = 0; i < n; ++i) {
    if (i % 20 == 0) s += "\n ";
    s += ' ';
    s += std::to_string(unsigned(bytes[i]));
    s += ',';
  }
  s += fmt::format(
      "\n}};\n\nstruct Register {{\n  Register() {{ flashbias_register_bundle(kBundle, sizeof kBundle, \"{}\"); }}\n}};\n"
      "const Register kRegister;\n\n}}  // namespace\n",
      quoted);
  return s;
}

std::vector<EmbeddedBundle> embedded_bundles() {
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  return r.items;
}

}  // namespace flashbias::cache

extern "C" int flashbias_register_bundle(const void* data, size_t size, const char* name) {
  if (data == nullptr || size == 0) return -1;
  auto& r = flashbias::cache::registry();
  std::lock_guard lock(r.mutex);
  r.items.push_back({data, size, name != nullptr ? std::string(name) : fmt::format("bundle{}", r.items.size())});
  return 0;
}

extern "C" size_t flashbias_registered_bundle_count(void) {
  auto& r = flashbias::cache::registry();
  std::lock_guard lock(r.mutex);
  return r.items.size();
}
