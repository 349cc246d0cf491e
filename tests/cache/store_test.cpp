// Store round trips and maintenance: kernels, tuning runs, winners, stats, verify, clear, prune,
// export and the read-only (bundle) opens.
#include <catch2/catch.hpp>

#include <sqlite3.h>
#include <sys/stat.h>

#include <thread>

#include "cache/schema.h"
#include "cache/store.h"
#include "cache_test_util.h"
#include "flashbias/flashbias.hpp"
#include "generator/kernel_source.h"

using namespace flashbias;
using namespace flashbias::cache;
using namespace flashbias::cache::test;

namespace {

// Overwrite one column of one kernel row with raw SQL, as an attacker or a bad disk would.
void raw_exec(const std::filesystem::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  REQUIRE(sqlite3_open(db.c_str(), &h) == SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(h, sql.c_str(), nullptr, nullptr, &err);
  INFO((err ? err : ""));
  sqlite3_free(err);
  sqlite3_close(h);
  REQUIRE(rc == SQLITE_OK);
}

}  // namespace

TEST_CASE("kernel round trip keeps every field and counts hits", "[cpu][cache]") {
  TempDir dir;
  Warnings w;
  KernelRecord in = sample_kernel(1);
  {
    Store s = Store::open(dir / "flashbias.db", w.options());
    CHECK_FALSE(s.in_memory());
    CHECK(s.schema_version() == kSchemaVersion);
    s.put_kernel(in);
  }
  Store s = Store::open(dir / "flashbias.db", w.options());
  auto out = s.load_kernel(in.key);
  REQUIRE(out);
  CHECK(out->key == in.key);
  CHECK(out->spec == in.spec);
  CHECK(out->arch == in.arch);
  CHECK(out->nvrtc_version == in.nvrtc_version);
  CHECK(out->driver_version == in.driver_version);
  CHECK(out->templates_hash == in.templates_hash);
  CHECK(out->options == in.options);
  CHECK(out->entry == in.entry);
  CHECK(out->threads == in.threads);
  CHECK(out->smem_bytes == in.smem_bytes);
  CHECK(out->registers == in.registers);
  CHECK(out->spill_store_bytes == in.spill_store_bytes);
  CHECK(out->spill_load_bytes == in.spill_load_bytes);
  CHECK(out->stack_bytes == in.stack_bytes);
  CHECK(out->compile_ms == in.compile_ms);
  CHECK(out->cubin == in.cubin);
  CHECK(out->cubin_bytes == std::int64_t(in.cubin.size()));
  CHECK(out->cubin_sha256 == sha256_hex(in.cubin.data(), in.cubin.size()));
  CHECK(out->created_at > 0);
  CHECK(out->hits == 1);
  CHECK(s.load_kernel(in.key)->hits == 2);
  CHECK_FALSE(s.load_kernel(std::string(64, '0')));
  CHECK(w.count() == 0);

  // Replacing a key keeps its history.
  KernelRecord again = in;
  again.compile_ms = 1.0;
  s.put_kernel(again);
  auto replaced = s.load_kernel(in.key);
  CHECK(replaced->compile_ms == 1.0);
  CHECK(replaced->hits == 3);

  auto listed = s.list_kernels();
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].cubin.empty());
  CHECK(listed[0].cubin_bytes == std::int64_t(in.cubin.size()));

  CHECK(s.erase_kernel(in.key));
  CHECK_FALSE(s.erase_kernel(in.key));
  CHECK_FALSE(s.load_kernel(in.key));
}

TEST_CASE("put_kernel rejects malformed records", "[cpu][cache]") {
  Store s = Store::open_memory();
  KernelRecord r = sample_kernel(1);
  r.key = "not-a-key";
  CHECK_THROWS_AS(s.put_kernel(r), Error);
  r = sample_kernel(1);
  r.cubin.clear();
  CHECK_THROWS_AS(s.put_kernel(r), Error);
}

TEST_CASE("kernel_key names every input and frames its fields", "[cpu][cache]") {
  const std::vector<std::string> opts = {"--gpu-architecture=sm_80", "-std=c++17"};
  const std::string base = kernel_key("src", opts, 12040, "sm_80", "t1");
  CHECK(base.size() == 64);
  CHECK(kernel_key("src", opts, 12040, "sm_80", "t1") == base);
  CHECK(kernel_key("src2", opts, 12040, "sm_80", "t1") != base);
  CHECK(kernel_key("src", {"--gpu-architecture=sm_80"}, 12040, "sm_80", "t1") != base);
  CHECK(kernel_key("src", opts, 12050, "sm_80", "t1") != base);
  CHECK(kernel_key("src", opts, 12040, "sm_86", "t1") != base);
  CHECK(kernel_key("src", opts, 12040, "sm_80", "t2") != base);
  // Moving bytes between fields changes the key.
  CHECK(kernel_key("x", {"ab", "c"}, 1, "a", "t") != kernel_key("x", {"a", "bc"}, 1, "a", "t"));
  CHECK(kernel_key("xa", {}, 1, "b", "t") != kernel_key("x", {}, 1, "ab", "t"));

  KernelSource src;
  src.spec.key.arch = Arch{90, true};
  src.source = "extern \"C\" __global__ void k() {}";
  src.options = {"--gpu-architecture=sm_90a"};
  CHECK(kernel_key(src, 12040) == kernel_key(src.source, src.options, 12040, "sm_90a", templates_hash()));
}

TEST_CASE("find_kernel serves a runtime without NVRTC, newest NVRTC first", "[cpu][cache]") {
  Store s = Store::open_memory();
  KernelRecord old_nvrtc = sample_kernel(7, "sm_80", cuda_version(12, 2));
  KernelRecord new_nvrtc = sample_kernel(7, "sm_80", cuda_version(12, 6));
  REQUIRE(old_nvrtc.key != new_nvrtc.key);
  s.put_kernel(old_nvrtc);
  s.put_kernel(new_nvrtc);
  auto hit = s.find_kernel(new_nvrtc.spec, "sm_80", "tmplhash-1");
  REQUIRE(hit);
  CHECK(hit->key == new_nvrtc.key);
  auto pinned = s.find_kernel(new_nvrtc.spec, "sm_80", "tmplhash-1", cuda_version(12, 2));
  REQUIRE(pinned);
  CHECK(pinned->key == old_nvrtc.key);
  CHECK_FALSE(s.find_kernel(new_nvrtc.spec, "sm_80", "tmplhash-OTHER"));
  CHECK_FALSE(s.find_kernel(new_nvrtc.spec, "sm_90a", "tmplhash-1"));
}

TEST_CASE("tuning run round trip keeps every candidate", "[cpu][cache]") {
  TempDir dir;
  TuningRun in = sample_run("fwd sm_90a f16 d64 r16 none", "nq<=1024,nk<=1024,bh<=64", "bm128_bn64_w4_s1");
  in.candidates[2].compile_ms.reset();
  std::int64_t id = 0;
  {
    Store s = Store::open(dir / "flashbias.db");
    id = s.put_tuning_run(in);
    CHECK(id > 0);
  }
  Store s = Store::open(dir / "flashbias.db");
  auto out = s.load_tuning_run(id);
  REQUIRE(out);
  CHECK(out->id == id);
  CHECK(out->device == in.device);
  CHECK(out->problem_key == in.problem_key);
  CHECK(out->arch == in.arch);
  CHECK(out->bucket == in.bucket);
  CHECK(out->strategy == in.strategy);
  CHECK(out->templates_hash == in.templates_hash);
  CHECK(out->nvrtc_version == in.nvrtc_version);
  CHECK(out->winner_tile == in.winner_tile);
  CHECK(out->tuning_seconds == in.tuning_seconds);
  CHECK(out->created_at > 0);
  CHECK(out->created_by == library_version());
  CHECK(out->candidates == in.candidates);

  auto w = s.find_winner(in.device, in.problem_key, in.bucket);
  REQUIRE(w);
  CHECK(w->tile == "bm128_bn64_w4_s1");
  CHECK(w->median_ms == 0.125);
  CHECK(w->run_id == id);
  CHECK(w->strategy == "exhaustive");
  CHECK_FALSE(s.find_winner(sample_device(1), in.problem_key, in.bucket));  // another GPU model
  DeviceFingerprint new_driver = in.device;
  new_driver.driver_version = cuda_version(12, 9);
  CHECK_FALSE(s.find_winner(new_driver, in.problem_key, in.bucket));  // another driver
  CHECK_FALSE(s.find_winner(in.device, in.problem_key, "nq<=4096,nk<=4096,bh<=64"));
  CHECK_FALSE(s.load_tuning_run(id + 100));
}

TEST_CASE("only a passed, timed candidate can win", "[cpu][cache]") {
  Store s = Store::open_memory();
  TuningRun r = sample_run("k", "b", "bm128_bn64_w4_s1");
  r.winner_tile = "bm64_bn64_w4_s2";  // the incorrect one, though it was fastest
  try {
    s.put_tuning_run(r);
    FAIL("an incorrect candidate was accepted as winner");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("matched the reference"));
  }
  r.winner_tile = "bm32_bn32_w2_s1";  // not a candidate at all
  CHECK_THROWS_AS(s.put_tuning_run(r), Error);
  r.winner_tile.reset();  // nothing passed: stored, but no winner
  s.put_tuning_run(r);
  CHECK_FALSE(s.find_winner(r.device, "k", "b"));
  CHECK(s.stats().tuning_runs == 1);
}

TEST_CASE("the newest run's winner is the answer; older runs stay as history", "[cpu][cache]") {
  Store s = Store::open_memory();
  TuningRun first = sample_run("k", "b", "bm128_bn64_w4_s1");
  first.created_at = 1000;
  TuningRun second = sample_run("k", "b", "bm128_bn128_w8_s1");
  second.created_at = 2000;
  s.put_tuning_run(second);
  s.put_tuning_run(first);  // inserted later but older: must not win
  CHECK(s.find_winner(first.device, "k", "b")->tile == "bm128_bn128_w8_s1");
  auto winners = s.list_winners();
  REQUIRE(winners.size() == 1);
  CHECK(winners[0].winner.tile == "bm128_bn128_w8_s1");
  CHECK(winners[0].candidates == 4);
  CHECK(winners[0].passed == 2);
  CHECK(s.stats().tuning_runs == 2);
}

TEST_CASE("stats, list, clear by device and everything", "[cpu][cache]") {
  TempDir dir;
  Store s = Store::open(dir / "flashbias.db");
  for (int i = 0; i < 3; ++i) s.put_kernel(sample_kernel(i, "sm_80"));
  for (int i = 3; i < 5; ++i) s.put_kernel(sample_kernel(i, "sm_90a"));
  s.put_tuning_run(sample_run("k1", "b", "bm128_bn64_w4_s1", 0));
  s.put_tuning_run(sample_run("k2", "b", "bm128_bn64_w4_s1", 0));
  s.put_tuning_run(sample_run("k1", "b", "bm128_bn64_w4_s1", 1));
  s.load_kernel(sample_kernel(0).key);

  CacheStats st = s.stats();
  CHECK(st.path == (dir / "flashbias.db").string());
  CHECK(st.file_bytes > 0);
  CHECK(st.kernel_count == 5);
  CHECK(st.kernel_bytes == 5 * 3000);
  CHECK(st.kernel_hits == 1);
  CHECK(st.tuning_runs == 3);
  CHECK(st.tuning_candidates == 12);
  CHECK(st.winners == 3);
  REQUIRE(st.by_arch.size() == 2);
  CHECK(st.by_arch[0].arch == "sm_80");
  CHECK(st.by_arch[0].kernels == 3);
  REQUIRE(st.by_device.size() == 2);
  CHECK(st.by_device[0].runs + st.by_device[1].runs == 3);
  CHECK(st.by_device[0].winners + st.by_device[1].winners == 3);
  CHECK(s.list_winners(sample_device(0).str()).size() == 2);

  RemovalReport r = s.clear(ClearFilter{sample_device(0).str(), std::nullopt});
  CHECK(r.tuning_runs == 2);
  CHECK(r.kernels == 0);
  CHECK(s.stats().kernel_count == 5);
  CHECK(s.list_winners().size() == 1);

  r = s.clear(ClearFilter{std::nullopt, std::string("sm_90a")});
  CHECK(r.kernels == 2);
  CHECK(r.kernel_bytes == 6000);

  r = s.clear();
  CHECK(r.kernels == 3);
  CHECK(r.tuning_runs == 1);
  st = s.stats();
  CHECK(st.kernel_count == 0);
  CHECK(st.tuning_runs == 0);
  CHECK(st.tuning_candidates == 0);  // cascaded
}

TEST_CASE("prune by age, by use and by size; current winners survive", "[cpu][cache]") {
  TempDir dir;
  Store s = Store::open(dir / "flashbias.db");
  const std::int64_t now = std::int64_t(std::time(nullptr));
  for (int i = 0; i < 6; ++i) {
    KernelRecord k = sample_kernel(i, "sm_80", cuda_version(12, 4), 100000);
    k.created_at = now - 100 * 86400 + i;
    // Kernel 0 least recently used; ages 5.5, 4.5, ..., 0.5 days, half a day away from the
    // 4-day cut below, so the clock ticking between `now` and prune() cannot move a kernel across.
    k.last_used_at = now - (6 - i) * 86400 + 43200;
    s.put_kernel(k);
  }
  TuningRun old_run = sample_run("k", "b", "bm128_bn64_w4_s1");
  old_run.created_at = now - 90 * 86400;
  TuningRun newer = sample_run("k", "b", "bm128_bn128_w8_s1");
  newer.created_at = now - 80 * 86400;
  s.put_tuning_run(old_run);
  s.put_tuning_run(newer);

  PruneOptions dry;
  dry.unused_for = std::chrono::hours(24 * 4);
  dry.dry_run = true;
  RemovalReport r = s.prune(dry);
  CHECK(r.kernels == 2);  // used 5.5 and 4.5 days ago
  CHECK(s.stats().kernel_count == 6);

  PruneOptions by_use;
  by_use.unused_for = std::chrono::hours(24 * 4);
  CHECK(s.prune(by_use).kernels == 2);
  CHECK(s.stats().kernel_count == 4);
  CHECK_FALSE(s.load_kernel(sample_kernel(0, "sm_80", cuda_version(12, 4), 100000).key));

  PruneOptions by_size;
  by_size.max_bytes = 250000;  // room for two of the 100 kB kernels
  r = s.prune(by_size);
  CHECK(r.kernels == 2);
  CHECK(r.kernel_bytes == 200000);
  CHECK(s.stats().kernel_bytes == 200000);
  CHECK(s.load_kernel(sample_kernel(5, "sm_80", cuda_version(12, 4), 100000).key));  // most recent stays

  PruneOptions by_age;
  by_age.older_than = std::chrono::hours(24 * 30);
  r = s.prune(by_age);
  CHECK(r.kernels == 2);
  CHECK(r.tuning_runs == 1);  // the superseded run only
  CHECK(s.find_winner(newer.device, "k", "b")->tile == "bm128_bn128_w8_s1");
  CHECK(r.file_bytes_after < r.file_bytes_before);  // incremental vacuum gave pages back
}

TEST_CASE("verify re-hashes every blob and can delete bad ones", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  Warnings w;
  {
    Store s = Store::open(db, w.options());
    for (int i = 0; i < 4; ++i) s.put_kernel(sample_kernel(i));
    VerifyReport ok = s.verify();
    CHECK(ok.ok());
    CHECK(ok.checked == 4);
  }
  const KernelRecord bad = sample_kernel(2);
  raw_exec(db, "UPDATE kernels SET cubin = substr(cubin, 1, 100) WHERE key = '" + bad.key + "'");
  Store s = Store::open(db, w.options());
  VerifyReport rep = s.verify();
  CHECK_FALSE(rep.ok());
  CHECK(rep.integrity == "ok");
  REQUIRE(rep.bad.size() == 1);
  CHECK(rep.bad[0].key == bad.key);
  CHECK(rep.bad[0].spec == bad.spec);
  CHECK_THAT(rep.bad[0].reason, Catch::Contains("truncated"));
  CHECK(rep.deleted == 0);
  rep = s.verify(true);
  CHECK(rep.deleted == 1);
  CHECK(s.verify().ok());
  CHECK(s.stats().kernel_count == 3);
}

TEST_CASE("export_to writes a standalone bundle that opens read-only, from a file or memory", "[cpu][cache]") {
  TempDir dir;
  Warnings w;
  Store s = Store::open(dir / "flashbias.db", w.options());
  for (int i = 0; i < 3; ++i) s.put_kernel(sample_kernel(i, "sm_80"));
  for (int i = 3; i < 5; ++i) s.put_kernel(sample_kernel(i, "sm_90a"));
  TuningRun superseded = sample_run("k90", "b", "bm128_bn128_w8_s1", 0);
  superseded.created_at = 1000;
  s.put_tuning_run(superseded);
  s.put_tuning_run(sample_run("k90", "b", "bm128_bn64_w4_s1", 0));
  s.put_tuning_run(sample_run("k80", "b", "bm128_bn64_w4_s1", 1));
  s.load_kernel(sample_kernel(3, "sm_90a").key);

  ExportFilter f;
  f.archs = {"sm_90a"};
  f.meta["bundle_format"] = "1";
  const auto bundle = dir / "out" / "model.fbbundle";
  std::filesystem::create_directories(bundle.parent_path());
  ExportReport rep = s.export_to(bundle, f);
  CHECK(rep.kernels == 2);
  CHECK(rep.kernel_bytes == 6000);
  CHECK(rep.tuning_runs == 1);
  CHECK(rep.file_bytes == std::int64_t(std::filesystem::file_size(bundle)));
  // Nothing but the bundle is left in the folder: no temporary, no journal.
  CHECK(std::distance(std::filesystem::directory_iterator(bundle.parent_path()), {}) == 1);

  auto check_bundle = [&](Store& b) {
    CHECK(b.read_only());
    CHECK(b.schema_version() == kSchemaVersion);
    CHECK(b.get_meta("bundle_format") == std::optional<std::string>("1"));
    CHECK(b.get_meta("format") == std::optional<std::string>(kFormatName));
    auto k = b.load_kernel(sample_kernel(3, "sm_90a").key);
    REQUIRE(k);
    CHECK(k->cubin == sample_kernel(3, "sm_90a").cubin);
    CHECK(k->hits == 1);  // reported to the caller, not written
    CHECK_FALSE(b.load_kernel(sample_kernel(0, "sm_80").key));  // filtered out by arch
    CHECK(b.find_kernel(sample_kernel(4, "sm_90a").spec, "sm_90a", "tmplhash-1"));
    auto win = b.find_winner(sample_device(0), "k90", "b");
    REQUIRE(win);
    CHECK(win->tile == "bm128_bn64_w4_s1");
    CHECK_FALSE(b.find_winner(sample_device(1), "k80", "b"));
    CacheStats st = b.stats();
    CHECK(st.kernel_count == 2);
    CHECK(st.kernel_hits == 0);  // usage counters are not exported
    CHECK(st.tuning_runs == 1);
    CHECK(st.tuning_candidates == 4);
    CHECK(b.verify().ok());
    CHECK_THROWS_AS(b.put_kernel(sample_kernel(9)), Error);
    CHECK_THROWS_AS(b.put_tuning_run(sample_run("x", "b", "bm128_bn64_w4_s1")), Error);
    CHECK_THROWS_AS(b.clear(), Error);
  };
  {
    Store b = Store::open_readonly(bundle);
    check_bundle(b);
  }
  const std::string bytes = read_file(bundle);
  {
    Store b = Store::open_readonly_memory(bytes.data(), bytes.size());
    check_bundle(b);
  }
  {
    Store b = Store::open_readonly_memory(bytes.data(), bytes.size(), Ownership::borrow);
    check_bundle(b);
  }
  CHECK(read_file(bundle) == bytes);  // opening never writes a bundle

  // A bundle can itself be re-exported (a subset for one arch, from a file or a memory image).
  {
    Store b = Store::open_readonly_memory(bytes.data(), bytes.size());
    ExportFilter one;
    one.kernel_keys = {sample_kernel(4, "sm_90a").key};
    one.tuning = false;
    CHECK(b.export_to(dir / "subset.fbbundle", one).kernels == 1);
    CHECK(Store::open_readonly(dir / "subset.fbbundle").list_kernels().at(0).key == sample_kernel(4, "sm_90a").key);
  }

  // The export replaces an existing file atomically, and full history is available on request.
  ExportFilter all;
  all.latest_runs_only = false;
  rep = s.export_to(bundle, all);
  CHECK(rep.kernels == 5);
  CHECK(rep.tuning_runs == 3);
  CHECK(Store::open_readonly(bundle).stats().tuning_runs == 3);
  CHECK(w.count() == 0);
}

TEST_CASE("export skips a tampered kernel and says so", "[cpu][cache]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";
  { Store s = Store::open(db); s.put_kernel(sample_kernel(1)); s.put_kernel(sample_kernel(2)); }
  raw_exec(db, "UPDATE kernels SET cubin_sha256 = '" + std::string(64, 'a') + "' WHERE key = '" +
                   sample_kernel(1).key + "'");
  Warnings w;
  Store s = Store::open(db, w.options());
  ExportReport rep = s.export_to(dir / "b.fbbundle");
  CHECK(rep.kernels == 1);
  REQUIRE(w.count() == 1);
  CHECK_THAT(w.lines()[0], Catch::Contains("not exporting"));
  CHECK(Store::open_readonly(dir / "b.fbbundle").verify().ok());
}

TEST_CASE("a tampered bundle is refused by load and verify, and left untouched", "[cpu][cache]") {
  TempDir dir;
  {
    Store s = Store::open(dir / "flashbias.db");
    s.put_kernel(sample_kernel(1));
    s.export_to(dir / "b.fbbundle");
  }
  // Flip one byte inside the blob through SQL (the bundle is an ordinary SQLite file).
  flip_cubin_byte(dir / "b.fbbundle", sample_kernel(1).key, 10);
  Warnings w;
  Store b = Store::open_readonly(dir / "b.fbbundle", w.options());
  CHECK_FALSE(b.load_kernel(sample_kernel(1).key));
  REQUIRE(w.count() == 1);
  CHECK_THAT(w.lines()[0], Catch::Contains("integrity") && Catch::Contains("read-only"));
  CHECK(b.verify().bad.size() == 1);
  CHECK(b.stats().kernel_count == 1);  // never deleted from a bundle
}

TEST_CASE("open_readonly_memory refuses bad images", "[cpu][cache]") {
  const std::string garbage(4096, 'x');
  CHECK_THROWS_AS(Store::open_readonly_memory(garbage.data(), garbage.size()), Error);
  CHECK_THROWS_AS(Store::open_readonly_memory(nullptr, 0), Error);

  TempDir dir;
  {
    Store s = Store::open(dir / "flashbias.db");
    for (int i = 0; i < 20; ++i) s.put_kernel(sample_kernel(i, "sm_80", cuda_version(12, 4), 20000));
    s.export_to(dir / "b.fbbundle");
  }
  const std::string bytes = read_file(dir / "b.fbbundle");
  const std::string truncated = bytes.substr(0, bytes.size() / 2);
  try {
    Store::open_readonly_memory(truncated.data(), truncated.size());
    FAIL("a truncated image opened");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::cache_error);
  }
  write_file(dir / "t.fbbundle", truncated);
  CHECK_THROWS_AS(Store::open_readonly(dir / "t.fbbundle"), Error);
  CHECK_THROWS_AS(Store::open_readonly(dir / "missing.fbbundle"), Error);
}

TEST_CASE("meta rows: readable, settable, store-managed keys protected", "[cpu][cache]") {
  Store s = Store::open_memory();
  CHECK(s.get_meta("schema_version") == std::optional<std::string>(std::to_string(kSchemaVersion)));
  CHECK(s.get_meta("created_by") == std::optional<std::string>(library_version()));
  s.set_meta("note", "hello");
  CHECK(s.get_meta("note") == std::optional<std::string>("hello"));
  CHECK_THROWS_AS(s.set_meta("schema_version", "9"), Error);
  CHECK_FALSE(s.get_meta("absent"));
}

TEST_CASE("device fingerprint and outcome text forms round trip", "[cpu][cache]") {
  DeviceFingerprint d{"Odd|GPU|Name", 84, 8, 6, cuda_version(12, 2)};
  CHECK(d.str() == "Odd|GPU|Name|sm84|cc8.6|drv12020");
  CHECK(DeviceFingerprint::parse(d.str()) == d);
  CHECK(DeviceFingerprint::parse(sample_device().str()) == sample_device());
  CHECK_THROWS_AS(DeviceFingerprint::parse("no fields"), Error);
  CHECK_THROWS_AS(DeviceFingerprint::parse("X|smA|cc8.6|drv1"), Error);
  CHECK_THROWS_AS(DeviceFingerprint::parse("|sm1|cc8.6|drv1"), Error);
  for (Outcome o : {Outcome::passed, Outcome::incorrect, Outcome::compile_failed, Outcome::launch_failed,
                    Outcome::not_supported}) {
    CHECK(parse_outcome(to_string(o)) == o);
  }
  CHECK_THROWS_AS(parse_outcome("crashed"), Error);
}

TEST_CASE("one store shared by threads", "[cpu][cache]") {
  TempDir dir;
  Store s = Store::open(dir / "flashbias.db");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&s, t] {
      for (int i = 0; i < 10; ++i) {
        s.put_kernel(sample_kernel(t * 100 + i));
        s.put_tuning_run(sample_run("k" + std::to_string(t), std::to_string(i), "bm128_bn64_w4_s1"));
        (void)s.load_kernel(sample_kernel(((t + 1) % 4) * 100 + i).key);
        (void)s.find_winner(sample_device(), "k" + std::to_string((t + 1) % 4), std::to_string(i));
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(s.stats().kernel_count == 40);
  CHECK(s.stats().winners == 40);
  CHECK(s.verify().ok());
}
