// A minimal fork-join loop for the host reference: tasks are handed out through an atomic counter
// so uneven tasks (causal rows, ragged chunks) balance themselves. Results must never depend on
// which thread ran a task: callers write each task's output to its own slot.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace flashbias::detail {

/// `requested`, or every hardware thread when it is 0 (at least 1).
inline unsigned resolve_threads(unsigned requested) {
  if (requested != 0) return requested;
  return std::max(1u, std::thread::hardware_concurrency());
}

/// Run body(i) for i in [0, n) on up to `threads` threads (0: all hardware threads). The first
/// exception thrown by a task stops the hand-out of new tasks and is rethrown to the caller.
template <class Body>
void parallel_for(std::int64_t n, unsigned threads, Body&& body) {
  if (n <= 0) return;
  const auto workers = static_cast<unsigned>(std::min<std::int64_t>(resolve_threads(threads), n));
  if (workers == 1) {
    for (std::int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::atomic<std::int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto work = [&] {
    for (std::int64_t i; !failed.load(std::memory_order_relaxed) && (i = next.fetch_add(1)) < n;) {
      try {
        body(i);
      } catch (...) {
        const std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (unsigned t = 1; t < workers; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace flashbias::detail
