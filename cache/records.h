// Plain records that the cache store reads and writes: compiled kernels, tuning runs with every
// candidate's measurement, and the device fingerprint that keys tuning results. The runtime, the
// tuner, the CLI and the bundle exporter all speak these types; only cache/store.cpp knows SQL.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace flashbias {
struct KernelSource;
}

namespace flashbias::cache {

/// Receives the store's warnings (one line each, no trailing newline). The default prints
/// "flashbias: warning: ..." to stderr; tests install a sink that records them.
using WarningSink = std::function<void(const std::string&)>;

/// Versions as CUDA spells them: major * 1000 + minor * 10 (12.4 -> 12040), for NVRTC
/// (nvrtcVersion) and the driver (cuDriverGetVersion) alike, so that they sort numerically.
constexpr int cuda_version(int major, int minor) { return major * 1000 + minor * 10; }

/// One compiled kernel. `key` names the whole toolchain (see kernel_key); the other fields
/// describe the cubin so that the runtime can launch it without asking the compiler again.
struct KernelRecord {
  std::string key;              ///< kernel_key(...): 64 hex characters
  std::string spec;             ///< KernelSpec::str(), for humans and for find_kernel
  std::string arch;             ///< "sm_80", "sm_90a"
  int nvrtc_version = 0;        ///< cuda_version() of the NVRTC that compiled it
  int driver_version = 0;       ///< driver present at compile time; 0 when compiled without a GPU
  std::string templates_hash;   ///< generator's templates_hash() at compile time
  std::string options;          ///< NVRTC options, one per line (reproducibility, not lookup)
  std::string entry;            ///< extern "C" entry point
  int threads = 0;              ///< block size
  std::int64_t smem_bytes = 0;  ///< dynamic shared memory per CTA
  int registers = 0;            ///< ptxas: registers per thread
  int spill_store_bytes = 0;    ///< ptxas: spill stores
  int spill_load_bytes = 0;     ///< ptxas: spill loads
  int stack_bytes = 0;          ///< ptxas: stack frame
  double compile_ms = 0;        ///< NVRTC wall time
  std::vector<std::uint8_t> cubin;
  std::string cubin_sha256;     ///< set by the store on write; verified by it on every load
  std::int64_t cubin_bytes = 0; ///< set by the store; filled by list_kernels without the blob
  std::int64_t created_at = 0;  ///< unix seconds; 0 on write means "now"
  std::int64_t last_used_at = 0;
  std::int64_t hits = 0;        ///< loads served from the store
};

/// The cache key of a kernel: SHA-256 hex over (generated source, NVRTC options, NVRTC version,
/// arch, templates hash), each field length-prefixed so that no two inputs collide by shifting
/// bytes between fields. The source already embeds the templates; the templates hash is added so
/// that a generator change that keeps the text but changes its meaning still misses. The driver
/// is deliberately not in the key: a bundle is compiled where no driver exists, and a cubin the
/// driver refuses fails cuModuleLoadData, after which the runtime calls Store::erase_kernel.
std::string kernel_key(std::string_view source, const std::vector<std::string>& options,
                       int nvrtc_version, std::string_view arch, std::string_view templates_hash);

/// kernel_key for a generated kernel: its source and options, its spec's arch and the
/// generator's templates_hash().
std::string kernel_key(const KernelSource& source, int nvrtc_version);

/// How one tuning candidate ended (CUTLASS profiler's Disposition). Only `passed` can win.
enum class Outcome : std::uint8_t {
  passed = 0,          ///< compiled, launched, matched the reference, timed
  incorrect = 1,       ///< ran but differed from the reference (reason says by how much)
  compile_failed = 2,  ///< NVRTC rejected it (reason carries the log's first error)
  launch_failed = 3,   ///< the driver refused to load or launch it
  not_supported = 4,   ///< a legality rule or the ptxas report (spills, smem) excluded it
};
const char* to_string(Outcome o) noexcept;       ///< "passed", "compile_failed", ...
Outcome parse_outcome(std::string_view s);       ///< inverse of to_string; throws Error

/// One measured (or rejected) tile configuration of a tuning run.
struct TuningCandidate {
  std::string tile;                   ///< TileConfig::str()
  Outcome outcome = Outcome::passed;
  std::string reason;                 ///< empty for passed
  std::optional<double> median_ms;    ///< timing, present when the candidate was timed
  std::optional<double> min_ms;       ///< spread: fastest repeat
  std::optional<double> max_ms;       ///< spread: slowest repeat
  int repeats = 0;                    ///< timed repeats behind median/min/max
  std::optional<double> compile_ms;   ///< absent when it never reached the compiler
  std::optional<double> max_error;    ///< largest error against the reference, when checked
  bool operator==(const TuningCandidate&) const = default;
};

/// What makes one GPU model's timings reusable: a winner on one model, or under another driver,
/// is not reused.
struct DeviceFingerprint {
  std::string name;        ///< cuDeviceGetName, e.g. "NVIDIA H100 80GB HBM3"
  int sm_count = 0;        ///< multiprocessors
  int cc_major = 0;        ///< compute capability
  int cc_minor = 0;
  int driver_version = 0;  ///< cuda_version() of cuDriverGetVersion
  bool operator==(const DeviceFingerprint&) const = default;
  /// Stable text form, the tuning tables' device key: "NVIDIA H100 80GB HBM3|sm132|cc9.0|drv12040".
  std::string str() const;
  /// Inverse of str(); the name may itself contain '|'. Throws Error(invalid_argument).
  static DeviceFingerprint parse(std::string_view s);
};

/// One tuning session of one (device, problem key, shape bucket): every candidate and the winner.
struct TuningRun {
  std::int64_t id = 0;                      ///< assigned by the store
  DeviceFingerprint device;
  std::string problem_key;                  ///< ProblemKey::str()
  std::string arch;                         ///< the key's arch ("sm_90a"): bundles filter on it
  std::string bucket;                       ///< ShapeBucket string
  std::string strategy;                     ///< "exhaustive", "halving", ...
  std::string templates_hash;               ///< generator state the timings belong to
  int nvrtc_version = 0;
  std::vector<TuningCandidate> candidates;  ///< in the order they were tried
  /// The winning TileConfig::str(); must name a `passed` candidate. Empty when none passed.
  std::optional<std::string> winner_tile;
  double tuning_seconds = 0;                ///< wall time of the whole run
  std::int64_t created_at = 0;              ///< unix seconds; 0 on write means "now"
  std::string created_by;                   ///< library version; empty on write means this one
};

/// The answer to "which tile for this device, key and bucket": the newest run's winner.
struct TuningWinner {
  std::string tile;              ///< TileConfig::str()
  double median_ms = 0;
  std::int64_t run_id = 0;
  std::string strategy;
  double tuning_seconds = 0;
  std::int64_t created_at = 0;
};

/// A winner with the triple it answers (Store::list_winners).
struct WinnerEntry {
  std::string device;       ///< DeviceFingerprint::str()
  std::string problem_key;
  std::string arch;
  std::string bucket;
  TuningWinner winner;
  int candidates = 0;       ///< candidates recorded in that run
  int passed = 0;           ///< of which passed
};

}  // namespace flashbias::cache
