// JSON forms used by the CLI's --json output.
#include <catch2/catch.hpp>

#include "cache/json.h"
#include "cache_test_util.h"

using namespace flashbias::cache;
using namespace flashbias::cache::test;

TEST_CASE("records and reports serialise to JSON without blobs", "[cpu][cache]") {
  Store s = Store::open_memory();
  s.put_kernel(sample_kernel(1));
  TuningRun run = sample_run("k", "b", "bm128_bn64_w4_s1");
  run.id = s.put_tuning_run(run);

  nlohmann::json k = s.list_kernels().at(0);
  CHECK(k["spec"] == sample_kernel(1).spec);
  CHECK(k["cubin_bytes"] == 3000);
  CHECK_FALSE(k.contains("cubin"));

  nlohmann::json r = *s.load_tuning_run(run.id);
  CHECK(r["device"]["fingerprint"] == sample_device().str());
  CHECK(r["winner_tile"] == "bm128_bn64_w4_s1");
  REQUIRE(r["candidates"].size() == 4);
  CHECK(r["candidates"][1]["outcome"] == "incorrect");
  CHECK(r["candidates"][2]["median_ms"].is_null());  // not timed is null, not 0

  nlohmann::json st = s.stats();
  CHECK(st["kernel_count"] == 1);
  CHECK(st["by_arch"][0]["arch"] == "sm_80");
  nlohmann::json v = s.verify();
  CHECK(v["ok"] == true);
  nlohmann::json w = s.list_winners();
  CHECK(w[0]["winner"]["tile"] == "bm128_bn64_w4_s1");
}
