// Tests of the template manifest (tools/manifest): the tool on fixture templates (expected JSON or
// expected errors), the generated header's constexpr API (a header generated from the base
// fixture under flashbias::manifest_fixture), and the real templates' manifest against what the
// generator instantiates.
//
// Goldens: tests/tools/fixtures/<case>/expected.json. After an intended change of the tool's
// output, rerun with FLASHBIAS_UPDATE_GOLDENS=1 to rewrite them, and review the diff.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "flashbias/manifest.gen.h"
#include "flashbias/manifest_fixture.gen.h"
#include "generator/kernel_source.h"
#include "generator/variants.h"

#if !defined(FLASHBIAS_MANIFEST_TOOL_PATH) || !defined(FLASHBIAS_MANIFEST_FIXTURES_DIR)
#error "tools/manifest/CMakeLists.txt wires the tool's path into the test target"
#endif

namespace fs = std::filesystem;
namespace fx = flashbias::manifest_fixture;
namespace mf = flashbias::manifest;

namespace {

struct ToolRun {
  int status = -1;
  std::string output;   // stdout and stderr
  nlohmann::json json;  // null unless the tool wrote it
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Runs the tool on every .cuh of fixture `name`, with the real templates/ on the include path
/// (so the fixtures use the real FLASHBIAS_KERNEL macro from common/manifest.h).
ToolRun run_tool(const std::string& name) {
  const fs::path dir = fs::path(FLASHBIAS_MANIFEST_FIXTURES_DIR) / name;
  REQUIRE(fs::is_directory(dir));
  std::vector<std::string> files;
  for (const auto& f : fs::recursive_directory_iterator(dir))
    if (f.path().extension() == ".cuh") files.push_back(f.path().string());
  std::sort(files.begin(), files.end());
  REQUIRE(!files.empty());

  const fs::path out_dir = fs::temp_directory_path() / ("flashbias_manifest_test_" + std::to_string(::getpid()));
  fs::create_directories(out_dir);
  const fs::path json_path = out_dir / (name + ".json");
  fs::remove(json_path);

  std::string cmd = std::string("'") + FLASHBIAS_MANIFEST_TOOL_PATH + "' --root '" + dir.string() + "' -I'" +
                    FLASHBIAS_TEMPLATES_DIR + "' --json '" + json_path.string() + "'";
  for (const auto& f : files) cmd += " '" + f + "'";
  cmd += " 2>&1";

  ToolRun r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int raw = ::pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  if (fs::exists(json_path)) r.json = nlohmann::json::parse(read_file(json_path));
  fs::remove_all(out_dir);
  return r;
}

void check_golden(const std::string& name) {
  const ToolRun r = run_tool(name);
  INFO(r.output);
  REQUIRE(r.status == 0);
  const fs::path golden = fs::path(FLASHBIAS_MANIFEST_FIXTURES_DIR) / name / "expected.json";
  if (std::getenv("FLASHBIAS_UPDATE_GOLDENS")) {
    std::ofstream(golden) << r.json.dump(2) << "\n";
    WARN("rewrote " << golden.string());
  }
  const auto expected = nlohmann::json::parse(read_file(golden));
  INFO("actual:\n" << r.json.dump(2));
  CHECK(r.json == expected);
}

/// The tool must fail, write nothing, and say each of `needles`.
void check_error(const std::string& name, const std::vector<std::string>& needles) {
  const ToolRun r = run_tool(name);
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.json.is_null());
  CHECK(r.output.find("no manifest written") != std::string::npos);
  for (const auto& s : needles) {
    INFO("expected in the output: " << s);
    CHECK(r.output.find(s) != std::string::npos);
  }
}

const nlohmann::json& rule_with_message(const nlohmann::json& entry, const std::string& message) {
  for (const auto& r : entry["rules"])
    if (r["message"] == message) return r;
  FAIL("no rule with message: " << message);
  static const nlohmann::json none;
  return none;
}

}  // namespace

// ---- the tool on fixtures ----------------------------------------------------------------------

TEST_CASE("manifest tool: base fixture gives the expected manifest", "[cpu][manifest]") {
  check_golden("base");
}

TEST_CASE("manifest tool: static_asserts become rules with their messages", "[cpu][manifest]") {
  const ToolRun r = run_tool("base");
  INFO(r.output);
  REQUIRE(r.status == 0);
  REQUIRE(r.json["entries"].size() == 1);  // ops.cuh, given on its own too, declares no entry
  const auto& e = r.json["entries"][0];
  CHECK(e["name"] == "fixture::FwdKernel");
  CHECK(e["direction"] == "fwd");
  CHECK(e["family"] == "sm80");
  CHECK(e["rules"].size() == 7);

  const auto& tile = rule_with_message(e, "block_m must be a multiple of 16 * warps");
  CHECK(tile["condition"] == "kBlockM % (kWarps * 16) == 0");
  CHECK(tile["params"] == nlohmann::json::array({"kBlockM", "kWarps"}));
  CHECK(tile["host_evaluable"] == true);

  // Reads a type: only the device compiler can decide it.
  const auto& elem = rule_with_message(e, "elements are 16-bit");
  CHECK(elem["host_evaluable"] == false);
  CHECK(elem["params"] == nlohmann::json::array({"Element"}));

  // Reads a constexpr member: not host-evaluable, but its parameters are found through the member.
  const auto& smem = rule_with_message(e, "the tiles must fit in 160 KiB of shared memory");
  CHECK(smem["host_evaluable"] == false);
  CHECK(smem["members"] == nlohmann::json::array({"kSmemBytes"}));
  CHECK(smem["params"] == nlohmann::json::array({"kHeadDim", "kBlockM", "kBlockN", "kStages"}));
}

TEST_CASE("manifest tool: a parameter added with a knob array appears with its values", "[cpu][manifest]") {
  check_golden("param_added");
  const ToolRun r = run_tool("param_added");
  const auto& e = r.json["entries"][0];
  REQUIRE(e["params"].size() == 9);
  CHECK(e["params"][8]["name"] == "kSplits");
  CHECK(e["params"][8]["knob"] == true);
  const auto& knob = e["knobs"].back();
  CHECK(knob["name"] == "kSplits");
  CHECK(knob["values"] == nlohmann::json::array({1, 2, 4}));
}

TEST_CASE("manifest tool: a parameter removed disappears, with its rule", "[cpu][manifest]") {
  check_golden("param_removed");
  const ToolRun r = run_tool("param_removed");
  for (const auto& p : r.json["entries"][0]["params"]) CHECK(p["name"] != "kCausal");
}

TEST_CASE("manifest tool: a knob array naming no parameter is an error naming both", "[cpu][manifest]") {
  check_error("knob_renamed", {"knob array 'fixture::FwdKnobs::kBlockN' (sm80/fwd_kernel.cuh:17)",
                               "names no template parameter of 'fixture::FwdKernel' (sm80/fwd_kernel.cuh:24)",
                               "kTileN"});
}

TEST_CASE("manifest tool: a knob value out of a rule's range is an error", "[cpu][manifest]") {
  check_error("knob_out_of_range",
              {"lists kWarps = 3, which breaks the rule 'kBlockM % (kWarps * 16) == 0'",
               "\"block_m must be a multiple of 16 * warps\", sm80/fwd_kernel.cuh:28",
               "with every kBlockM in {64, 128}",
               "lists kBlockN = 40, which breaks the rule 'kBlockN % 16 == 0'",
               "2 error(s)"});
}

TEST_CASE("manifest tool: a value that no combination of rules allows is an error", "[cpu][manifest]") {
  check_error("rules_jointly_dead", {"lists kBlockN = 128", "'kBlockN * kStages <= 128'", "'kStages >= kBlockN / 64'",
                                     "no setting satisfies all of them at once"});
}

TEST_CASE("manifest tool: declaration mistakes are errors with their place", "[cpu][manifest]") {
  SECTION("a rule without a message") {
    check_error("rule_without_message", {"fwd_kernel.cuh:29: error: static_assert(kBlockN % 16 == 0)", "has no message"});
  }
  SECTION("a default that is not a candidate value") {
    check_error("default_not_candidate",
                {"the default 'kBlockN = 96'", "is not among the candidate values {32, 64, 128}"});
  }
  SECTION("defaults that break a rule") {
    check_error("defaults_break_rule", {"(kBlockM = 64, kWarps = 8) break the rule 'kBlockM % (kWarps * 16) == 0'"});
  }
  SECTION("two entries for one (direction, family)") {
    check_error("duplicate_entry", {"'fixture::FwdSplitKernel' is declared FLASHBIAS_KERNEL(\"fwd\", \"sm80\")",
                                    "and so is 'fixture::FwdKernel' (sm80/fwd_kernel.cuh:24)"});
  }
  SECTION("FLASHBIAS_KERNEL on a class that is not a template") {
    check_error("not_class_template", {"which is not a class template"});
  }
  SECTION("a family that is not an identifier") {
    check_error("bad_annotation", {"FLASHBIAS_KERNEL(\"fwd\", \"sm 80\")", "must be identifiers"});
  }
  SECTION("a template that does not compile") {
    check_error("parse_error", {"use of undeclared identifier 'undeclared_helper'",
                                "does not compile as CUDA device code",
                                "flashbias_manifest_prelude.h"});
  }
}

// ---- the generated header (from the base fixture) ----------------------------------------------

namespace {

constexpr fx::sm80::fwd::Values base_values() {
  fx::sm80::fwd::Values v{};
  v.kHeadDim = 64;
  v.kRank = 16;
  v.kCausal = false;
  v.kBlockM = 128;
  v.kBlockN = 64;
  v.kWarps = 4;
  v.kStages = 1;
  return v;
}

constexpr fx::sm80::fwd::Values with_warps(int w) {
  auto v = base_values();
  v.kWarps = w;
  return v;
}

constexpr fx::sm80::fwd::Values with_rank(int r) {
  auto v = base_values();
  v.kRank = r;
  return v;
}

}  // namespace

// Everything below is decided by the compiler: the header is usable in static_assert.
static_assert(fx::has_knob("fwd", "sm80", "kBlockM"));
static_assert(!fx::has_knob("fwd", "sm80", "kHeadDim"));  // a parameter, not a knob
static_assert(!fx::has_knob("bwd", "sm80", "kBlockM"));
static_assert(fx::knob_allows("fwd", "sm80", "kBlockN", 128));
static_assert(!fx::knob_allows("fwd", "sm80", "kBlockN", 96));
static_assert(fx::RequireKnobValue<"fwd", "sm80", "kWarps", 8>::ok);
static_assert(fx::sm80::fwd::legal(base_values()));
static_assert(!fx::sm80::fwd::legal(with_warps(16)));  // 128 % 256 != 0
static_assert(fx::sm80::fwd::first_violation(with_warps(16)) == &fx::sm80::fwd::rules[1]);
// static_cast<unsigned>(kRank) < 256u: the host function keeps the template's unsigned compare.
static_assert(fx::sm80::fwd::legal(with_rank(255)));
static_assert(!fx::sm80::fwd::legal(with_rank(-1)));
static_assert(fx::entries.size() == 1);
static_assert(fx::entries[0].params[4].name == "kBlockM" && fx::entries[0].params[4].knob == 0);

TEST_CASE("generated header: params, knobs and rules of the base fixture", "[cpu][manifest]") {
  const mf::EntryInfo* e = fx::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  CHECK(e->name == "fixture::FwdKernel");
  CHECK(e->knob_table == "fixture::FwdKnobs");

  std::vector<std::string> names;
  for (const auto& p : e->params) names.emplace_back(p.name);
  CHECK(names == std::vector<std::string>{"Element", "kHeadDim", "kRank", "kCausal", "kBlockM", "kBlockN", "kWarps",
                                          "kStages"});
  CHECK(e->params[0].kind == mf::ParamKind::type);
  CHECK(e->params[5].has_default_value);
  CHECK(e->params[5].default_value == 64);

  const mf::KnobInfo* bn = e->find_knob("kBlockN");
  REQUIRE(bn != nullptr);
  CHECK(std::vector<long long>(bn->values.begin(), bn->values.end()) == std::vector<long long>{32, 64, 128});
  CHECK(e->params[bn->param].name == "kBlockN");

  REQUIRE(e->rules.size() == 7);
  CHECK(e->rules[1].message == "block_m must be a multiple of 16 * warps");
  CHECK(e->rules[1].host_evaluable());
  CHECK_FALSE(e->rules[5].host_evaluable());  // sizeof(Element)
  CHECK(e->rules[5].not_host_evaluable_because.find("sizeof") != std::string_view::npos);

  // The generic form the tuner uses: one value per parameter (type slots ignored).
  const long long legal_args[] = {0, 64, 16, 0, 128, 64, 4, 1};
  const long long bad_args[] = {0, 64, 16, 1, 128, 16, 8, 1};  // causal with block_n 16
  CHECK(e->legal(legal_args));
  const mf::RuleInfo* why = e->first_violation(bad_args);
  REQUIRE(why != nullptr);
  CHECK(why->message == "causal tiles need block_n >= 32");

  // The embedded JSON is the golden of the base fixture.
  const auto golden =
      nlohmann::json::parse(read_file(fs::path(FLASHBIAS_MANIFEST_FIXTURES_DIR) / "base" / "expected.json"));
  CHECK(nlohmann::json::parse(fx::kJson) == golden);
  CHECK(fx::kListing.find("[device] sizeof(Element) == 2") != std::string_view::npos);
}

// ---- the real templates against the generator --------------------------------------------------

TEST_CASE("real manifest: the JSON copy and the header agree", "[cpu][manifest]") {
  const auto json = nlohmann::json::parse(read_file(FLASHBIAS_MANIFEST_JSON));
  CHECK(json == nlohmann::json::parse(mf::kJson));
  CHECK(json["schema"] == mf::kSchemaVersion);
}

TEST_CASE("real manifest: the generator's knob space is the template's", "[cpu][manifest]") {
  const mf::EntryInfo* e = mf::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  const flashbias::KnobSpace& ks = flashbias::fwd_knob_space(flashbias::Arch{});
  // TileConfig field <-> template knob: the pairing kernel_source.cpp spells out.
  const std::pair<const char*, const std::vector<int>*> fields[] = {
      {"kBlockM", &ks.block_m}, {"kBlockN", &ks.block_n}, {"kWarps", &ks.warps}, {"kStages", &ks.stages}};
  for (const auto& [knob, values] : fields) {
    INFO(knob);
    const mf::KnobInfo* k = e->find_knob(knob);
    REQUIRE(k != nullptr);
    CHECK(std::vector<long long>(k->values.begin(), k->values.end()) ==
          std::vector<long long>(values->begin(), values->end()));
  }
  // Every further knob of the template is in the knob space too, with its values.
  for (const auto& [knob, values] : ks.extra) {
    INFO(knob);
    const mf::KnobInfo* k = e->find_knob(knob);
    REQUIRE(k != nullptr);
    CHECK(std::vector<long long>(k->values.begin(), k->values.end()) ==
          std::vector<long long>(values.begin(), values.end()));
  }
  CHECK(e->knobs.size() == std::size(fields) + ks.extra.size());
}

namespace {

/// One value per parameter of the real sm80 forward entry, in the manifest's order, from the
/// ProblemKey and TileConfig the generator instantiates it with.
std::vector<long long> args_for(const mf::EntryInfo& e, const flashbias::ProblemKey& key,
                                const flashbias::TileConfig& t) {
  std::vector<long long> a(e.params.size(), 0);
  auto set = [&](std::string_view name, long long v) {
    const int i = e.param_index(name);
    REQUIRE(i >= 0);
    a[static_cast<std::size_t>(i)] = v;
  };
  set("kHeadDim", key.head_dim);
  set("kRank", key.rank);
  set("kCausal", key.mask == flashbias::MaskKind::causal);
  set("kQkvAlign", key.qkv_align);
  set("kBiasAlign", key.rank > 0 ? key.bias_align : 16);
  set("kBlockM", t.block_m);
  set("kBlockN", t.block_n);
  set("kWarps", t.warps);
  set("kStages", t.stages);
  // Knobs beyond the four named fields: the tile's value, or the template's default.
  for (const auto& k : e.knobs) {
    const std::optional<int> v = t.get(k.name);
    REQUIRE(v.has_value());
    set(k.name, *v);
  }
  return a;
}

/// The template arguments of `FwdKernel<...>` in a generated source.
std::vector<std::string> instantiation_args(const std::string& source) {
  const auto at = source.find("FwdKernel<");
  REQUIRE(at != std::string::npos);
  const auto end = source.find('>', at);
  std::vector<std::string> out;
  std::stringstream ss(source.substr(at + 10, end - at - 10));
  for (std::string s; std::getline(ss, s, ',');) {
    s.erase(0, s.find_first_not_of(' '));
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_CASE("real manifest: the generator instantiates the template in the manifest's parameter order",
          "[cpu][manifest]") {
  const mf::EntryInfo* e = mf::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  const flashbias::Arch arch{};
  for (const auto& v : flashbias::default_variants(arch)) {
    for (const flashbias::TileConfig& t : flashbias::enumerate_tiles(v.key, flashbias::default_smem_limit(arch))) {
      INFO(v.name << " " << t.str());
      const auto args = args_for(*e, v.key, t);
      // What the generator finds legal, the template's own rules find legal.
      const mf::RuleInfo* broken = e->first_violation(args);
      CHECK(broken == nullptr);
      if (broken) FAIL_CHECK("template rule broken: " << broken->message);

      const auto src = flashbias::generate(flashbias::KernelSpec{v.key, t}).source;
      const auto written = instantiation_args(src);
      REQUIRE(written.size() == e->params.size());
      for (std::size_t i = 0; i < e->params.size(); ++i) {
        if (e->params[i].kind == mf::ParamKind::type) continue;
        const std::string expect = e->params[i].type == "bool" ? (args[i] ? "true" : "false") : std::to_string(args[i]);
        INFO("parameter " << e->params[i].name);
        CHECK(written[i] == expect);
      }
    }
  }
}

TEST_CASE("real manifest: what the template's rules refuse, the generator refuses", "[cpu][manifest]") {
  const mf::EntryInfo* e = mf::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  const flashbias::Arch arch{};
  const flashbias::KnobSpace& ks = flashbias::fwd_knob_space(arch);
  for (const auto& v : flashbias::default_variants(arch))
    for (int bm : ks.block_m)
      for (int bn : ks.block_n)
        for (int w : ks.warps)
          for (int st : ks.stages) {
            const flashbias::TileConfig t{bm, bn, w, st};
            const mf::RuleInfo* broken = e->first_violation(args_for(*e, v.key, t));
            if (!broken) continue;
            INFO(v.name << " " << t.str() << ": " << broken->message);
            // The generator's sentence starts with the template's own words.
            const std::string why = flashbias::legality_error(v.key, t);
            CHECK(why.rfind(std::string(broken->message), 0) == 0);
          }
}

TEST_CASE("real manifest: the heuristic only picks candidate values the template's rules accept",
          "[cpu][manifest]") {
  const mf::EntryInfo* e = mf::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  const flashbias::Arch arch{};
  for (const auto& v : flashbias::default_variants(arch))
    for (std::int64_t seqlen : {1, 17, 113, 239, 4096}) {
      const flashbias::TileConfig t =
          flashbias::heuristic_tile(v.key, flashbias::ShapeInfo{1, seqlen, seqlen}, flashbias::default_smem_limit(arch));
      INFO(v.name << " seqlen " << seqlen << ": " << t.str());
      CHECK(e->find_knob("kBlockM")->allows(t.block_m));
      CHECK(e->find_knob("kBlockN")->allows(t.block_n));
      CHECK(e->find_knob("kWarps")->allows(t.warps));
      CHECK(e->find_knob("kStages")->allows(t.stages));
      CHECK(e->first_violation(args_for(*e, v.key, t)) == nullptr);
    }
}
