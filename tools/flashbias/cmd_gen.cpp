// `flashbias gen`: print a generated kernel's source, or compile it (no GPU needed) and print
// its resources. `--list` prints the template manifest: every kernel template, its parameters,
// knobs with their candidate values, and its rules.
#include <fmt/format.h>

#include "commands.h"
#include "generator/kernel_source.h"
#include "generator/problem_spec.h"
#include "generator/knobs.h"
#include "generator/variants.h"
#include "runtime/compiler.h"

namespace flashbias::cli {

namespace {

struct GenOptions {
  std::string arch = "sm_80";
  std::string dtype = "f16";
  int head_dim = 0;
  int rank = 0;
  std::string mask = "none";
  std::string direction = "fwd";
  std::string config;
  std::string emit = "source";
  int qkv_align = 16;
  int bias_align = 0;  // 0: the widest the rank allows
  long long seqlen = 4096;
  bool list = false;
};

}  // namespace

void add_gen(CLI::App& app, int& rc) {
  auto o = std::make_shared<GenOptions>();
  CLI::App* cmd = app.add_subcommand("gen", "Generate a kernel: print its source, or compile it and print its resources");
  cmd->add_option("--arch", o->arch, "target arch: sm_80, sm_86, sm_89, sm_90a, ...")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "f16 or bf16")->capture_default_str();
  cmd->add_option("--head-dim,-d", o->head_dim, "head dim D (multiple of 8, 8..256)");
  cmd->add_option("--rank,-r", o->rank, "bias rank R (0..128)")->capture_default_str();
  cmd->add_option("--mask", o->mask, "none or causal")->capture_default_str();
  cmd->add_option("--direction", o->direction, "fwd, or bwd (the backward's four kernels, one module)")
      ->check(CLI::IsMember({"fwd", "bwd"}))
      ->capture_default_str();
  cmd->add_option("--config", o->config, "tile config, e.g. bm=128,bn=64,w=4,s=2 (knobs: gen --list; default: the heuristic's)");
  cmd->add_option("--emit", o->emit, "source | resources")->check(CLI::IsMember({"source", "resources"}))->capture_default_str();
  cmd->add_option("--qkv-align", o->qkv_align, "alignment class of Q/K/V/O rows in bytes (16, 8, 4, 2)")->capture_default_str();
  cmd->add_option("--bias-align", o->bias_align, "alignment class of factor rows in bytes (default: widest the rank allows)");
  cmd->add_option("--seqlen", o->seqlen, "sequence length the heuristic tile is chosen for")->capture_default_str();
  cmd->add_flag("--list", o->list, "print the template manifest (templates, parameters, knobs and values, rules) and exit");
  cmd->callback([o, &rc] {
    const Arch arch = Arch::parse(o->arch);
    if (o->list) {
      // The template manifest as the build extracted it from templates/ (tools/manifest): every
      // kernel template, its parameters, knobs with their values, and rules. Then how --config
      // spells each knob, and the size of the space the tuner searches on this arch.
      fmt::print("{}", manifest::kListing);
      if (!manifest::kListing.ends_with('\n')) fmt::print("\n");
      std::string spellings;
      for (const TileKnob& k : tile_knobs()) {
        spellings += fmt::format("{}{}={}", spellings.empty() ? "" : ", ", k.spelling, k.name);
      }
      fmt::print("\n--config knobs: {}\n", spellings);
      for (Direction dir : {Direction::fwd, Direction::bwd}) {
        const KnobSpace& ks = knob_space(arch, dir);
        fmt::print("{} search space on {}: {} tile configs (product of {} knobs), pruned per key by the [host] rules "
                   "and shared memory\n",
                   to_string(dir), arch.name(), ks.size(), ks.all.size());
      }
      rc = 0;
      return;
    }
    if (o->head_dim == 0) throw Error(ErrorCode::invalid_argument, "--head-dim is required (a multiple of 8 in [8, 256])");
    ProblemKey key;
    key.arch = arch;
    key.dtype = parse_dtype(o->dtype);
    key.head_dim = o->head_dim;
    key.rank = o->rank;
    key.mask = parse_mask(o->mask);
    key.direction = o->direction == "bwd" ? Direction::bwd : Direction::fwd;
    key.qkv_align = o->qkv_align;
    key.bias_align = o->rank > 0 ? (o->bias_align ? o->bias_align
                                                   : dense_problem_key(ProblemSpec{.rank = o->rank}, arch).bias_align)
                                   : 16;
    const std::size_t smem_limit = default_smem_limit(arch);
    TileConfig tile = o->config.empty()
                          ? heuristic_tile(key, ShapeInfo{1, o->seqlen, o->seqlen}, smem_limit)
                          : TileConfig::parse(o->config);
    const KernelSource src = generate(KernelSpec{key, tile});
    if (o->emit == "source") {
      fmt::print("{}", src.source);
      fmt::print("// NVRTC options:");
      for (const auto& opt : src.options) fmt::print(" {}", opt);
      fmt::print("\n// entry points:");
      for (const auto& e : src.entries) fmt::print(" {}", e);
      fmt::print("\n// launch: {} threads, {} bytes of dynamic shared memory\n", src.threads, src.smem_bytes);
      rc = 0;
      return;
    }
    const CompiledKernel ck = compile(src);
    fmt::print("kernel     {}\n", src.spec.str());
    fmt::print("threads    {}\n", ck.threads);
    fmt::print("smem       {} bytes dynamic\n", ck.smem_bytes);
    fmt::print("resources  {}{}\n", ck.resources.str(), src.entries.size() > 1 ? " (worst over the entries)" : "");
    if (src.entries.size() > 1) {
      for (const auto& e : src.entries)
        fmt::print("  {:<22} {}\n", e, kernel_resources(ck.cubin, ck.log, e).str());
    }
    fmt::print("cubin      {} bytes (NVRTC {})\n", ck.cubin.size(), ck.nvrtc_version);
    fmt::print("compile    {:.0f} ms\n", ck.compile_ms);
    if (ck.resources.spills()) fmt::print("warning: the kernel spills registers to local memory\n");
    if (ck.resources.wgmma_serialized) {
      fmt::print("warning: ptxas serialised wgmma instructions:\n");
      for (const std::string_view note : wgmma_serialization_notes(ck.log)) fmt::print("  {}\n", note);
    }
    rc = 0;
  });
}

}  // namespace flashbias::cli
