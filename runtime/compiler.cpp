#include "runtime/compiler.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>

#include <fmt/format.h>

#include "runtime/log.h"
#include "runtime/nvrtc_api.h"

namespace flashbias {
namespace {

// Destroys the program on every exit path (errors throw).
class Program {
 public:
  explicit Program(const nvrtc::Api& api) : api_(api) {}
  ~Program() {
    if (prog_ != nullptr) api_.nvrtcDestroyProgram(&prog_);
  }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  nvrtcProgram* out() { return &prog_; }
  nvrtcProgram get() const { return prog_; }

 private:
  const nvrtc::Api& api_;
  nvrtcProgram prog_ = nullptr;
};

std::string program_log(const nvrtc::Api& api, nvrtcProgram prog) {
  std::size_t size = 0;
  if (api.nvrtcGetProgramLogSize(prog, &size) != NVRTC_SUCCESS || size == 0) return {};
  std::string log(size, '\0');
  if (api.nvrtcGetProgramLog(prog, log.data()) != NVRTC_SUCCESS) return {};
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log;
}

// Cleared when an NVRTC rejects --no-cache (versions before the compute cache existed).
std::atomic<bool> g_use_no_cache{true};

}  // namespace

CompiledKernel compile(const KernelSource& source) {
  const nvrtc::Api& api = nvrtc::api();
  const std::string key = source.spec.str();

  // Templates become in-memory headers: the generated source #includes them by these names,
  // and nothing is read from disk, so the compile sees exactly what templates_hash() names.
  const auto& templates = embedded_templates();
  std::vector<std::string> header_text, header_names;
  header_text.reserve(templates.size());
  header_names.reserve(templates.size());
  for (const auto& [name, text] : templates) {
    header_names.emplace_back(name);
    header_text.emplace_back(text);
  }
  std::vector<const char*> headers, names;
  for (std::size_t i = 0; i < templates.size(); ++i) {
    headers.push_back(header_text[i].c_str());
    names.push_back(header_names[i].c_str());
  }

  std::vector<std::string> options = source.options;
  if (std::find(options.begin(), options.end(), kPtxasVerboseOption) == options.end()) {
    options.emplace_back(kPtxasVerboseOption);
  }
  const bool caller_asked_no_cache = std::find(options.begin(), options.end(), kNoCacheOption) != options.end();
  const bool added_no_cache = !caller_asked_no_cache && g_use_no_cache.load(std::memory_order_relaxed);
  if (added_no_cache) options.emplace_back(kNoCacheOption);

  // A fresh program per attempt: NVRTC does not promise that a program compiles twice.
  const std::string file_name = source.entry + ".cu";
  std::unique_ptr<Program> prog;
  auto run = [&] {
    prog = std::make_unique<Program>(api);
    nvrtc::check(api.nvrtcCreateProgram(prog->out(), source.source.c_str(), file_name.c_str(),
                                        static_cast<int>(headers.size()), headers.data(), names.data()),
                 "nvrtcCreateProgram");
    std::vector<const char*> ptrs;
    for (const std::string& o : options) ptrs.push_back(o.c_str());
    return api.nvrtcCompileProgram(prog->get(), static_cast<int>(ptrs.size()), ptrs.data());
  };
  auto start = std::chrono::steady_clock::now();
  nvrtcResult result = run();
  if (result == NVRTC_ERROR_INVALID_OPTION && added_no_cache &&
      program_log(api, prog->get()).find(kNoCacheOption) != std::string::npos) {
    // An NVRTC without the compute cache: nothing to bypass. Retry once, remember for the process.
    g_use_no_cache.store(false, std::memory_order_relaxed);
    options.pop_back();
    start = std::chrono::steady_clock::now();
    result = run();
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::string nvrtc_log = program_log(api, prog->get());
  if (result != NVRTC_SUCCESS) {
    throw Error(ErrorCode::compile_failed,
                fmt::format("NVRTC {} failed to compile kernel {} (entry {}): {}\noptions: {}\nlog:\n{}", api.version(),
                            key, source.entry, api.nvrtcGetErrorString(result), fmt::join(options, " "), nvrtc_log));
  }

  CompiledKernel out;
  std::size_t cubin_size = 0;
  nvrtc::check(api.nvrtcGetCUBINSize(prog->get(), &cubin_size), "nvrtcGetCUBINSize");
  if (cubin_size == 0) {
    // NVRTC yields no cubin when the arch option is virtual (compute_XX): PTX only.
    throw Error(ErrorCode::compile_failed,
                fmt::format("NVRTC produced no cubin for {} (options: {}): the architecture must be a real "
                            "sm_XX, not compute_XX",
                            key, fmt::join(options, " ")));
  }
  out.cubin.resize(cubin_size);
  nvrtc::check(api.nvrtcGetCUBIN(prog->get(), out.cubin.data()), "nvrtcGetCUBIN");

  out.spec = source.spec;
  out.entry = source.entry;
  out.threads = source.threads;
  out.smem_bytes = source.smem_bytes;
  out.resources = kernel_resources(out.cubin, nvrtc_log, source.entry);
  // A module of several entries (the backward) reports its worst: the most registers, stack and
  // static shared memory of any entry, and the spills of all of them.
  for (std::size_t i = 1; i < source.entries.size(); ++i) {
    const KernelResources r = kernel_resources(out.cubin, nvrtc_log, source.entries[i]);
    KernelResources& a = out.resources;
    auto worst = [](int& x, int y) { x = (x < 0 || y < 0) ? -1 : std::max(x, y); };
    auto total = [](int& x, int y) { x = (x < 0 || y < 0) ? -1 : x + y; };
    worst(a.registers, r.registers);
    total(a.spill_store_bytes, r.spill_store_bytes);
    total(a.spill_load_bytes, r.spill_load_bytes);
    worst(a.stack_frame_bytes, r.stack_frame_bytes);
    worst(a.static_smem_bytes, r.static_smem_bytes);
    if (r.barriers >= 0) a.barriers = std::max(a.barriers, r.barriers);
    a.wgmma_serialized = a.wgmma_serialized || r.wgmma_serialized;
  }
  out.compile_ms = ms;
  out.nvrtc_version = api.version();
  out.log = std::move(nvrtc_log);
  if (!out.resources.complete()) {
    log(LogLevel::warn, "incomplete resource report for {} ({}): ptxas output format not recognised", key,
        out.resources.str());
  }
  log(LogLevel::info, "compiled {} in {:.1f} ms: {}", key, ms, out.resources.str());
  return out;
}

}  // namespace flashbias
