#include "generator/kernel_source.h"

#include <fmt/format.h>

#include <algorithm>

#include "generator/knobs.h"

namespace flashbias {

namespace detail {
// Generated at build time by cmake/embed_files.cmake from templates/.
const std::vector<std::pair<std::string_view, std::string_view>>& embedded_template_files();
const char* embedded_templates_sha256();
}  // namespace detail

namespace {

// Bumped whenever this file changes what it emits for an unchanged template, so caches keyed on
// templates_hash() never serve code from an older generator.
constexpr int kGeneratorVersion = 7;

// Mirrors of the template's layout constants (templates/sm80/fwd_kernel.cuh). The generated
// source static_asserts that both sides agree, so a drift fails the compile, not the launch.
constexpr int kRowPad = 8;

int round_up8(int v) { return (v + 7) / 8 * 8; }

}  // namespace

namespace {

// Mirrors templates/sm90/fwd_kernel.cuh's kSmemBytes (the generated source static_asserts it).
std::size_t sm90_fwd_smem_bytes(const ProblemKey& key, const TileConfig& t) {
  const std::size_t chunk_d = std::size_t(sm90_chunk_elems(key.head_dim));
  const std::size_t d_chunks = (std::size_t(key.head_dim) + chunk_d - 1) / chunk_d;
  const int rk = key.rank > 0 ? (key.rank + 15) / 16 * 16 : 0;
  const std::size_t chunk_r = std::size_t(sm90_chunk_elems(rk));
  const std::size_t r_chunks = key.rank > 0 ? (std::size_t(rk) + chunk_r - 1) / chunk_r : 0;
  const std::size_t bm = std::size_t(t.block_m), bn = std::size_t(t.block_n), st = std::size_t(t.stages);
  const std::size_t q = d_chunks * bm * chunk_d * 2 + r_chunks * bm * chunk_r * 2;
  const std::size_t stage = 2 * d_chunks * bn * chunk_d * 2 + r_chunks * bn * chunk_r * 2;
  return q + st * stage + 8 * (1 + 2 * st) + 1024;
}

}  // namespace

int sm90_chunk_elems(int width) { return width <= 16 ? 16 : width <= 32 ? 32 : 64; }

Sm90RegisterSplit sm90_register_split(const ProblemKey& key, const TileConfig& t) {
  Sm90RegisterSplit r;
  const int min_blocks = t.get("kMinBlocks").value_or(1);
  const int consumers = t.block_m / 64;
  r.threads = t.warps * 32;
  r.consumers = consumers;
  if (consumers == 1 && min_blocks == 1) return r;
  const int launch = (65536 / (r.threads * min_blocks)) / 8 * 8;
  const bool factor_tma = key.rank > 0 && key.bias_align == 16;
  // Mirrors FwdKernel::kProducerRegs: factor rows copied by the producer's threads (cp.async
  // for 4- or 8-byte aligned rows, loads and stores in small batches over the whole warpgroup
  // for 2-byte ones) need 32; TMA alone 24.
  r.producer = key.rank > 0 && !factor_tma ? 32 : 24;
  const int share = (launch * (t.warps / 4) - r.producer) / consumers / 8 * 8;
  r.consumer = std::min(share, 240);
  r.active = true;
  return r;
}

std::size_t fwd_smem_bytes(const ProblemKey& key, const TileConfig& t) {
  if (kernel_family(key) == "sm90") return sm90_fwd_smem_bytes(key, t);
  const bool bias = key.rank > 0;
  const std::size_t dstride = std::size_t(key.head_dim + kRowPad);
  const std::size_t rstride = std::size_t(round_up8(key.rank) + kRowPad);
  const std::size_t q = std::size_t(t.block_m) * dstride + (bias ? std::size_t(t.block_m) * rstride : 0);
  const std::size_t stage = 2 * std::size_t(t.block_n) * dstride + (bias ? std::size_t(t.block_n) * rstride : 0);
  return 2 * (q + std::size_t(t.stages) * stage);
}

BwdSmem bwd_smem_bytes(const ProblemKey& key, const TileConfig& t) {
  if (kernel_family(key) == "sm90") {
    // Mirrors templates/sm90/bwd_kernel.cuh: swizzled chunks of the head dim and the rank, block
    // tiles of block_m rows, step tiles of `step` rows (dkdv) and `dqstep` rows (dq; 0: `step`),
    // 1024 bytes of alignment slack.
    const std::size_t chunk_d = std::size_t(sm90_chunk_elems(key.head_dim));
    const std::size_t d_chunks = (std::size_t(key.head_dim) + chunk_d - 1) / chunk_d;
    const int rk = key.rank > 0 ? (key.rank + 15) / 16 * 16 : 0;
    const std::size_t chunk_r = std::size_t(sm90_chunk_elems(rk));
    const std::size_t r_chunks = key.rank > 0 ? (std::size_t(rk) + chunk_r - 1) / chunk_r : 0;
    const std::size_t bm = std::size_t(t.block_m), st = std::size_t(t.stages);
    const std::size_t step = std::size_t(t.get("kStep").value_or(64));
    const int dq_knob = t.get("kDqStep").value_or(0);
    const std::size_t dq_step = dq_knob != 0 ? std::size_t(dq_knob) : step;
    const std::size_t block_tiles = 2 * d_chunks * bm * chunk_d * 2 + r_chunks * bm * chunk_r * 2;
    auto step_tiles = [&](std::size_t rows) {
      return 2 * d_chunks * rows * chunk_d * 2 + r_chunks * rows * chunk_r * 2;
    };
    auto r1k = [](std::size_t v) { return (v + 1023) / 1024 * 1024; };
    // kTma: one mbarrier per stage and the block tile's.
    const std::size_t barriers = t.get("kTma").value_or(0) != 0 ? 8 * (st + 1) : 0;
    return BwdSmem{block_tiles + st * r1k(step_tiles(step) + 8 * step) + barriers + 1024,
                   block_tiles + st * r1k(step_tiles(dq_step)) + barriers + 1024};
  }
  // Mirrors BwdKernel's kDkdvSmemBytes / kDqSmemBytes (templates/sm80/bwd_kernel.cuh); the
  // generated source static_asserts the agreement.
  const bool bias = key.rank > 0;
  const std::size_t ds = std::size_t(key.head_dim + kRowPad);
  const std::size_t rs = bias ? std::size_t(round_up8(key.rank) + kRowPad) : 0;
  const std::size_t bm = std::size_t(t.block_m), bn = std::size_t(t.block_n), st = std::size_t(t.stages);
  BwdSmem out;
  out.dkdv = 2 * (2 * bn * ds + bn * rs) + st * (2 * (2 * bm * ds + bm * rs) + 8 * bm);
  out.dq = 2 * (2 * bm * ds + bm * rs + st * (2 * bn * ds + bn * rs)) + (bias ? 4 * bm * round_up8(key.rank) : 0);
  return out;
}

int bwd_slices(const ProblemKey& key, const TileConfig& t) {
  // Mirrors BwdKernel::kSlices (one slice on the sm90 family: no split knob).
  if (kernel_family(key) == "sm90") return 1;
  const int split = t.get("kSplit").value_or(1);
  return split + (key.rank > 0 && (split > 1 || key.rank > 32) ? 1 : 0);
}

std::size_t kernel_smem_bytes(const ProblemKey& key, const TileConfig& t) {
  if (key.direction == Direction::fwd) return fwd_smem_bytes(key, t);
  const BwdSmem b = bwd_smem_bytes(key, t);
  return std::max(b.dkdv, b.dq);
}

std::string legality_error(const ProblemKey& key, const TileConfig& t, std::size_t smem_limit) {
  // What the key itself must satisfy before any template is asked (not template rules: a
  // malformed key, or an arch no template family runs on).
  if (key.arch.sm < 80) return fmt::format("{} is older than sm_80", key.arch.name());
  auto align_ok = [](int a) { return a == 2 || a == 4 || a == 8 || a == 16; };
  if (!align_ok(key.qkv_align))
    return fmt::format("qkv_align must be 2, 4, 8 or 16 bytes, got {}", key.qkv_align);
  if (key.rank > 0 && !align_ok(key.bias_align))
    return fmt::format("bias_align must be 2, 4, 8 or 16 bytes, got {}", key.bias_align);

  // The template's own static_asserts, evaluated on the host from the manifest, with the same
  // words, so illegal pairs are refused (and recorded as not-supported by the tuner) before a
  // compiler runs. Rules the host cannot evaluate surface as NVRTC errors.
  const manifest::EntryInfo* entry = nullptr;
  std::vector<long long> args;
  try {
    entry = &kernel_entry(key);
    args = template_args(*entry, key, t);
  } catch (const Error& e) {
    return e.what();
  }
  if (const manifest::RuleInfo* r = entry->first_violation(args))
    return fmt::format("{}, got {}", r->message, rule_values(*entry, *r, args));

  // The sm90 forward's register rule depends on its factor path (TMA or lane copies, from
  // bias_align), which the manifest's host evaluation does not resolve: checked on the
  // generator's mirror of the split, with the template's words.
  if (key.direction == Direction::fwd && kernel_family(key) == "sm90") {
    const Sm90RegisterSplit split = sm90_register_split(key, t);
    if (split.active && split.consumer < 96)
      return fmt::format("block_m and min_blocks leave under 96 registers per consumer thread, got {}", split.consumer);
  }

  // The device's limit is no template rule: it depends on the GPU the kernel runs on.
  if (smem_limit > 0) {
    const std::size_t smem = kernel_smem_bytes(key, t);
    if (smem > smem_limit)
      return fmt::format("needs {} bytes of shared memory, over the {} bytes a block may use", smem, smem_limit);
  }
  return {};
}

KernelSource generate(const KernelSpec& spec) {
  const ProblemKey& k = spec.key;
  const TileConfig& t = spec.tile;
  if (std::string why = legality_error(k, t); !why.empty())
    throw Error(ErrorCode::unsupported, fmt::format("{}: {}", spec.str(), why));

  // The template arguments in the entry's own parameter order (the manifest's), so a parameter
  // added to the template, knob or not, is instantiated without a change here.
  const manifest::EntryInfo& entry = kernel_entry(k);
  const std::vector<long long> args = template_args(entry, k, t);
  std::string arg_list;
  for (std::size_t i = 0; i < entry.params.size(); ++i) {
    const manifest::ParamInfo& p = entry.params[i];
    std::string a = p.kind == manifest::ParamKind::type ? (k.dtype == DType::bf16 ? "flashbias::bf16_t" : "flashbias::half_t")
                    : p.type == "bool"                  ? (args[i] ? "true" : "false")
                                                        : std::to_string(args[i]);
    arg_list += (i ? ", " : "") + a;
  }

  KernelSource out;
  out.spec = spec;
  out.threads = t.warps * 32;
  if (k.direction == Direction::fwd && kernel_family(k) == "sm90") {
    const Sm90RegisterSplit split = sm90_register_split(k, t);
    out.entry = "flashbias_fwd";
    out.entries = {out.entry};
    out.smem_bytes = fwd_smem_bytes(k, t);
    out.source = fmt::format(
        R"(// Generated by FlashBias JIT (generator v{gen}) for {spec}
#include "{file}"

using Kernel = {name}<{args}>;
static_assert(Kernel::kSmemBytes == {smem}, "generator and template disagree on the shared memory size");
static_assert(Kernel::kThreads == {threads}, "generator and template disagree on the block size");
static_assert(Kernel::kConsumerRegs == {consumer_regs} && ({consumer_regs} == 0 || Kernel::kProducerRegs == {producer_regs}),
              "generator and template disagree on the register split");

// A fixed block size and kMinBlocks CTAs per SM: the register cap that setmaxnreg redistributes
// between the producer and consumer warpgroups. The parameter block holds the TMA descriptors, so it is
// __grid_constant__ (TMA reads them in place).
extern "C" __global__ void __launch_bounds__({threads}, Kernel::kMinBlocksPerSm) {entry}(const __grid_constant__ flashbias::Sm90FwdParams params) {{
  Kernel::run(params);
}}
)",
        fmt::arg("gen", kGeneratorVersion), fmt::arg("spec", spec.str()), fmt::arg("file", entry.file),
        fmt::arg("name", entry.name), fmt::arg("args", arg_list), fmt::arg("smem", out.smem_bytes),
        fmt::arg("threads", out.threads), fmt::arg("entry", out.entry),
        fmt::arg("consumer_regs", split.active ? split.consumer : 0), fmt::arg("producer_regs", split.producer));
  } else if (k.direction == Direction::fwd) {
    out.entry = "flashbias_fwd";
    out.entries = {out.entry};
    out.smem_bytes = fwd_smem_bytes(k, t);
    out.source = fmt::format(
        R"(// Generated by FlashBias JIT (generator v{gen}) for {spec}
#include "{file}"

using Kernel = {name}<{args}>;
static_assert(Kernel::kSmemBytes == {smem}, "generator and template disagree on the shared memory size");
static_assert(Kernel::kThreads == {threads}, "generator and template disagree on the block size");

// The template states how many CTAs per SM its registers must allow (its kMinBlocks knob).
extern "C" __global__ void __launch_bounds__({threads}, Kernel::kMinBlocksPerSm) {entry}(const flashbias::FwdParams params) {{
  Kernel::run(params);
}}
)",
        fmt::arg("gen", kGeneratorVersion), fmt::arg("spec", spec.str()), fmt::arg("file", entry.file),
        fmt::arg("name", entry.name), fmt::arg("args", arg_list), fmt::arg("smem", out.smem_bytes),
        fmt::arg("threads", out.threads), fmt::arg("entry", out.entry));
  } else {
    const BwdSmem smem = bwd_smem_bytes(k, t);
    const bool hi = bwd_has_hi_entries(k);
    // The sm90 family's dq and dkdv take the TMA descriptors too (Sm90BwdParams, zero without kTma).
    const char* tiled_params = kernel_family(k) == "sm90" ? "const __grid_constant__ flashbias::Sm90BwdParams"
                                                          : "const flashbias::BwdParams";
    out.entry = kBwdEntryDkdv;
    out.entries = {kBwdEntryDkdv, kBwdEntryDq, kBwdEntryPrep, kBwdEntryReduce};
    if (hi) {
      out.entries.emplace_back(kBwdEntryDkdvHi);
      out.entries.emplace_back(kBwdEntryDqHi);
    }
    out.smem_bytes = std::max(smem.dkdv, smem.dq);
    out.source = fmt::format(
        R"(// Generated by FlashBias JIT (generator v{gen}) for {spec}
#include "{file}"

using Kernel = {name}<{args}>;
static_assert(Kernel::kDkdvSmemBytes == {dkdv_smem}, "generator and template disagree on the dkdv shared memory size");
static_assert(Kernel::kDqSmemBytes == {dq_smem}, "generator and template disagree on the dq shared memory size");
static_assert(Kernel::kThreads == {threads}, "generator and template disagree on the block size");
static_assert(Kernel::kSlices == {slices}, "generator and template disagree on the output slices");

extern "C" __global__ void __launch_bounds__({threads}, Kernel::kMinBlocksPerSm) {dkdv}({tiled_params} params) {{
  Kernel::dkdv(params);
}}
extern "C" __global__ void __launch_bounds__({threads}, Kernel::kDqMinBlocksPerSm) {dq}({tiled_params} params) {{
  Kernel::dq(params);
}}
extern "C" __global__ void __launch_bounds__({threads}) {prep}(const flashbias::BwdParams params) {{
  Kernel::prep(params);
}}
extern "C" __global__ void __launch_bounds__({threads}) {reduce}(const flashbias::BwdParams params) {{
  Kernel::reduce(params);
}}
{hi_entries})",
        fmt::arg("gen", kGeneratorVersion), fmt::arg("spec", spec.str()), fmt::arg("file", entry.file),
        fmt::arg("name", entry.name), fmt::arg("args", arg_list), fmt::arg("dkdv_smem", smem.dkdv),
        fmt::arg("dq_smem", smem.dq), fmt::arg("threads", out.threads), fmt::arg("slices", bwd_slices(k, t)),
        fmt::arg("dkdv", kBwdEntryDkdv), fmt::arg("dq", kBwdEntryDq), fmt::arg("prep", kBwdEntryPrep),
        fmt::arg("reduce", kBwdEntryReduce),
        fmt::arg("hi_entries",
                 hi ? fmt::format(R"(// The factor gradients from the 16-bit dS alone (no residual product).
extern "C" __global__ void __launch_bounds__({threads}, Kernel::kMinBlocksPerSm) {dkdv}({tiled_params} params) {{
  Kernel::template dkdv<false>(params);
}}
extern "C" __global__ void __launch_bounds__({threads}, Kernel::kDqMinBlocksPerSm) {dq}({tiled_params} params) {{
  Kernel::template dq<false>(params);
}}
)",
                                  fmt::arg("threads", out.threads), fmt::arg("dkdv", kBwdEntryDkdvHi),
                                  fmt::arg("dq", kBwdEntryDqHi), fmt::arg("tiled_params", tiled_params))
                    : std::string()),
        fmt::arg("tiled_params", tiled_params));
  }
  out.options = {
      fmt::format("--gpu-architecture={}", k.arch.name()),
      "--std=c++17",
      // The templates carry their own PTX conversions and need no CUDA headers.
      "--device-as-default-execution-space",
  };
  return out;
}

bool bwd_has_hi_entries(const ProblemKey& key) {
  return key.direction == Direction::bwd && key.rank > 0 && key.dtype == DType::f16;
}

const std::vector<std::pair<std::string_view, std::string_view>>& embedded_templates() {
  return detail::embedded_template_files();
}

const std::string& templates_hash() {
  static const std::string h = fmt::format("{}-g{}", detail::embedded_templates_sha256(), kGeneratorVersion);
  return h;
}

}  // namespace flashbias
