#include "tuner/gpu_source.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "generator/variants.h"
#include "runtime/driver_api.h"
#include "runtime/launch_plan.h"
#include "runtime/loaded_kernel.h"
#include "runtime/validate.h"
#include "tuner/parallel.h"

namespace flashbias::tuner {

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The first line of an NVRTC log that states an error: what a person needs in a one-line reason
// (the full log is kept in the thrown Error for `flashbias gen`, not in the table).
std::string first_error_line(const std::string& text) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);
    if (line.find("error") != std::string_view::npos) return std::string(line.substr(0, 400));
    pos = end + 1;
  }
  return text.substr(0, std::min<std::size_t>(text.size(), 400));
}

void require_compatible(const ProblemKey& want, const ProblemKey& have) {
  auto differ = [&](const char* field, const std::string& a, const std::string& b) {
    return Error(ErrorCode::invalid_argument,
                 fmt::format("tuning key {} cannot run on the problem's buffers (key {}): {} is {} in the key but {} "
                             "in the problem",
                             want.str(), have.str(), field, a, b));
  };
  if (!(want.arch == have.arch)) throw differ("arch", want.arch.name(), have.arch.name());
  if (want.dtype != have.dtype) throw differ("dtype", to_string(want.dtype), to_string(have.dtype));
  if (want.head_dim != have.head_dim) throw differ("head_dim", std::to_string(want.head_dim), std::to_string(have.head_dim));
  if (want.rank != have.rank) throw differ("rank", std::to_string(want.rank), std::to_string(have.rank));
  if (want.mask != have.mask) throw differ("mask", to_string(want.mask), to_string(have.mask));
  if (want.direction != have.direction) throw differ("direction", to_string(want.direction), to_string(have.direction));
  if (want.broadcast != have.broadcast)
    throw differ("broadcast", std::to_string(want.broadcast), std::to_string(have.broadcast));
  // A kernel that assumes narrower accesses runs correctly on wider-aligned buffers, not the reverse.
  if (want.qkv_align > have.qkv_align)
    throw differ("qkv_align", std::to_string(want.qkv_align), std::to_string(have.qkv_align));
  if (want.bias_align > have.bias_align)
    throw differ("bias_align", std::to_string(want.bias_align), std::to_string(have.bias_align));
}

}  // namespace

L2Flush::L2Flush(int device_ordinal) {
  const driver::Api& d = driver::api();
  CUdevice dev = 0;
  driver::check(d.cuDeviceGet(&dev, device_ordinal), "cuDeviceGet");
  int l2 = 0;
  driver::check(d.cuDeviceGetAttribute(&l2, CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, dev),
                "cuDeviceGetAttribute(L2_CACHE_SIZE)");
  scratch_ = DeviceBuffer(std::max<std::size_t>(std::size_t(l2) * 2, std::size_t(1) << 20));
}

void L2Flush::operator()() {
  // The value varies so that no hardware write-combining can skip it.
  driver::check(driver::api().cuMemsetD32(scratch_.ptr(), ++value_, scratch_.bytes() / 4), "cuMemsetD32 (L2 flush)");
}

Timing time_each_ms(const std::function<void()>& launch, CUstream stream, int warmup, int repeats,
                    const std::function<void()>& before_each) {
  if (repeats < 1) throw Error(ErrorCode::invalid_argument, fmt::format("repeats = {} must be at least 1", repeats));
  const driver::Api& d = driver::api();
  for (int i = 0; i < warmup; ++i) launch();
  std::vector<CUevent> events(2 * std::size_t(repeats), nullptr);
  auto destroy = [&] {
    for (CUevent e : events)
      if (e) d.cuEventDestroy(e);
  };
  std::vector<double> ms(std::size_t(repeats), 0.0);
  try {
    for (CUevent& e : events) driver::check(d.cuEventCreate(&e, CU_EVENT_DEFAULT), "cuEventCreate");
    for (int i = 0; i < repeats; ++i) {
      if (before_each) before_each();
      driver::check(d.cuEventRecord(events[2 * std::size_t(i)], stream), "cuEventRecord");
      launch();
      driver::check(d.cuEventRecord(events[2 * std::size_t(i) + 1], stream), "cuEventRecord");
    }
    driver::check(d.cuEventSynchronize(events.back()), "cuEventSynchronize", ErrorCode::launch_failed);
    for (int i = 0; i < repeats; ++i) {
      float t = 0;
      driver::check(d.cuEventElapsedTime(&t, events[2 * std::size_t(i)], events[2 * std::size_t(i) + 1]),
                    "cuEventElapsedTime");
      ms[std::size_t(i)] = t;
    }
  } catch (...) {
    destroy();
    throw;
  }
  destroy();
  std::sort(ms.begin(), ms.end());
  return Timing{ms[ms.size() / 2], ms.front(), ms.back(), repeats};
}

struct GpuSource::Slot {
  bool prepared = false;
  Verdict verdict;
  std::optional<KernelSource> source;
  std::shared_ptr<const CompiledKernel> compiled;
  std::unique_ptr<LaunchPlan> plan;
  std::optional<double> kernel_ms;  // event time of the last check's launch
};

GpuSource::GpuSource(const DeviceInfo& device, const ProblemSpec& problem, std::vector<TileConfig> tiles,
                     std::optional<ProblemKey> key, GpuSourceOptions options)
    : device_(device), tiles_(std::move(tiles)), options_(options), start_ns_(now_ns()) {
  if (options_.checks < 2) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("checks = {}: every candidate is checked on at least 2 input sets so that a race shows",
                            options_.checks));
  }
  compile_threads_ = detail::resolve_threads(options_.compile_threads);
  backward_ = key ? key->direction == Direction::bwd : options_.direction == Direction::bwd;
  if (!backward_) {
    for (int c = 0; c < options_.checks; ++c)
      problems_.push_back(std::make_unique<DeviceProblem>(problem, options_.seed + std::uint64_t(c)));
    const ProblemKey derived = validate_forward(problems_.front()->forward_args(), device_);
    if (key) require_compatible(*key, derived);
    key_ = key.value_or(derived);
  } else {
    // One timing problem of the real shape; checks on small odd-sized problems of the same key
    // (ragged tiles at both ends; the Nq/Nk relation kept, which the causal mask depends on).
    problems_.push_back(std::make_unique<DeviceProblem>(problem, options_.seed));
    problems_.front()->enable_backward(options_.seed + 100);
    const ProblemKey derived = validate_backward(problems_.front()->backward_args(), device_);
    if (key) require_compatible(*key, derived);
    key_ = key.value_or(derived);
    ProblemSpec small = problem;
    small.batch = std::min<std::int64_t>(problem.batch, 2);
    small.heads = std::min<std::int64_t>(problem.heads, 2);
    small.seqlen_q = std::min<std::int64_t>(problem.seqlen_q, 257);
    small.seqlen_k = problem.seqlen_k == problem.seqlen_q ? small.seqlen_q
                     : problem.seqlen_k > problem.seqlen_q ? std::min<std::int64_t>(problem.seqlen_k, 321)
                                                           : std::min<std::int64_t>(problem.seqlen_k, 193);
    for (int c = 0; c < options_.checks; ++c) {
      bwd_checks_.push_back(std::make_unique<DeviceProblem>(small, options_.seed + 1 + std::uint64_t(c)));
      bwd_checks_.back()->enable_backward(options_.seed + 200 + std::uint64_t(c));
      require_compatible(key_, validate_backward(bwd_checks_.back()->backward_args(), device_));
    }
    // The forward the backward differentiates: the heuristic forward kernel of the same problem.
    ProblemKey fkey = validate_forward(problems_.front()->forward_args(), device_);
    const ShapeInfo shape{problem.batch * problem.heads, problem.seqlen_q, problem.seqlen_k};
    const KernelSpec fspec{fkey, heuristic_tile(fkey, shape, device_.max_smem_per_block_optin)};
    fwd_plan_ = std::make_unique<LaunchPlan>(std::make_shared<const LoadedKernel>(compile(generate(fspec))), fspec);
    bwd_workspace_.emplace_back(bwd_workspace_layout(problems_.front()->backward_args()).bytes);
    for (const auto& c : bwd_checks_) bwd_workspace_.emplace_back(bwd_workspace_layout(c->backward_args()).bytes);
    fwd_plan_->launch_forward(problems_.front()->forward_args(), nullptr);
    driver::check(driver::api().cuCtxSynchronize(), "cuCtxSynchronize (tuning forward)", ErrorCode::launch_failed);
  }
  if (options_.flush_l2) flush_.emplace(device_.ordinal);
  try {
    heuristic_ = heuristic_tile(key_, ShapeInfo{problem.batch * problem.heads, problem.seqlen_q, problem.seqlen_k},
                                device_.max_smem_per_block_optin);
  } catch (const Error&) {
    // No heuristic tile fits this device: every candidate is judged alike.
  }
  slots_.resize(tiles_.size());
  for (auto& s : slots_) s = std::make_unique<Slot>();
}

GpuSource::~GpuSource() = default;

bool spill_pruned(const KernelResources& resources, bool heuristic_tile) {
  return resources.spills() && !heuristic_tile;
}

void GpuSource::set_tiles(std::vector<TileConfig> tiles) {
  for (const auto& s : slots_)
    if (s->prepared || s->source) throw Error(ErrorCode::internal, "GpuSource::set_tiles after prepare()");
  tiles_ = std::move(tiles);
  slots_.clear();
  slots_.resize(tiles_.size());
  for (auto& s : slots_) s = std::make_unique<Slot>();
}

double GpuSource::elapsed_seconds() const { return double(now_ns() - start_ns_) / 1e9; }

const KernelSource* GpuSource::source(std::size_t i) const {
  const Slot& s = *slots_.at(i);
  return s.source ? &*s.source : nullptr;
}

const CompiledKernel* GpuSource::compiled(std::size_t i) const { return slots_.at(i)->compiled.get(); }

std::vector<Verdict> GpuSource::prepare(const std::vector<std::size_t>& candidates) {
  const std::size_t limit = device_.max_smem_per_block_optin;
  // 1. Generation and the template's legality rules, serially (microseconds each).
  std::vector<std::size_t> to_compile;
  for (std::size_t i : candidates) {
    Slot& s = *slots_.at(i);
    if (s.prepared || s.source) continue;
    const KernelSpec spec{key_, tiles_[i]};
    if (std::string why = legality_error(key_, tiles_[i], limit); !why.empty()) {
      s.prepared = true;
      s.verdict = Verdict{Outcome::not_supported, why, std::nullopt, std::nullopt};
      continue;
    }
    try {
      s.source = generate(spec);
    } catch (const Error& e) {
      if (e.code() != ErrorCode::unsupported) throw;
      s.prepared = true;
      s.verdict = Verdict{Outcome::not_supported, e.what(), std::nullopt, std::nullopt};
      continue;
    }
    if (s.source->smem_bytes > limit) {
      s.prepared = true;
      s.verdict = Verdict{Outcome::not_supported,
                          fmt::format("needs {} bytes of dynamic shared memory; the device allows {}",
                                      s.source->smem_bytes, limit),
                          std::nullopt, std::nullopt};
      continue;
    }
    to_compile.push_back(i);
  }

  // 2. NVRTC on a bounded pool: NVRTC is thread-safe per program, and one program of these
  //    templates holds about half a GB, so one per core bounds memory as well as CPU.
  std::vector<std::optional<Error>> errors(to_compile.size());
  detail::parallel_for(std::int64_t(to_compile.size()), compile_threads_, [&](std::int64_t j) {
    Slot& s = *slots_[to_compile[std::size_t(j)]];
    try {
      s.compiled = std::make_shared<const CompiledKernel>(compile(*s.source));
    } catch (const Error& e) {
      if (e.code() == ErrorCode::nvrtc_unavailable) throw;  // nothing can be tuned: stop the run
      errors[std::size_t(j)] = e;
    }
  });

  // 3. Static pruning from the ptxas report, then load, check.
  for (std::size_t j = 0; j < to_compile.size(); ++j) {
    const std::size_t i = to_compile[j];
    Slot& s = *slots_[i];
    s.prepared = true;
    if (errors[j]) {
      s.verdict = Verdict{errors[j]->code() == ErrorCode::compile_failed ? Outcome::compile_failed
                                                                          : Outcome::not_supported,
                          first_error_line(errors[j]->what()), std::nullopt, std::nullopt};
      continue;
    }
    const CompiledKernel& k = *s.compiled;
    const KernelResources& r = k.resources;
    s.verdict.compile_ms = k.compile_ms;
    auto reject = [&](std::string why) {
      s.verdict.outcome = Outcome::not_supported;
      s.verdict.reason = std::move(why);
    };
    if (spill_pruned(r, heuristic_ && tiles_[i] == *heuristic_)) {
      reject(fmt::format("spills registers ({} bytes stored, {} loaded): slower than a tile that fits",
                         r.spill_store_bytes, r.spill_load_bytes));
      continue;
    }
    const std::size_t smem_total = k.smem_bytes + std::size_t(std::max(0, r.static_smem_bytes));
    if (smem_total > limit) {
      reject(fmt::format("{} bytes of shared memory (static {} + dynamic {}); the device allows {}", smem_total,
                         std::max(0, r.static_smem_bytes), k.smem_bytes, limit));
      continue;
    }
    // Occupancy estimate before loading: a CTA whose registers exceed one SM's (or one block's)
    // file can never be resident, and the launch would fail with LAUNCH_OUT_OF_RESOURCES.
    const long long regs = static_cast<long long>(std::max(0, r.registers)) * k.threads;
    if (device_.regs_per_block > 0 && regs > device_.regs_per_block) {
      reject(fmt::format("occupancy 0: {} registers x {} threads exceed {} registers per block", r.registers,
                         k.threads, device_.regs_per_block));
      continue;
    }
    try {
      auto loaded = std::make_shared<const LoadedKernel>(k);
      if (loaded->max_active_blocks_per_sm() == 0) {
        reject(fmt::format("occupancy 0: {} registers x {} threads and {} bytes of shared memory do not fit one SM",
                           r.registers, k.threads, smem_total));
        continue;
      }
      s.plan = std::make_unique<LaunchPlan>(std::move(loaded), KernelSpec{key_, tiles_[i]});
    } catch (const Error& e) {
      s.verdict.outcome = Outcome::launch_failed;
      s.verdict.reason = e.what();
      continue;
    }
    check(i, s);
  }

  std::vector<Verdict> out;
  out.reserve(candidates.size());
  for (std::size_t i : candidates) out.push_back(slots_.at(i)->verdict);
  return out;
}

void GpuSource::check(std::size_t i, Slot& s) {
  const driver::Api& d = driver::api();
  CUevent ev[2] = {nullptr, nullptr};
  for (CUevent& e : ev) driver::check(d.cuEventCreate(&e, CU_EVENT_DEFAULT), "cuEventCreate");
  struct Destroy {
    const driver::Api& d;
    CUevent* ev;
    ~Destroy() {
      for (int k = 0; k < 2; ++k) d.cuEventDestroy(ev[k]);
    }
  } destroy{d, ev};
  // A launch or driver failure (or a grid over the limit) rejects the candidate; anything else is
  // a bug of ours and propagates.
  auto reject_run = [&](const Error& e) {
    if (e.code() != ErrorCode::launch_failed && e.code() != ErrorCode::driver_error &&
        e.code() != ErrorCode::unsupported)
      throw e;
    s.verdict.outcome = e.code() == ErrorCode::unsupported ? Outcome::not_supported : Outcome::launch_failed;
    s.verdict.reason = e.what();
    s.plan.reset();
  };
  double worst = 0;
  if (backward_) {
    for (std::size_t c = 0; c < bwd_checks_.size(); ++c) {
      BackwardCheck r;
      try {
        r = check_backward(
            *bwd_checks_[c], [&](const ForwardArgs& a) { fwd_plan_->launch_forward(a, nullptr); },
            [&](const BackwardArgs& a) { s.plan->launch_backward(a, bwd_workspace_[c + 1].get(), nullptr); }, 0);
      } catch (const Error& e) {
        return reject_run(e);
      }
      for (const Comparison& g : r.grads) worst = std::max(worst, g.rel_l2);
      s.verdict.max_error = worst;
      if (!r.pass) {
        s.verdict.outcome = Outcome::incorrect;
        s.verdict.reason = fmt::format("input set {} of {}: {}", c + 1, bwd_checks_.size(), r.str());
        s.plan.reset();
        return;
      }
    }
    // One launch on the real shape, bracketed, for the budget's estimates.
    try {
      const BackwardArgs a = problems_.front()->backward_args(bwd_workspace_[0].get(), bwd_workspace_[0].bytes());
      driver::check(d.cuEventRecord(ev[0], nullptr), "cuEventRecord");
      s.plan->launch_backward(a, bwd_workspace_[0].get(), nullptr);
      driver::check(d.cuEventRecord(ev[1], nullptr), "cuEventRecord");
      driver::check(d.cuEventSynchronize(ev[1]), "cuEventSynchronize", ErrorCode::launch_failed);
      float ms = 0;
      if (d.cuEventElapsedTime(&ms, ev[0], ev[1]) == CUDA_SUCCESS) s.kernel_ms = ms;
    } catch (const Error& e) {
      return reject_run(e);
    }
    s.verdict.outcome = Outcome::passed;
    s.verdict.reason.clear();
    return;
  }
  for (std::size_t c = 0; c < problems_.size(); ++c) {
    CheckResult r;
    try {
      // The launch is bracketed by events so that budgets know the kernel's time before timing it
      // (check_forward synchronises the context before it compares, so the events are complete).
      r = check_forward(
          *problems_[c],
          [&](const ForwardArgs& a) {
            driver::check(d.cuEventRecord(ev[0], nullptr), "cuEventRecord");
            s.plan->launch_forward(a, nullptr);
            driver::check(d.cuEventRecord(ev[1], nullptr), "cuEventRecord");
          },
          options_.check_rows);
      float ms = 0;
      if (d.cuEventElapsedTime(&ms, ev[0], ev[1]) == CUDA_SUCCESS) s.kernel_ms = ms;
    } catch (const Error& e) {
      return reject_run(e);
    }
    worst = std::max({worst, r.o.rel_l2, r.lse.rel_l2});
    s.verdict.max_error = worst;
    if (!r.pass) {
      s.verdict.outcome = Outcome::incorrect;
      s.verdict.reason = fmt::format("input set {} of {}: {}", c + 1, problems_.size(), r.str());
      s.plan.reset();
      return;
    }
  }
  (void)i;
  s.verdict.outcome = Outcome::passed;
  s.verdict.reason.clear();
}

std::optional<double> GpuSource::estimate_seconds(std::size_t i, int repeats) const {
  const Slot& s = *slots_.at(i);
  if (!s.kernel_ms) return std::nullopt;
  // Per run: the kernel, the flush (a memset at roughly 1 TB/s, conservatively), and ~50 us of
  // event and launch overhead; warm-up runs have no flush.
  const double flush_s = flush_ ? double(flush_->bytes()) / 1e12 : 0.0;
  return *s.kernel_ms / 1e3 * double(repeats + options_.warmup) + double(repeats) * (flush_s + 50e-6);
}

Timing GpuSource::time(std::size_t i, int repeats) {
  Slot& s = *slots_.at(i);
  if (!s.prepared || s.verdict.outcome != Outcome::passed || !s.plan) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("candidate {} ({}) cannot be timed: {}", i, tiles_.at(i).str(),
                            s.prepared ? std::string(cache::to_string(s.verdict.outcome)) : "not prepared"));
  }
  const ForwardArgs args = problems_.front()->forward_args();
  const LaunchPlan& plan = *s.plan;
  std::function<void()> flush;
  if (flush_) flush = [&] { (*flush_)(); };  // ordered before the start event on the legacy stream
  if (backward_) {
    const BackwardArgs bargs = problems_.front()->backward_args(bwd_workspace_[0].get(), bwd_workspace_[0].bytes());
    void* ws = bwd_workspace_[0].get();
    return time_each_ms([&] { plan.launch_backward(bargs, ws, nullptr); }, nullptr, options_.warmup, repeats, flush);
  }
  return time_each_ms([&] { plan.launch_forward(args, nullptr); }, nullptr, options_.warmup, repeats, flush);
}

}  // namespace flashbias::tuner
