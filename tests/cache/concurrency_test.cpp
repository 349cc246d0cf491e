// Eight processes create, tune into, compile into and read one database at the same time;
// afterwards every winner and every kernel is there and intact.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "cache/store.h"
#include "cache_test_util.h"

using namespace flashbias;
using namespace flashbias::cache;
using namespace flashbias::cache::test;

namespace {

constexpr int kProcesses = 8;
constexpr int kRunsPerProcess = 12;

std::string key_of(int proc, int i) { return "fwd sm_90a f16 d64 r" + std::to_string(proc) + "_" + std::to_string(i); }
std::string winner_of(int proc, int i) { return (proc + i) % 2 ? "bm128_bn64_w4_s1" : "bm128_bn128_w8_s1"; }

// Body of one child process. Returns an exit status; never returns into Catch (see below).
int child(const std::filesystem::path& db, int proc) {
  try {
    Store s = Store::open(db, StoreOptions{[](const std::string& m) { std::fprintf(stderr, "child warning: %s\n", m.c_str()); }});
    if (s.in_memory()) return 10;
    for (int i = 0; i < kRunsPerProcess; ++i) {
      s.put_tuning_run(sample_run(key_of(proc, i), "b", winner_of(proc, i)));
      s.put_kernel(sample_kernel(proc * 1000 + i));
      // Everyone also writes the same shared kernel and the same shared key: the upsert and the
      // history must cope with that.
      s.put_kernel(sample_kernel(424242));
      s.put_tuning_run(sample_run("shared key", "b", winner_of(proc, i)));
      // Read what others wrote so far; whatever is visible must be intact.
      const int other = (proc + 1) % kProcesses;
      if (auto w = s.find_winner(sample_device(), key_of(other, i), "b")) {
        if (w->tile != winner_of(other, i)) return 11;
      }
      // Present or not yet, but never damaged: load_kernel verifies the hash and would warn.
      (void)s.load_kernel(sample_kernel(other * 1000 + i).key);
      if (!s.load_kernel(sample_kernel(proc * 1000 + i).key)) return 12;  // our own write
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child %d: %s\n", proc, e.what());
    return 13;
  }
}

}  // namespace

TEST_CASE("8 processes writing and reading one database lose nothing", "[cpu][cache][concurrency]") {
  TempDir dir;
  const auto db = dir / "flashbias.db";  // created by the children themselves, concurrently
  std::vector<pid_t> pids;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // _exit, not exit or return: the child must not run the parent's atexit handlers or
      // Catch's reporting, which belong to the parent process.
      ::_exit(child(db, p));
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    INFO("child exit status " << status);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  Warnings w;
  Store s = Store::open(db, w.options());
  for (int p = 0; p < kProcesses; ++p) {
    for (int i = 0; i < kRunsPerProcess; ++i) {
      auto win = s.find_winner(sample_device(), key_of(p, i), "b");
      REQUIRE(win);
      CHECK(win->tile == winner_of(p, i));
      auto k = s.load_kernel(sample_kernel(p * 1000 + i).key);
      REQUIRE(k);
      CHECK(k->cubin == sample_kernel(p * 1000 + i).cubin);
    }
  }
  CacheStats st = s.stats();
  CHECK(st.tuning_runs == 2 * kProcesses * kRunsPerProcess);
  CHECK(st.kernel_count == kProcesses * kRunsPerProcess + 1);
  CHECK(st.winners == kProcesses * kRunsPerProcess + 1);
  CHECK(s.find_winner(sample_device(), "shared key", "b"));
  CHECK(s.verify().ok());
  CHECK(w.count() == 0);
}
