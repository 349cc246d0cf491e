// Shared helpers for the cache tests: a private temporary directory per test, a warning sink
// that records, and sample records.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <sqlite3.h>

#include "cache/records.h"
#include "cache/sha256.h"
#include "cache/store.h"

namespace flashbias::cache::test {

/// A fresh 0700 directory (mkdtemp) removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/flashbias-cache-test-XXXXXX";
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed for " + templ);
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

/// Collects warnings; copies of sink() share the list, so it outlives the Store's copy.
class Warnings {
 public:
  WarningSink sink() const {
    auto state = state_;
    return [state](const std::string& msg) {
      std::lock_guard lock(state->mu);
      state->lines.push_back(msg);
    };
  }
  std::vector<std::string> lines() const {
    std::lock_guard lock(state_->mu);
    return state_->lines;
  }
  std::size_t count() const { return lines().size(); }
  StoreOptions options() const {
    StoreOptions o;
    o.warn = sink();
    return o;
  }

 private:
  struct State {
    mutable std::mutex mu;
    std::vector<std::string> lines;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

inline std::vector<std::uint8_t> fake_cubin(int seed, std::size_t n = 3000) {
  // Not a real cubin: the store treats the blob as opaque bytes; an ELF-like prefix keeps dumps readable.
  std::vector<std::uint8_t> v(n);
  std::uint32_t x = 2463534242u + std::uint32_t(seed) * 7919u;
  for (auto& b : v) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;  // xorshift32: deterministic filler
    b = std::uint8_t(x);
  }
  v[0] = 0x7f; v[1] = 'E'; v[2] = 'L'; v[3] = 'F';
  return v;
}

inline KernelRecord sample_kernel(int i, const std::string& arch = "sm_80", int nvrtc = cuda_version(12, 4),
                                  std::size_t cubin_bytes = 3000) {
  KernelRecord r;
  r.spec = "fwd_" + arch + "_f16_d64_r" + std::to_string(i) + "_none/bm128_bn64_w4_s1";
  r.arch = arch;
  r.nvrtc_version = nvrtc;
  r.driver_version = cuda_version(12, 8);
  r.templates_hash = "tmplhash-1";
  r.options = "--gpu-architecture=" + arch + "\n-std=c++17";
  r.entry = "flashbias_fwd_kernel";
  r.threads = 128;
  r.smem_bytes = 49152 + i;
  r.registers = 168;
  r.spill_store_bytes = i % 3;
  r.spill_load_bytes = i % 5;
  r.stack_bytes = 16;
  r.compile_ms = 812.5 + i;
  r.cubin = fake_cubin(i, cubin_bytes);
  r.key = kernel_key("// source " + r.spec, {"--gpu-architecture=" + arch, "-std=c++17"}, nvrtc, arch,
                     r.templates_hash);
  return r;
}

inline DeviceFingerprint sample_device(int i = 0) {
  return DeviceFingerprint{i == 0 ? "NVIDIA H100 80GB HBM3" : "NVIDIA A100-SXM4-80GB", i == 0 ? 132 : 108,
                           i == 0 ? 9 : 8, 0, cuda_version(12, 8)};
}

inline TuningRun sample_run(const std::string& key, const std::string& bucket, const std::string& winner,
                            int device = 0) {
  TuningRun r;
  r.device = sample_device(device);
  r.problem_key = key;
  r.arch = device == 0 ? "sm_90a" : "sm_80";
  r.bucket = bucket;
  r.strategy = "exhaustive";
  r.templates_hash = "tmplhash-1";
  r.nvrtc_version = cuda_version(12, 4);
  r.tuning_seconds = 12.5;
  TuningCandidate a;
  a.tile = winner;
  a.outcome = Outcome::passed;
  a.median_ms = 0.125; a.min_ms = 0.120; a.max_ms = 0.140; a.repeats = 20; a.compile_ms = 900; a.max_error = 1e-3;
  TuningCandidate b;
  b.tile = "bm64_bn64_w4_s2";
  b.outcome = Outcome::incorrect;
  b.reason = "max error 0.5 > tolerance 0.01";
  b.median_ms = 0.05; b.repeats = 2; b.compile_ms = 850; b.max_error = 0.5;
  TuningCandidate c;
  c.tile = "bm256_bn128_w8_s2";
  c.outcome = Outcome::not_supported;
  c.reason = "shared memory 262144 B exceeds the 232448 B limit";
  TuningCandidate d;
  d.tile = "bm128_bn128_w8_s1";
  d.outcome = Outcome::passed;
  d.median_ms = 0.150; d.min_ms = 0.149; d.max_ms = 0.160; d.repeats = 20; d.compile_ms = 950; d.max_error = 1e-3;
  r.candidates = {a, b, c, d};
  r.winner_tile = winner;
  return r;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

/// Flip one byte of a kernel's cubin with raw SQLite, leaving its stored hash alone: what a bad
/// disk or someone editing the file would do. Works on any file with the kernels table.
inline void flip_cubin_byte(const std::filesystem::path& db, const std::string& key, std::size_t offset) {
  sqlite3* h = nullptr;
  if (sqlite3_open(db.c_str(), &h) != SQLITE_OK) throw std::runtime_error("cannot open " + db.string());
  std::vector<std::uint8_t> blob;
  sqlite3_stmt* sel = nullptr;
  sqlite3_prepare_v2(h, "SELECT cubin FROM kernels WHERE key = ?", -1, &sel, nullptr);
  sqlite3_bind_text(sel, 1, key.c_str(), -1, SQLITE_TRANSIENT);
  if (sqlite3_step(sel) == SQLITE_ROW) {
    const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(sel, 0));
    blob.assign(p, p + sqlite3_column_bytes(sel, 0));
  }
  sqlite3_finalize(sel);
  if (blob.size() <= offset) {
    sqlite3_close(h);
    throw std::runtime_error("no such kernel or blob too short: " + key);
  }
  blob[offset] ^= 0x01;
  sqlite3_stmt* upd = nullptr;
  sqlite3_prepare_v2(h, "UPDATE kernels SET cubin = ? WHERE key = ?", -1, &upd, nullptr);
  sqlite3_bind_blob(upd, 1, blob.data(), int(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(upd, 2, key.c_str(), -1, SQLITE_TRANSIENT);
  const int rc = sqlite3_step(upd);
  sqlite3_finalize(upd);
  sqlite3_close(h);
  if (rc != SQLITE_DONE) throw std::runtime_error("cannot update the blob in " + db.string());
}

}  // namespace flashbias::cache::test
