#include "cache/json.h"

namespace flashbias::cache {
namespace {
// Absent measurements are null, not 0: "not timed" and "took 0 ms" must stay distinguishable.
nlohmann::json opt(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); }
}  // namespace

void to_json(nlohmann::json& j, const DeviceFingerprint& d) {
  j = {{"name", d.name}, {"sm_count", d.sm_count}, {"cc", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor)},
       {"driver_version", d.driver_version}, {"fingerprint", d.str()}};
}

void to_json(nlohmann::json& j, const KernelRecord& k) {
  j = {{"key", k.key}, {"spec", k.spec}, {"arch", k.arch}, {"nvrtc_version", k.nvrtc_version},
       {"driver_version", k.driver_version}, {"templates_hash", k.templates_hash}, {"options", k.options},
       {"entry", k.entry}, {"threads", k.threads}, {"smem_bytes", k.smem_bytes}, {"registers", k.registers},
       {"spill_store_bytes", k.spill_store_bytes}, {"spill_load_bytes", k.spill_load_bytes},
       {"stack_bytes", k.stack_bytes}, {"compile_ms", k.compile_ms}, {"cubin_bytes", k.cubin_bytes},
       {"cubin_sha256", k.cubin_sha256}, {"created_at", k.created_at}, {"last_used_at", k.last_used_at},
       {"hits", k.hits}};
}

void to_json(nlohmann::json& j, const TuningCandidate& c) {
  j = {{"tile", c.tile}, {"outcome", to_string(c.outcome)}, {"reason", c.reason}, {"median_ms", opt(c.median_ms)},
       {"min_ms", opt(c.min_ms)}, {"max_ms", opt(c.max_ms)}, {"repeats", c.repeats},
       {"compile_ms", opt(c.compile_ms)}, {"max_error", opt(c.max_error)}};
}

void to_json(nlohmann::json& j, const TuningRun& r) {
  j = {{"id", r.id}, {"device", r.device}, {"problem_key", r.problem_key}, {"arch", r.arch}, {"bucket", r.bucket},
       {"strategy", r.strategy}, {"templates_hash", r.templates_hash}, {"nvrtc_version", r.nvrtc_version},
       {"winner_tile", r.winner_tile ? nlohmann::json(*r.winner_tile) : nlohmann::json(nullptr)},
       {"tuning_seconds", r.tuning_seconds}, {"created_at", r.created_at}, {"created_by", r.created_by},
       {"candidates", r.candidates}};
}

void to_json(nlohmann::json& j, const TuningWinner& w) {
  j = {{"tile", w.tile}, {"median_ms", w.median_ms}, {"run_id", w.run_id}, {"strategy", w.strategy},
       {"tuning_seconds", w.tuning_seconds}, {"created_at", w.created_at}};
}

void to_json(nlohmann::json& j, const WinnerEntry& e) {
  j = {{"device", e.device}, {"problem_key", e.problem_key}, {"arch", e.arch}, {"bucket", e.bucket},
       {"winner", e.winner}, {"candidates", e.candidates}, {"passed", e.passed}};
}

void to_json(nlohmann::json& j, const CacheStats& s) {
  nlohmann::json arch = nlohmann::json::array(), dev = nlohmann::json::array();
  for (const auto& a : s.by_arch) arch.push_back({{"arch", a.arch}, {"kernels", a.kernels}, {"bytes", a.bytes}, {"hits", a.hits}});
  for (const auto& d : s.by_device) {
    dev.push_back({{"device", d.device}, {"runs", d.runs}, {"winners", d.winners}, {"candidates", d.candidates}});
  }
  j = {{"path", s.path}, {"in_memory", s.in_memory}, {"read_only", s.read_only}, {"schema_version", s.schema_version},
       {"file_bytes", s.file_bytes}, {"kernel_count", s.kernel_count}, {"kernel_bytes", s.kernel_bytes},
       {"kernel_hits", s.kernel_hits}, {"tuning_runs", s.tuning_runs}, {"tuning_candidates", s.tuning_candidates},
       {"winners", s.winners}, {"by_arch", arch}, {"by_device", dev}};
}

void to_json(nlohmann::json& j, const VerifyReport& r) {
  nlohmann::json bad = nlohmann::json::array();
  for (const auto& b : r.bad) bad.push_back({{"key", b.key}, {"spec", b.spec}, {"arch", b.arch}, {"reason", b.reason}});
  j = {{"ok", r.ok()}, {"checked", r.checked}, {"bad", bad}, {"deleted", r.deleted}, {"integrity", r.integrity}};
}

void to_json(nlohmann::json& j, const RemovalReport& r) {
  j = {{"kernels", r.kernels}, {"kernel_bytes", r.kernel_bytes}, {"tuning_runs", r.tuning_runs},
       {"file_bytes_before", r.file_bytes_before}, {"file_bytes_after", r.file_bytes_after}};
}

void to_json(nlohmann::json& j, const ExportReport& r) {
  j = {{"path", r.path.string()}, {"kernels", r.kernels}, {"kernel_bytes", r.kernel_bytes},
       {"tuning_runs", r.tuning_runs}, {"file_bytes", r.file_bytes}};
}

}  // namespace flashbias::cache
