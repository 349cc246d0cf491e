// Bundles (issue 7): export, inspect, verify, damage, embedding, and (gpu) a compiler-less run.
#include <catch2/catch.hpp>
#include <dlfcn.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "cache/bundle.h"
#include "cache/store.h"
#include "cache_test_util.h"
#include "flashbias/bundle.h"
#include "flashbias/flashbias.hpp"

namespace fs = std::filesystem;
using namespace flashbias;
using namespace flashbias::cache;
using namespace flashbias::cache::test;

namespace {

const std::vector<std::string> kArchs = {"sm_80", "sm_90a"};
const char* kKey = "fwd_sm_90a_f16_d64_r16_none";
const char* kBucket = "bh32.nq1024.nk1024";

// A bundle with fake cubins (the store treats blobs as opaque): everything but NVRTC.
fs::path make_bundle(const TempDir& dir, const std::string& name = "b.fbbundle") {
  Store staging = Store::open_memory();
  staging.put_kernel(sample_kernel(1, "sm_80"));
  staging.put_kernel(sample_kernel(2, "sm_90a"));
  staging.put_tuning_run(sample_run(kKey, kBucket, "bm128_bn64_w4_s1"));
  const fs::path p = dir / name;
  write_bundle(staging, p, bundle_meta(kArchs, "13.0", "tmplhash-1"));
  return p;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// Flip one byte of the file itself (no SQLite): the first occurrence of `needle`, at `at`.
void flip_file_byte(const fs::path& p, const std::string& needle, std::size_t at = 0) {
  std::string bytes = read_file(p);
  const std::size_t pos = bytes.find(needle);
  REQUIRE(pos != std::string::npos);
  bytes[pos + at] = char(bytes[pos + at] ^ 0x5a);
  write_file(p, bytes);
}

std::string cubin_slice(int i) {
  const auto c = fake_cubin(i);
  return std::string(c.begin() + 1000, c.begin() + 1032);
}

struct Run {
  int status = -1;
  std::string output;
};
Run sh(const std::string& cmd) {
  Run r;
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(f != nullptr);
  std::array<char, 4096> buf{};
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), f)) r.output.append(buf.data(), n);
  const int st = ::pclose(f);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

fs::path cli() {
  if (const char* env = std::getenv("FLASHBIAS_CLI"); env != nullptr && *env != '\0') return env;
  const fs::path dir = fs::canonical("/proc/self/exe").parent_path();
  if (fs::exists(dir / "flashbias")) return dir / "flashbias";
  return dir.parent_path() / "flashbias";
}

}  // namespace

TEST_CASE("bundle: export, open, look up, verify", "[cpu][bundle]") {
  TempDir dir;
  const fs::path p = make_bundle(dir);
  auto b = Bundle::open(p);
  CHECK(b->info().format_version == kBundleFormatVersion);
  CHECK(b->info().archs == kArchs);
  CHECK(b->info().stats.kernel_count == 2);
  CHECK(b->info().meta.at("bundle_format") == "flashbias-bundle");
  CHECK(b->info().meta.at("bundle_nvrtc_version") == "13.0");
  CHECK(b->store().read_only());
  const KernelRecord k = sample_kernel(2, "sm_90a");
  auto found = b->store().find_kernel(k.spec, "sm_90a", "tmplhash-1");
  REQUIRE(found);
  CHECK(found->cubin == k.cubin);
  auto w = b->store().find_winner(sample_device(0), kKey, kBucket);
  REQUIRE(w);
  CHECK(w->tile == "bm128_bn64_w4_s1");
  CHECK(verify_bundle(p).ok());
  CHECK(verify_bundle(p).blobs_checked == 2);
  // Opening for an arch it carries works; for another it is refused by name.
  CHECK_NOTHROW(Bundle::open(p, BundleOpenOptions{std::string("sm_80"), {}}));
  const std::string e = error_of([&] { Bundle::open(p, BundleOpenOptions{std::string("sm_86"), {}}); });
  CHECK(contains(e, "not for this device's sm_86"));
  CHECK(contains(e, "not loaded"));
}

TEST_CASE("bundle: one tampered byte in a blob or a row is refused by verify and load", "[cpu][bundle]") {
  TempDir dir;
  SECTION("cubin byte") {
    const fs::path p = make_bundle(dir);
    flip_file_byte(p, cubin_slice(2), 7);
    const BundleVerifyReport r = verify_bundle(p);
    CHECK_FALSE(r.ok());
    const std::string e = error_of([&] { Bundle::open(p); });
    CHECK(contains(e, "not loaded"));
    CHECK(contains(e, p.string()));
  }
  SECTION("kernel description byte") {
    const fs::path p = make_bundle(dir);
    flip_file_byte(p, "flashbias_fwd_kernel", 3);  // the entry point name of a kernel row
    CHECK_FALSE(verify_bundle(p).ok());
    CHECK(contains(error_of([&] { Bundle::open(p); }), "not loaded"));
  }
  SECTION("archs meta row") {
    const fs::path p = make_bundle(dir);
    flip_file_byte(p, "sm_80,sm_90a", 4);
    CHECK_FALSE(verify_bundle(p).ok());
    CHECK(contains(error_of([&] { Bundle::open(p); }), "not loaded"));
  }
  SECTION("embedded image") {
    const fs::path p = make_bundle(dir);
    std::string bytes = read_file(p);
    CHECK_NOTHROW(Bundle::open_memory(bytes.data(), bytes.size(), "x", Ownership::copy));
    bytes[bytes.find(cubin_slice(1)) + 3] ^= 1;
    CHECK(contains(error_of([&] { Bundle::open_memory(bytes.data(), bytes.size(), "x", Ownership::copy); }),
                   "embedded:x"));
  }
}

TEST_CASE("bundle: truncated, wrong-version, foreign and plain-cache files are refused", "[cpu][bundle]") {
  TempDir dir;
  SECTION("truncated") {
    const fs::path p = make_bundle(dir);
    const std::string bytes = read_file(p);
    write_file(p, bytes.substr(0, bytes.size() - 1024));
    CHECK_FALSE(verify_bundle(p).ok());
    CHECK(contains(error_of([&] { Bundle::open(p); }), "not loaded"));
    write_file(p, bytes.substr(0, 100));
    CHECK(contains(error_of([&] { Bundle::open(p); }), "not loaded"));
    CHECK(contains(error_of([&] { Bundle::open_memory(bytes.data(), 100, "t", Ownership::copy); }), "not loaded"));
  }
  SECTION("wrong format version") {
    Store staging = Store::open_memory();
    staging.put_kernel(sample_kernel(1, "sm_80"));
    auto meta = bundle_meta({"sm_80"}, "13.0", "tmplhash-1");
    meta["bundle_format_version"] = "99";
    meta["bundle_content_sha256"] = bundle_content_digest(staging, meta);
    ExportFilter f;
    f.meta = meta;
    staging.export_to(dir / "v99.fbbundle", f);
    const std::string e = error_of([&] { Bundle::open(dir / "v99.fbbundle"); });
    CHECK(contains(e, "format version '99'"));
    CHECK(contains(e, "re-export"));
    CHECK_FALSE(verify_bundle(dir / "v99.fbbundle").ok());
    // write_bundle never publishes a file it cannot read back.
    CHECK_THROWS(write_bundle(staging, dir / "w.fbbundle", meta));
    CHECK_FALSE(fs::exists(dir / "w.fbbundle"));
  }
  SECTION("plain cache file, not a bundle") {
    {
      Store s = Store::open(dir / "cache.db");
      s.put_kernel(sample_kernel(1));
    }
    Store::open_memory().export_to(dir / "plain.db");
    CHECK(contains(error_of([&] { Bundle::open(dir / "plain.db"); }), "not a flashbias bundle"));
  }
  SECTION("not SQLite at all") {
    write_file(dir / "junk", std::string(8192, 'x'));
    CHECK(contains(error_of([&] { Bundle::open(dir / "junk"); }), "not loaded"));
    CHECK(contains(error_of([&] { Bundle::open(dir / "missing"); }), "not loaded"));
  }
}

#ifdef FLASHBIAS_TEST_CXX
TEST_CASE("bundle: a writable store refuses a bundle, which stays byte for byte as it was", "[cpu][bundle]") {
  // `flashbias cache clear --db bundle` once deleted a bundle's kernels and broke its digest.
  TempDir dir;
  const fs::path p = make_bundle(dir);
  const std::string before = read_file(p);
  const std::string e = error_of([&] { Store::open(p); });
  CHECK(contains(e, "is a flashbias bundle, which is read-only"));
  CHECK(read_file(p) == before);
  CHECK(verify_bundle(p).ok());
  CHECK_NOTHROW(Bundle::open(p));
}

TEST_CASE("bundle export refuses an output it did not write, before compiling anything", "[cpu][bundle]") {
  TempDir dir;
  const std::string env = "FLASHBIAS_CACHE_DIR='" + (dir / "cache").string() + "' FLASHBIAS_DISABLE_NVRTC=1 ";
  const std::string cmd = env + "'" + cli().string() + "' bundle export --arch sm_90a --problem 'n=128,d=64' ";
  // Someone's file: left as it was, and the refusal says how to proceed.
  const fs::path notes = dir / "notes.txt";
  write_file(notes, "keep me\n");
  Run r = sh(cmd + "-o '" + notes.string() + "'");
  INFO(r.output);
  CHECK(r.status == 2);
  CHECK(contains(r.output, "exists and is not an earlier export"));
  CHECK(contains(r.output, "--force"));
  CHECK(read_file(notes) == "keep me\n");
  r = sh(cmd + "-o '" + (dir / "b.fbbundle").string() + "' --emit-cpp '" + notes.string() + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.output, "--emit-cpp"));
  CHECK(read_file(notes) == "keep me\n");
  // A missing directory and a directory are named as such.
  r = sh(cmd + "-o '" + (dir / "nowhere" / "b.fbbundle").string() + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.output, "does not exist"));
  r = sh(cmd + "-o '" + dir.path().string() + "'");
  CHECK(r.status == 2);
  CHECK(contains(r.output, "is a directory"));
  // An earlier bundle is not refused: the export goes on to compiling (which this process, with
  // NVRTC disabled, cannot do; that failure is past the guard).
  const fs::path old = make_bundle(dir, "old.fbbundle");
  r = sh(cmd + "-o '" + old.string() + "'");
  INFO(r.output);
  CHECK(!contains(r.output, "refusing to overwrite"));
  CHECK(verify_bundle(old).ok());  // a failed export publishes nothing
}

TEST_CASE("bundle: the --emit-cpp source compiles, and loading it registers the bundle", "[cpu][bundle]") {
  TempDir dir;
  const fs::path p = make_bundle(dir, "embedded.fbbundle");
  const std::string bytes = read_file(p);
  write_file(dir / "embedded.cpp", bundle_cpp_source(bytes.data(), bytes.size(), "embedded.fbbundle"));
  const Run c = sh(std::string("'") + FLASHBIAS_TEST_CXX + "' -std=c++17 -shared -fPIC -O0 -o '" +
                   (dir / "embedded.so").string() + "' '" + (dir / "embedded.cpp").string() + "'");
  INFO(c.output);
  REQUIRE(c.status == 0);
  const std::size_t before = flashbias_registered_bundle_count();
  // The test binary exports flashbias_register_bundle (ENABLE_EXPORTS): the library's static
  // initialiser calls it on load, exactly as in an application that links the object in.
  void* h = ::dlopen((dir / "embedded.so").c_str(), RTLD_NOW | RTLD_LOCAL);
  INFO((h ? "" : ::dlerror()));
  REQUIRE(h != nullptr);
  REQUIRE(flashbias_registered_bundle_count() == before + 1);
  const EmbeddedBundle e = embedded_bundles().back();
  CHECK(e.name == "embedded.fbbundle");
  REQUIRE(e.size == bytes.size());
  CHECK(std::string(static_cast<const char*>(e.data), e.size) == bytes);
  auto b = Bundle::open_memory(e.data, e.size, e.name, Ownership::borrow, BundleOpenOptions{std::string("sm_90a"), {}});
  CHECK(b->info().source == "embedded:embedded.fbbundle");
  CHECK(b->store().find_kernel(sample_kernel(2, "sm_90a").spec, "sm_90a", "tmplhash-1"));
  // The handle stays open: the registry keeps pointing into the library's .rodata.
}
#endif

TEST_CASE("bundle CLI: export for sm_80 and sm_90a, inspect, verify, tamper, emit-cpp", "[nvrtc][bundle]") {
  TempDir dir;
  const std::string env = "FLASHBIAS_CACHE_DIR='" + (dir / "cache").string() + "' ";
  const fs::path out = dir / "small.fbbundle";
  const Run ex = sh(env + "'" + cli().string() + "' bundle export -o '" + out.string() +
                    "' --arch sm_80,sm_90a --problem 'b=1,h=2,n=256,d=64,r=16' --emit-cpp '" +
                    (dir / "small.cpp").string() + "'");
  INFO(ex.output);
  REQUIRE(ex.status == 0);
  CHECK(contains(ex.output, "2 kernels"));
  CHECK(contains(ex.output, "sm_80"));
  CHECK(contains(ex.output, "sm_90a"));
  auto b = Bundle::open(out);
  CHECK(b->info().archs == std::vector<std::string>{"sm_80", "sm_90a"});
  CHECK(b->info().stats.kernel_count == 2);

  const Run in = sh("'" + cli().string() + "' bundle inspect '" + out.string() + "'");
  INFO(in.output);
  CHECK(in.status == 0);
  CHECK(contains(in.output, "flashbias-bundle version 1"));
  CHECK(contains(in.output, "NVRTC"));
  const Run ok = sh("'" + cli().string() + "' bundle verify '" + out.string() + "'");
  CHECK(ok.status == 0);
  CHECK(contains(ok.output, "2 blobs"));

  // A second export reuses the cache's kernels (no compile).
  const Run again = sh(env + "'" + cli().string() + "' bundle export -o '" + (dir / "again.fbbundle").string() +
                       "' --arch sm_80,sm_90a --problem 'b=1,h=2,n=256,d=64,r=16'");
  INFO(again.output);
  CHECK(again.status == 0);
  CHECK(contains(again.output, "0 to compile"));

  // One byte of a cubin: the ELF magic of the first blob itself ('E' -> 'D'). A byte some way
  // past it may fall on an SQLite page header instead of blob content, depending on where the
  // page boundaries fall this run (that made this check flaky).
  std::string bytes = read_file(out);
  const std::size_t elf = bytes.find("\x7f" "ELF");
  REQUIRE(elf != std::string::npos);
  bytes[elf + 1] ^= 0x01;
  write_file(out, bytes);
  const Run bad = sh("'" + cli().string() + "' bundle verify '" + out.string() + "'");
  INFO(bad.output);
  CHECK(bad.status == 1);
  CHECK(contains(bad.output, "FAILED"));
  CHECK_THROWS_AS(Bundle::open(out), Error);
  CHECK(sh("'" + cli().string() + "' bundle inspect '" + out.string() + "'").status == 1);

#ifdef FLASHBIAS_TEST_CXX
  const Run c = sh(std::string("'") + FLASHBIAS_TEST_CXX + "' -std=c++17 -c -O0 -o '" + (dir / "small.o").string() +
                   "' '" + (dir / "small.cpp").string() + "'");
  INFO(c.output);
  CHECK(c.status == 0);
#endif
}

TEST_CASE("bundle: compiler-less process runs a bundled problem, names a missing one", "[gpu][bundle]") {
  TempDir dir;
  const fs::path out = dir / "gpu.fbbundle";
  const std::string problem = "b=1,h=4,n=512,d=64,r=16";
  const std::string env = "FLASHBIAS_CACHE_DIR='" + (dir / "cache").string() + "' ";
  const Run ex = sh(env + "'" + cli().string() + "' bundle export -o '" + out.string() +
                    "' --arch sm_80,sm_90a --problem '" + problem + "'");
  INFO(ex.output);
  REQUIRE(ex.status == 0);
  // A fresh, empty cache; no NVRTC; policy cache-only: only the bundle can answer.
  const std::string deploy = "FLASHBIAS_DISABLE_NVRTC=1 FLASHBIAS_POLICY=cache-only FLASHBIAS_CACHE_DIR='" +
                             (dir / "empty").string() + "' FLASHBIAS_BUNDLE='" + out.string() + "' ";
  const Run run = sh(deploy + "'" + cli().string() + "' bench-runtime --probe '" + problem + "'");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(contains(run.output, "\"compiles\":0"));
  CHECK(contains(run.output, "\"store_hits\":1"));
  const Run miss = sh(deploy + "'" + cli().string() + "' bench-runtime --probe 'b=1,h=4,n=512,d=128,r=16'");
  INFO(miss.output);
  CHECK(miss.status != 0);
  CHECK(contains(miss.output, "no stored kernel for sm_"));
  CHECK(contains(miss.output, "_d128_"));
  // A tampered bundle stops the Context with an error naming it.
  std::string bytes = read_file(out);
  bytes[bytes.find("\x7f" "ELF") + 600] ^= 1;
  write_file(out, bytes);
  const Run bad = sh(deploy + "'" + cli().string() + "' bench-runtime --probe '" + problem + "'");
  INFO(bad.output);
  CHECK(bad.status != 0);
  CHECK(contains(bad.output, out.string()));
}
