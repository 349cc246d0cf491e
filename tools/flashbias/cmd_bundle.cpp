// `flashbias bundle export|inspect|verify` (issue 7): precompiled cubins and tuned winners for
// chosen archs in one verified, read-only file (cache/bundle.h), optionally embedded in a C++
// source that registers it at static-initialisation time (include/flashbias/bundle.h).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "cache/bundle.h"
#include "cache/store.h"
#include "commands.h"
#include "generator/kernel_source.h"
#include "generator/problem_spec.h"
#include "generator/shape_bucket.h"
#include "generator/variants.h"
#include "runtime/compiler.h"
#include "tuner/default_hooks.h"
#include "tuner/store_records.h"

namespace fs = std::filesystem;

namespace flashbias::cli {

namespace {

struct ExportArgs {
  std::string output;
  std::string archs = "sm_80,sm_90a";
  std::vector<std::string> problems;
  std::string preset;
  bool from_cache = false;
  std::string emit_cpp;
  unsigned jobs = std::max(1u, std::thread::hardware_concurrency());
};

std::vector<Arch> parse_archs(const std::string& s) {
  std::vector<Arch> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    if (end > start) {
      Arch a = Arch::parse(s.substr(start, end - start));
      if (std::none_of(out.begin(), out.end(), [&](const Arch& b) { return b == a; })) out.push_back(a);
    }
    start = end + 1;
  }
  if (out.empty()) throw Error(ErrorCode::invalid_argument, "bundle export: --arch names no arch");
  return out;
}

ProblemKey key_for(const ProblemSpec& spec, const Arch& arch) { return dense_problem_key(spec, arch); }

std::string human_bytes(std::int64_t n) {
  if (n >= (1 << 20)) return fmt::format("{:.1f} MiB", double(n) / (1 << 20));
  if (n >= 1024) return fmt::format("{:.1f} KiB", double(n) / 1024);
  return fmt::format("{} B", n);
}

void write_cpp(const fs::path& bundle, const fs::path& out) {
  std::ifstream in(bundle, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string s = cache::bundle_cpp_source(bytes.data(), bytes.size(), bundle.filename().string());
  fs::path tmp = out;
  tmp += ".tmp";
  {
    std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
    o << s;
    if (!o) throw Error(ErrorCode::invalid_argument, fmt::format("bundle export: cannot write {}", tmp.string()));
  }
  fs::rename(tmp, out);
}

int run_export(const ExportArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<Arch> archs = parse_archs(a.archs);
  const int modes = int(!a.problems.empty()) + int(!a.preset.empty()) + int(a.from_cache);
  if (modes != 1)
    throw Error(ErrorCode::invalid_argument, "bundle export: give exactly one of --problem, --preset, --from-cache");

  std::shared_ptr<cache::Store> cache = tuner::default_store();  // may be null (FLASHBIAS_CACHE=off)
  std::vector<cache::WinnerEntry> all_winners = cache ? cache->list_winners() : std::vector<cache::WinnerEntry>{};

  std::vector<ProblemSpec> specs;
  for (const std::string& p : a.problems) specs.push_back(parse_problem(p));
  if (!a.preset.empty()) {
    const std::vector<NamedProblem>* presets = a.preset == "bench"  ? &bench_presets()
                                               : a.preset == "demo" ? &demo_presets()
                                                                    : nullptr;
    if (!presets) throw Error(ErrorCode::invalid_argument, fmt::format("bundle export: unknown preset '{}' (bench, demo)", a.preset));
    for (const NamedProblem& np : *presets) specs.push_back(np.spec);
  }

  // What to put in: heuristic tiles for the named problems, every tuned winner of their keys (or of
  // every key, --from-cache) for the named archs, and --from-cache's stored kernels.
  std::map<std::string, KernelSpec> todo;  // by spec string: each kernel once
  std::set<std::string> keys_wanted;
  for (const Arch& arch : archs) {
    for (const ProblemSpec& ps : specs) {
      const ProblemKey key = key_for(ps, arch);
      const ShapeInfo shape{ps.batch * ps.heads, ps.seqlen_q, ps.seqlen_k};
      const KernelSpec ks{key, heuristic_tile(key, shape, default_smem_limit(arch))};
      todo.emplace(ks.str(), ks);
      keys_wanted.insert(key.str());
    }
  }
  std::vector<cache::WinnerEntry> winners;
  std::set<std::string> arch_names;
  for (const Arch& arch : archs) arch_names.insert(arch.name());
  for (const cache::WinnerEntry& w : all_winners) {
    if (!arch_names.count(w.arch)) continue;
    if (!a.from_cache && !keys_wanted.count(w.problem_key)) continue;
    // The winner's kernel: compiled when its key is one of the named problems' keys; otherwise
    // (--from-cache) shipped as the cache stores it (below).
    std::optional<ProblemKey> key;
    for (const Arch& arch : archs)
      for (const ProblemSpec& ps : specs)
        if (key_for(ps, arch).str() == w.problem_key) key = key_for(ps, arch);
    winners.push_back(w);
    if (key) {
      KernelSpec ks{*key, TileConfig::parse(w.winner.tile)};
      todo.emplace(ks.str(), ks);
    }
  }

  cache::Store staging = cache::Store::open_memory();
  std::map<std::string, std::string> from_cache_kernels;  // spec -> arch, shipped straight from the cache
  if (cache) {
    for (const cache::KernelRecord& r : cache->list_kernels()) {
      if (!arch_names.count(r.arch) || r.templates_hash != templates_hash()) continue;
      bool wanted = a.from_cache;
      for (const cache::WinnerEntry& w : winners)
        if (w.arch == r.arch && r.spec == w.problem_key + "/" + w.winner.tile) wanted = true;
      if (!wanted || todo.count(r.spec)) continue;
      if (auto full = cache->load_kernel(r.key)) {
        staging.put_kernel(*full);
        from_cache_kernels[r.spec] = r.arch;
      }
    }
  }

  for (const cache::WinnerEntry& w : winners) {
    const std::string spec = w.problem_key + "/" + w.winner.tile;
    if (!todo.count(spec) && !from_cache_kernels.count(spec))
      fmt::print(stderr,
                 "bundle: warning: tuned winner {} ({}) has no stored kernel to ship: a process without NVRTC "
                 "cannot run it; export with --problem for that key to compile it\n",
                 spec, w.device);
  }

  // Kernels to compile: those the cache does not already hold for this templates hash.
  std::vector<KernelSpec> compile_list;
  int reused = 0;
  for (const auto& [name, ks] : todo) {
    std::optional<cache::KernelRecord> rec;
    if (cache) {
      try {
        rec = cache->find_kernel(name, ks.key.arch.name(), templates_hash());
      } catch (const Error&) {
      }
    }
    if (rec) {
      staging.put_kernel(*rec);
      ++reused;
    } else {
      compile_list.push_back(ks);
    }
  }

  fmt::print(stderr, "bundle: {} kernels for {} ({} from the cache, {} to compile on {} threads), {} tuned winners\n",
             todo.size() + from_cache_kernels.size(), a.archs, reused + from_cache_kernels.size(), compile_list.size(),
             std::min<std::size_t>(a.jobs, std::max<std::size_t>(1, compile_list.size())), winners.size());
  std::atomic<std::size_t> next{0}, done{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  std::string nvrtc_version;
  auto worker = [&] {
    for (std::size_t i = next++; i < compile_list.size(); i = next++) {
      const KernelSpec& ks = compile_list[i];
      try {
        const KernelSource src = generate(ks);
        const CompiledKernel ck = compile(src);
        cache::KernelRecord rec = tuner::kernel_record(src, ck, 0);
        std::lock_guard lock(mutex);
        staging.put_kernel(rec);
        if (cache) {
          try {
            cache->put_kernel(rec);  // the next export (and the runtime here) reuses it
          } catch (const Error&) {
          }
        }
        nvrtc_version = ck.nvrtc_version;
        fmt::print(stderr, "  [{}/{}] {} {:.0f} ms, {} bytes\n", ++done, compile_list.size(), ks.str(), ck.compile_ms,
                   ck.cubin.size());
      } catch (const Error& e) {
        std::lock_guard lock(mutex);
        failures.push_back(fmt::format("{}: {}", ks.str(), e.what()));
        fmt::print(stderr, "  [{}/{}] {} FAILED: {}\n", ++done, compile_list.size(), ks.str(), e.what());
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < std::min<std::size_t>(std::max(1u, a.jobs), compile_list.size()); ++t) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  if (!failures.empty()) {
    fmt::print(stderr, "bundle export: {} kernels failed to compile; nothing written\n", failures.size());
    return 1;
  }

  for (const cache::WinnerEntry& w : winners) {
    if (auto run = cache->load_tuning_run(w.winner.run_id)) {
      run->id = 0;
      staging.put_tuning_run(*run);
    }
  }
  if (nvrtc_version.empty()) {
    for (const cache::KernelRecord& r : staging.list_kernels()) {
      nvrtc_version = fmt::format("{}.{}", r.nvrtc_version / 1000, (r.nvrtc_version % 1000) / 10);
      break;
    }
  }
  std::vector<std::string> names;
  for (const Arch& arch : archs) names.push_back(arch.name());
  const cache::ExportReport rep =
      cache::write_bundle(staging, a.output, cache::bundle_meta(names, nvrtc_version, templates_hash()));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  fmt::print("bundle {}: {} kernels ({}), {} tuned runs, {} on disk, archs {}, NVRTC {}, {:.1f} s\n",
             rep.path.string(), rep.kernels, human_bytes(rep.kernel_bytes), rep.tuning_runs,
             human_bytes(rep.file_bytes), a.archs, nvrtc_version, secs);
  fmt::print("covered:\n");
  for (const cache::KernelRecord& r : staging.list_kernels())
    fmt::print("  {:<7} {}  ({})\n", r.arch, r.spec, human_bytes(r.cubin_bytes));
  for (const cache::WinnerEntry& w : winners)
    fmt::print("  tuned  {} {} on {}: {}\n", w.problem_key, w.bucket, w.device, w.winner.tile);
  if (winners.empty()) fmt::print("  (no tuned winners in the cache for these keys: heuristic tiles only)\n");
  if (!a.emit_cpp.empty()) {
    write_cpp(a.output, a.emit_cpp);
    fmt::print("embedded source {} (link it in; it registers the bundle at start-up)\n", a.emit_cpp);
  }
  return 0;
}

int run_inspect(const std::string& path) {
  std::shared_ptr<cache::Bundle> b;
  try {
    b = cache::Bundle::open(path);
  } catch (const Error& e) {
    fmt::print(stderr, "flashbias: {}\n", e.what());
    return 1;
  }
  const cache::BundleInfo& info = b->info();
  auto meta = [&](const char* k) {
    auto it = info.meta.find(k);
    return it == info.meta.end() ? std::string("-") : it->second;
  };
  std::error_code ec;
  fmt::print("bundle        {}\n", info.source);
  fmt::print("format        {} version {} (schema {})\n", meta("bundle_format"), info.format_version,
             meta("schema_version"));
  fmt::print("archs         {}\n", fmt::join(info.archs, ", "));
  std::string when = meta("bundle_created_at");
  try {
    const std::time_t t = std::time_t(std::stoll(when));
    std::tm tm{};
    char buf[32];
    if (::gmtime_r(&t, &tm) && std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm)) when = buf;
  } catch (const std::exception&) {
  }
  fmt::print("created by    {} at {}\n", meta("bundle_created_by"), when);
  fmt::print("toolchain     NVRTC {}, templates {}\n", meta("bundle_nvrtc_version"), meta("bundle_templates_hash"));
  fmt::print("size          {} on disk, {} kernels ({})\n", human_bytes(std::int64_t(fs::file_size(path, ec))),
             info.stats.kernel_count, human_bytes(info.stats.kernel_bytes));
  fmt::print("digest        {}\n", meta("bundle_content_sha256"));
  for (const auto& a : info.stats.by_arch)
    fmt::print("  arch {:<7} {} kernels, {}\n", a.arch, a.kernels, human_bytes(a.bytes));
  fmt::print("kernels:\n");
  for (const cache::KernelRecord& r : b->store().list_kernels())
    fmt::print("  {:<7} {}  {} regs, {}, key {}\n", r.arch, r.spec, r.registers, human_bytes(r.cubin_bytes),
               r.key.substr(0, 12));
  fmt::print("devices (tuned winners):\n");
  const auto winners = b->store().list_winners();
  if (winners.empty()) fmt::print("  none: heuristic tiles on every device\n");
  for (const cache::WinnerEntry& w : winners)
    fmt::print("  {}  {} {}: {} ({:.4f} ms)\n", w.device, w.problem_key, w.bucket, w.winner.tile, w.winner.median_ms);
  return 0;
}

int run_verify(const std::string& path) {
  const cache::BundleVerifyReport r = cache::verify_bundle(path);
  if (!r.ok()) {
    for (const std::string& p : r.problems) fmt::print("FAILED {}\n", p);
    return 1;
  }
  fmt::print("OK {}: format version {}, {} blobs SHA-256 verified, content digest matches, archs {}\n", path,
             r.info->format_version, r.blobs_checked, fmt::join(r.info->archs, ","));
  return 0;
}

}  // namespace

void add_bundle(CLI::App& app, int& rc) {
  CLI::App* cmd = app.add_subcommand("bundle", "Precompiled kernel bundles: export, inspect, verify");
  cmd->require_subcommand(1);

  auto args = std::make_shared<ExportArgs>();
  CLI::App* ex = cmd->add_subcommand("export", "Compile kernels for the named archs (NVRTC, no GPU) into a bundle");
  ex->add_option("-o,--output", args->output, "bundle file to write")->required();
  ex->add_option("--arch", args->archs, "comma-separated archs")->capture_default_str();
  ex->add_option("--problem", args->problems, "problem string (repeatable), e.g. \"b=1,h=8,n=1024,d=64,r=16\"");
  ex->add_option("--preset", args->preset, "bench | demo");
  ex->add_flag("--from-cache", args->from_cache, "every tuned winner and stored kernel of these archs in the cache");
  ex->add_option("--emit-cpp", args->emit_cpp, "also write a C++ source embedding the bundle");
  ex->add_option("--jobs,-j", args->jobs, "parallel NVRTC compilations")->capture_default_str();
  ex->callback([args, &rc] { rc = run_export(*args); });

  auto file = std::make_shared<std::string>();
  CLI::App* in = cmd->add_subcommand("inspect", "Archs, kernels, devices, sizes and toolchain of a bundle");
  in->add_option("file", *file, "bundle file")->required();
  in->callback([file, &rc] { rc = run_inspect(*file); });

  auto vfile = std::make_shared<std::string>();
  CLI::App* ve = cmd->add_subcommand("verify", "Check format version, content digest and every blob's SHA-256");
  ve->add_option("file", *vfile, "bundle file")->required();
  ve->callback([vfile, &rc] { rc = run_verify(*vfile); });
}

}  // namespace flashbias::cli
