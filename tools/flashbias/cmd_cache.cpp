// `flashbias cache stats|list|verify|clear|prune`: the kernel and tuning store, inspected and
// maintained. Prints the store's structured results (tables, or --json).
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cache/json.h"
#include "cache/location.h"
#include "cache/store.h"
#include "commands.h"
#include "flashbias/flashbias.hpp"
#include "generator/problem_key.h"

namespace flashbias::cli {

namespace {

struct CacheCliOptions {
  std::string db;  // --db: a store file instead of the default location
  bool json = false;
  // list
  bool kernels_only = false, winners_only = false;
  std::string device;
  // verify
  bool delete_bad = false;
  // clear
  std::string arch;
  // prune
  double older_than_days = 0, unused_for_days = 0;
  std::string max_size;
  bool dry_run = false;
};

cache::Store open_store(const CacheCliOptions& o) {
  cache::StoreOptions so;
  // Maintenance must act on the real file or say why not: no silent in-memory stand-in.
  so.fallback_to_memory = false;
  return o.db.empty() ? cache::Store::open_default(so) : cache::Store::open(o.db, so);
}

std::string bytes_text(std::int64_t b) {
  if (b >= (std::int64_t(1) << 30)) return fmt::format("{:.1f} GiB", double(b) / double(1 << 30));
  if (b >= (std::int64_t(1) << 20)) return fmt::format("{:.1f} MiB", double(b) / double(1 << 20));
  if (b >= 1024) return fmt::format("{:.1f} KiB", double(b) / 1024.0);
  return fmt::format("{} B", b);
}

std::string time_text(std::int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
  return buf;
}

// "500M", "2G", "1048576": bytes. Error naming --max-size otherwise.
std::int64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    used = 0;
  }
  std::string unit = text.substr(used);
  double mul = 1;
  if (unit == "K" || unit == "k" || unit == "KiB") mul = 1024;
  else if (unit == "M" || unit == "MiB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") mul = 1024.0 * 1024 * 1024;
  else if (!unit.empty()) used = 0;
  if (used == 0 || v < 0)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("--max-size '{}' is not a size: use bytes or a K/M/G suffix, e.g. 500M", text));
  return static_cast<std::int64_t>(v * mul);
}

void print_removal(const char* what, const cache::RemovalReport& r, bool dry) {
  fmt::print("{}{}: {} kernels ({}), {} tuning runs; file {} -> {}\n", what, dry ? " (dry run)" : "", r.kernels,
             bytes_text(r.kernel_bytes), r.tuning_runs, bytes_text(r.file_bytes_before), bytes_text(r.file_bytes_after));
}

}  // namespace

void add_cache(CLI::App& app, int& rc) {
  auto o = std::make_shared<CacheCliOptions>();
  CLI::App* cmd = app.add_subcommand(
      "cache", "Inspect and maintain the kernel and tuning cache ($FLASHBIAS_CACHE_DIR, else $XDG_CACHE_HOME/flashbias, "
               "else ~/.cache/flashbias)");
  cmd->require_subcommand(1);
  cmd->fallthrough();  // `cache stats --json` as well as `cache --json stats`
  cmd->add_option("--db", o->db, "a store file to use instead of the default location");
  cmd->add_flag("--json", o->json, "print the structured result as JSON");

  CLI::App* stats = cmd->add_subcommand("stats", "sizes, hit counts, kernels by arch, tuning results by device");
  stats->callback([o, &rc] {
    cache::Store store = open_store(*o);
    const cache::CacheStats s = store.stats();
    if (o->json) {
      fmt::print("{}\n", nlohmann::json(s).dump(2));
      return;
    }
    fmt::print("store      {}{}{}\n", s.path, s.in_memory ? " (in memory)" : "", s.read_only ? " (read-only)" : "");
    fmt::print("schema     v{}\nfile       {}\n", s.schema_version, bytes_text(s.file_bytes));
    fmt::print("kernels    {} ({} of cubins), {} loads served\n", s.kernel_count, bytes_text(s.kernel_bytes),
               s.kernel_hits);
    fmt::print("tuning     {} runs, {} candidates, {} current winners\n", s.tuning_runs, s.tuning_candidates,
               s.winners);
    for (const auto& a : s.by_arch)
      fmt::print("  arch {:<8} {:>5} kernels {:>10} {:>6} hits\n", a.arch, a.kernels, bytes_text(a.bytes), a.hits);
    for (const auto& d : s.by_device)
      fmt::print("  device {}: {} runs, {} winners, {} candidates\n", d.device, d.runs, d.winners, d.candidates);
    rc = 0;
  });

  CLI::App* list = cmd->add_subcommand("list", "kernels (newest first) and current tuning winners");
  list->add_flag("--kernels", o->kernels_only, "only kernels");
  list->add_flag("--winners", o->winners_only, "only tuning winners");
  list->add_option("--device", o->device, "only winners of this device fingerprint (as `cache stats` prints it)");
  list->callback([o, &rc] {
    cache::Store store = open_store(*o);
    const bool kernels = !o->winners_only;
    const bool winners = !o->kernels_only;
    std::vector<cache::KernelRecord> ks;
    std::vector<cache::WinnerEntry> ws;
    if (kernels) ks = store.list_kernels();
    if (winners) ws = store.list_winners(o->device.empty() ? std::nullopt : std::optional(o->device));
    if (o->json) {
      nlohmann::json j;
      if (kernels) j["kernels"] = ks;
      if (winners) j["winners"] = ws;
      fmt::print("{}\n", j.dump(2));
      return;
    }
    if (kernels) {
      fmt::print("{} kernels\n{:<14} {:<8} {:>6} {:>5} {:>5} {:>9} {:>5}  {:<16} {}\n", ks.size(), "key", "arch", "nvrtc",
                 "regs", "spill", "size", "hits", "created", "spec");
      for (const auto& k : ks)
        fmt::print("{:<14} {:<8} {:>6} {:>5} {:>5} {:>9} {:>5}  {:<16} {}\n", k.key.substr(0, 12), k.arch,
                   fmt::format("{}.{}", k.nvrtc_version / 1000, (k.nvrtc_version % 1000) / 10), k.registers,
                   k.spill_store_bytes + k.spill_load_bytes, bytes_text(k.cubin_bytes), k.hits,
                   time_text(k.created_at), k.spec);
    }
    if (winners) {
      fmt::print("{}{} tuning winners\n", kernels ? "\n" : "", ws.size());
      for (const auto& w : ws)
        fmt::print("  {} | {} | {} -> {} {:.4f} ms ({} of {} passed, {}, {:.0f} s, {})\n", w.device, w.problem_key,
                   w.bucket, w.winner.tile, w.winner.median_ms, w.passed, w.candidates, w.winner.strategy,
                   w.winner.tuning_seconds, time_text(w.winner.created_at));
    }
    rc = 0;
  });

  CLI::App* verify = cmd->add_subcommand("verify", "re-hash every cubin and check the database structure (exit 1 on damage)");
  verify->add_flag("--delete-bad", o->delete_bad, "remove entries whose hash does not match");
  verify->callback([o, &rc] {
    cache::Store store = open_store(*o);
    const cache::VerifyReport r = store.verify(o->delete_bad);
    if (o->json) {
      fmt::print("{}\n", nlohmann::json(r).dump(2));
    } else {
      fmt::print("{} kernels checked, {} bad, {} deleted; structure: {}\n", r.checked, r.bad.size(), r.deleted,
                 r.integrity);
      for (const auto& b : r.bad) fmt::print("  BAD {} {} {}: {}\n", b.key.substr(0, 12), b.arch, b.spec, b.reason);
      fmt::print("{}\n", r.ok() ? "OK" : "DAMAGED");
    }
    rc = r.ok() ? 0 : 1;
  });

  CLI::App* clear = cmd->add_subcommand("clear", "remove kernels and tuning results (all, or of one device / arch)");
  clear->add_option("--device", o->device, "only this device fingerprint's tuning runs");
  clear->add_option("--arch", o->arch, "only this arch's kernels and tuning runs (sm_80, sm_90a)");
  clear->callback([o, &rc] {
    cache::Store store = open_store(*o);
    cache::ClearFilter f;
    if (!o->device.empty()) f.device = o->device;
    if (!o->arch.empty()) f.arch = Arch::parse(o->arch).name();  // "sm90a" -> sm_90a; a typo is an error
    const cache::RemovalReport r = store.clear(f);
    if (o->json) fmt::print("{}\n", nlohmann::json(r).dump(2));
    else print_removal("cleared", r, false);
    rc = 0;
  });

  CLI::App* prune = cmd->add_subcommand("prune", "remove old, unused or excess kernels (current winners' runs stay)");
  auto* older = prune->add_option("--older-than", o->older_than_days,
                                  "days since a kernel was compiled / a run was superseded");
  auto* unused = prune->add_option("--unused-for", o->unused_for_days, "days since a kernel was last loaded");
  prune->add_option("--max-size", o->max_size, "then drop least recently used kernels until they fit (e.g. 500M)");
  prune->add_flag("--dry-run", o->dry_run, "count only");
  prune->callback([o, older, unused, &rc] {
    cache::PruneOptions p;
    auto days = [](double d, const char* flag) {
      if (!(d >= 0 && d <= 36500))  // NaN included: it would cast to an undefined cutoff
        throw Error(ErrorCode::invalid_argument, fmt::format("{} {} must be in [0, 36500] days", flag, d));
      return std::chrono::seconds(static_cast<std::int64_t>(d * 86400));
    };
    if (older->count()) p.older_than = days(o->older_than_days, "--older-than");
    if (unused->count()) p.unused_for = days(o->unused_for_days, "--unused-for");
    if (!o->max_size.empty()) p.max_bytes = parse_size(o->max_size);
    if (!p.older_than && !p.unused_for && !p.max_bytes) {
      throw Error(ErrorCode::invalid_argument,
                  "prune needs a rule: --older-than DAYS, --unused-for DAYS and/or --max-size SIZE");
    }
    p.dry_run = o->dry_run;
    cache::Store store = open_store(*o);
    const cache::RemovalReport r = store.prune(p);
    if (o->json) fmt::print("{}\n", nlohmann::json(r).dump(2));
    else print_removal("pruned", r, o->dry_run);
    rc = 0;
  });
}

}  // namespace flashbias::cli
