// Issue 4's acceptance: a tunable knob added to a template (a parameter with a default, a value
// array in its Knobs table, a rule) reaches the manifest listing that `flashbias gen --list`
// prints, the manifest JSON, and the tuner's search space with no other code change.
//
// The first half runs the manifest tool on a scratch copy of templates/ with a knob kSplitK added
// (the real templates are only read). The second half checks, on the real build, that the
// generator's search space is exactly the manifest's: enumerate_tiles() is the product of every
// knob's values filtered by the template's host rules and the shared-memory limit, and TileConfig
// spells and parses every manifest knob.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "flashbias/manifest.gen.h"
#include "generator/kernel_source.h"
#include "generator/knobs.h"
#include "generator/variants.h"

#if !defined(FLASHBIAS_MANIFEST_TOOL_PATH) || !defined(FLASHBIAS_TEMPLATES_DIR)
#error "tools/manifest/CMakeLists.txt wires the tool's path into the test target"
#endif

namespace fs = std::filesystem;
namespace mf = flashbias::manifest;
using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Insert `text` at the first occurrence of `anchor` (after it, or before it when `before`).
void insert_at(std::string& s, const std::string& anchor, const std::string& text, bool before = false) {
  const auto at = s.find(anchor);
  INFO("anchor not found in the scratch copy of sm80/fwd_kernel.cuh: " << anchor);
  REQUIRE(at != std::string::npos);
  s.insert(before ? at : at + anchor.size(), text);
}

struct ScratchManifest {
  int status = -1;
  std::string output, listing, header;
  nlohmann::json json;
};

/// Copies templates/ to a scratch folder, adds the knob kSplitK to the sm80 forward template the
/// way templates/README.md says (parameter + value array + rule), and runs the manifest tool on
/// the copy as the build does.
ScratchManifest manifest_with_split_k() {
  const fs::path root = fs::temp_directory_path() / ("flashbias_knob_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  const fs::path tpl = root / "templates";
  fs::create_directories(root);
  fs::copy(FLASHBIAS_TEMPLATES_DIR, tpl, fs::copy_options::recursive);

  const fs::path kernel = tpl / "sm80" / "fwd_kernel.cuh";
  std::string src = slurp(kernel);
  // 1. The template parameter, with a default: last in the parameter list of the entry.
  const std::string entry = "struct FLASHBIAS_KERNEL(\"fwd\", \"sm80\")";
  const auto entry_at = src.find(entry);
  REQUIRE(entry_at != std::string::npos);
  const auto close = src.rfind('>', entry_at);
  REQUIRE(close != std::string::npos);
  src.insert(close, ", int kSplitK = 1");
  // 2. Its candidate values in the Knobs table.
  insert_at(src, "struct FwdKnobs {", "\n  static constexpr int kSplitK[] = {1, 2};");
  // 3. A rule with a message.
  insert_at(src, "using Knobs = FwdKnobs;",
            "\n  static_assert(kSplitK == 1 || kBlockN % (kSplitK * 16) == 0, "
            "\"split_k needs whole 16-column steps of block_n per split\");");
  std::ofstream(kernel, std::ios::binary | std::ios::trunc) << src;

  std::vector<std::string> files;
  for (const auto& f : fs::recursive_directory_iterator(tpl))
    if (f.path().extension() == ".cuh") files.push_back(f.path().string());
  std::sort(files.begin(), files.end());

  const fs::path out = root / "out";
  fs::create_directories(out);
  std::string cmd = std::string("'") + FLASHBIAS_MANIFEST_TOOL_PATH + "' --root '" + tpl.string() + "' --json '" +
                    (out / "manifest.json").string() + "' --listing '" + (out / "manifest.txt").string() +
                    "' --header '" + (out / "manifest.gen.h").string() + "'";
  for (const auto& f : files) cmd += " '" + f + "'";
  cmd += " 2>&1";

  ScratchManifest r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.output.append(buf, n);
  const int raw = ::pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  if (fs::exists(out / "manifest.json")) r.json = nlohmann::json::parse(slurp(out / "manifest.json"));
  r.listing = slurp(out / "manifest.txt");
  r.header = slurp(out / "manifest.gen.h");
  fs::remove_all(root);
  return r;
}

const nlohmann::json* fwd_sm80(const nlohmann::json& j) {
  for (const auto& e : j["entries"])
    if (e["direction"] == "fwd" && e["family"] == "sm80") return &e;
  return nullptr;
}

}  // namespace

TEST_CASE("knob added to a scratch copy of the templates: listing, JSON and header show it", "[cpu][manifest]") {
  const mf::EntryInfo* real = mf::find_entry("fwd", "sm80");
  REQUIRE(real != nullptr);
  if (real->find_knob("kSplitK")) {
    WARN("the real template already declares kSplitK: nothing to add");
    return;
  }

  const ScratchManifest r = manifest_with_split_k();
  INFO(r.output);
  REQUIRE(r.status == 0);

  // The listing (what `flashbias gen --list` prints in a build of these templates).
  CHECK_THAT(r.listing, Contains("int kSplitK = 1") && Contains("knob {1, 2}"));
  CHECK_THAT(r.listing, Contains("split_k needs whole 16-column steps of block_n per split"));
  // The generated header: the knob's values and its rule as a host function.
  CHECK_THAT(r.header, Contains("knob_kSplitK = {1, 2}"));

  // The JSON: the real knobs unchanged, then kSplitK, the last template parameter.
  const nlohmann::json* e = fwd_sm80(r.json);
  REQUIRE(e != nullptr);
  const nlohmann::json real_json = nlohmann::json::parse(mf::kJson);
  const nlohmann::json* before = fwd_sm80(real_json);
  REQUIRE(before != nullptr);
  REQUIRE((*e)["knobs"].size() == (*before)["knobs"].size() + 1);
  for (std::size_t i = 0; i < (*before)["knobs"].size(); ++i) {
    CHECK((*e)["knobs"][i]["name"] == (*before)["knobs"][i]["name"]);
    CHECK((*e)["knobs"][i]["values"] == (*before)["knobs"][i]["values"]);
  }
  const auto& knob = (*e)["knobs"].back();
  CHECK(knob["name"] == "kSplitK");
  CHECK(knob["values"] == nlohmann::json::array({1, 2}));
  const auto& param = (*e)["params"].back();
  CHECK(param["name"] == "kSplitK");
  CHECK(param["knob"] == true);
  CHECK(param["default_value"] == 1);
  CHECK(knob["param"] == (*e)["params"].size() - 1);
  bool rule_found = false;
  for (const auto& rule : (*e)["rules"])
    if (rule["message"] == "split_k needs whole 16-column steps of block_n per split") {
      rule_found = true;
      CHECK(rule["host_evaluable"] == true);
      CHECK(rule["params"] == nlohmann::json::array({"kBlockN", "kSplitK"}));
    }
  CHECK(rule_found);
  // How TileConfig would spell it: "bm128_bn64_w4_s1_splitk2", parse("splitk=2").
  CHECK(knob_spelling("kSplitK") == "splitk");
}

// ---- the real build: the search space is the manifest's ----------------------------------------

namespace {

/// The manifest's generic argument list for (key, knob values), built from the entry's parameter
/// names without the generator's help.
std::vector<long long> manifest_args(const mf::EntryInfo& e, const ProblemKey& key,
                                     const std::vector<long long>& knob_values) {
  std::vector<long long> a(e.params.size(), 0);
  for (std::size_t i = 0; i < e.params.size(); ++i) {
    const auto& p = e.params[i];
    if (p.knob >= 0) a[i] = knob_values[static_cast<std::size_t>(p.knob)];
    else if (p.name == "kHeadDim") a[i] = key.head_dim;
    else if (p.name == "kRank") a[i] = key.rank;
    else if (p.name == "kCausal") a[i] = key.mask == MaskKind::causal;
    else if (p.name == "kQkvAlign") a[i] = key.qkv_align;
    else if (p.name == "kBiasAlign") a[i] = key.rank > 0 ? key.bias_align : 16;
    else if (p.has_default_value) a[i] = p.default_value;
  }
  return a;
}

/// Product of every knob's values in manifest order (last fastest), kept where the template's
/// host rules hold and shared memory fits.
std::vector<TileConfig> expected_tiles(const mf::EntryInfo& e, const ProblemKey& key, std::size_t smem_limit) {
  std::vector<TileConfig> out;
  std::vector<long long> values(e.knobs.size());
  auto rec = [&](auto&& self, std::size_t i) -> void {
    if (i == e.knobs.size()) {
      if (e.first_violation(manifest_args(e, key, values))) return;
      TileConfig t;
      for (std::size_t k = 0; k < e.knobs.size(); ++k) t.set(e.knobs[k].name, int(values[k]));
      if (smem_limit && fwd_smem_bytes(key, t) > smem_limit) return;
      out.push_back(t);
      return;
    }
    for (long long v : e.knobs[i].values) {
      values[i] = v;
      self(self, i + 1);
    }
  };
  rec(rec, 0);
  return out;
}

ProblemKey make_key(int d, int r, MaskKind mask, DType dt = DType::f16, int qkv_align = 16, int bias_align = 16) {
  ProblemKey k;
  k.head_dim = d;
  k.rank = r;
  k.mask = mask;
  k.dtype = dt;
  k.qkv_align = qkv_align;
  k.bias_align = bias_align;
  return k;
}

}  // namespace

TEST_CASE("enumerate_tiles is the product of the manifest's knob values filtered by its rules", "[cpu][manifest]") {
  const mf::EntryInfo* e = mf::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  const KnobSpace& ks = fwd_knob_space(Arch{});
  std::size_t product = 1;
  for (const auto& k : e->knobs) product *= k.values.size();
  CHECK(ks.size() == product);
  REQUIRE(ks.all.size() == e->knobs.size());
  for (std::size_t i = 0; i < e->knobs.size(); ++i) {
    CHECK(ks.all[i].first == e->knobs[i].name);
    CHECK(std::vector<long long>(ks.all[i].second.begin(), ks.all[i].second.end()) ==
          std::vector<long long>(e->knobs[i].values.begin(), e->knobs[i].values.end()));
  }

  std::vector<ProblemKey> keys;
  for (const auto& v : default_variants(Arch{})) keys.push_back(v.key);
  keys.push_back(make_key(8, 0, MaskKind::none));
  keys.push_back(make_key(8, 1, MaskKind::causal, DType::bf16, 16, 2));
  keys.push_back(make_key(40, 3, MaskKind::none, DType::f16, 16, 2));
  keys.push_back(make_key(24, 8, MaskKind::causal, DType::f16, 16, 16));
  keys.push_back(make_key(256, 128, MaskKind::causal, DType::bf16));
  keys.push_back(make_key(104, 24, MaskKind::none, DType::f16, 16, 16));
  for (const ProblemKey& key : keys)
    for (std::size_t limit : {std::size_t(0), default_smem_limit(Arch{}), std::size_t(48 * 1024)}) {
      INFO(key.str() << " smem limit " << limit);
      const auto got = enumerate_tiles(key, limit);
      const auto want = expected_tiles(*e, key, limit);
      std::vector<std::string> got_s, want_s;
      for (const auto& t : got) got_s.push_back(t.str());
      for (const auto& t : want) want_s.push_back(t.str());
      CHECK(got_s == want_s);
      CHECK(got == want);
    }
  // A key the rules refuse for every tile: head_dim 12 breaks "multiple of 8".
  CHECK(enumerate_tiles(make_key(12, 0, MaskKind::none), 0).empty());
}

TEST_CASE("legality_error reports the template's rule with the values it got", "[cpu][manifest]") {
  const ProblemKey key = make_key(64, 16, MaskKind::none);
  CHECK(legality_error(key, TileConfig{128, 64, 4, 1}).empty());
  CHECK(legality_error(key, TileConfig{96, 64, 4, 1}) ==
        "block_m must be a multiple of 16 * warps (each warp owns whole m16 tiles), got kBlockM = 96, kWarps = 4");
  CHECK_THAT(legality_error(make_key(12, 0, MaskKind::none), TileConfig{}),
             Contains("head_dim must be a multiple of 8") && Contains("got kHeadDim = 12"));
  // A knob that needs another: the portable forward's look-ahead loop needs the two-stage pipeline.
  REQUIRE(kernel_family(key) == "sm80");
  CHECK(legality_error(key, TileConfig::parse("bm=128,bn=64,w=4,s=2,ahead=1")).empty());
  CHECK_THAT(legality_error(key, TileConfig::parse("bm=128,bn=64,w=4,s=1,ahead=1")),
             Contains("ahead needs stages 2") && Contains("kStages = 1") && Contains("kAhead = 1"));
  // The device limit is the host's own check, not a template rule.
  CHECK_THAT(legality_error(key, TileConfig{128, 128, 8, 2}, 1024), Contains("over the 1024 bytes a block may use"));
  // The backward's own template rules (its warps own whole m16 tiles of keys and of queries).
  ProblemKey bwd = key;
  bwd.direction = Direction::bwd;
  CHECK(legality_error(bwd, TileConfig::parse("bm=64,bn=64,w=4,s=2")).empty());
  CHECK_THAT(legality_error(bwd, TileConfig::parse("bm=64,bn=32,w=4,s=1")),
             Contains("block_n must be a multiple of 16 * warps") && Contains("kBlockN = 32, kWarps = 4"));
  CHECK(legality_error(bwd, TileConfig::parse("bm=64,bn=64,w=4,s=1,split=4")).empty());
  ProblemKey bwd72 = make_key(72, 3, MaskKind::none);
  bwd72.direction = Direction::bwd;
  CHECK_THAT(legality_error(bwd72, TileConfig::parse("bm=64,bn=64,w=4,s=1,split=2")),
             Contains("head_dim must be a multiple of 8 * split") && Contains("kSplit = 2"));
  const KernelSource src = generate(KernelSpec{bwd, TileConfig::parse("bm=64,bn=64,w=4,s=2")});
  CHECK(src.entries.size() == 6);  // fp16 with a bias: dkdv and dq also without the residual
  CHECK_THAT(src.source, Contains("Kernel::template dkdv<false>(params)"));
  CHECK(src.entry == src.entries.front());
  CHECK_THAT(src.source, Contains("BwdKernel<flashbias::half_t, 64, 16, false, 16, 16, 64, 64, 4, 2, 1, 1>"));
}

TEST_CASE("a key no tile can serve is refused with the rule it breaks, not a shared-memory claim", "[cpu][manifest]") {
  // The heuristics fall back to the whole knob space; when nothing there is legal, the error names
  // the template's limit on the key (what `flashbias gen -d 33` reports), in both directions.
  auto refusal = [](const ProblemKey& key) {
    try {
      heuristic_tile(key, ShapeInfo{1, 4096, 4096}, default_smem_limit(key.arch));
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::unsupported);
      return std::string(e.what());
    }
    FAIL("heuristic_tile returned a tile for " << key.str());
    return std::string();
  };
  for (const char* arch : {"sm_80", "sm_90a"}) {
    for (Direction dir : {Direction::fwd, Direction::bwd}) {
      ProblemKey key = make_key(33, 0, MaskKind::none);
      key.arch = Arch::parse(arch);
      key.direction = dir;
      CHECK_THAT(refusal(key), Contains(key.str()) && Contains("head_dim must be a multiple of 8") &&
                                   Contains("got kHeadDim = 33"));
      key = make_key(32, 200, MaskKind::none);
      key.arch = Arch::parse(arch);
      key.direction = dir;
      CHECK_THAT(refusal(key), Contains("rank must be in [0, 128]") && Contains("got kRank = 200"));
      key = make_key(32, 3, MaskKind::none);
      key.arch = Arch::parse(arch);
      key.direction = dir;
      key.bias_align = 16;  // a row of 3 two-byte elements cannot be 16-byte aligned
      CHECK_THAT(refusal(key), Contains("bias_align must divide a row of rank elements"));
    }
  }
}

TEST_CASE("generate spells FwdKernel's arguments in the manifest's parameter order", "[cpu][manifest]") {
  const mf::EntryInfo* e = mf::find_entry("fwd", "sm80");
  REQUIRE(e != nullptr);
  const ProblemKey key = make_key(128, 16, MaskKind::causal, DType::bf16);
  const TileConfig t{128, 64, 8, 2};
  const std::string src = generate(KernelSpec{key, t}).source;
  std::string args;
  for (std::size_t i = 0; i < e->params.size(); ++i) {
    const auto& p = e->params[i];
    std::string v;
    if (p.kind == mf::ParamKind::type) v = "flashbias::bf16_t";
    else if (p.name == "kHeadDim") v = "128";
    else if (p.name == "kRank") v = "16";
    else if (p.name == "kCausal") v = "true";
    else if (p.name == "kQkvAlign" || p.name == "kBiasAlign") v = "16";
    else v = std::to_string(*t.get(p.name));
    args += (i ? ", " : "") + v;
  }
  CHECK_THAT(src, Contains(std::string(e->name) + "<" + args + ">"));
  CHECK_THAT(src, Contains("#include \"" + std::string(e->file) + "\""));
}

TEST_CASE("TileConfig spells and parses every knob of the manifest", "[cpu][manifest]") {
  CHECK(TileConfig{}.str() == "bm128_bn64_w4_s1");
  CHECK(TileConfig::parse("bm=64,bn=32,w=4,s=2") == TileConfig{64, 32, 4, 2});
  CHECK(TileConfig::parse("bm64_bn32_w4_s2") == TileConfig{64, 32, 4, 2});
  CHECK(TileConfig::parse("block_m=64,kWarps=4") == TileConfig{64, 64, 4, 1});
  CHECK(knob_spelling("kSplitK") == "splitk");
  CHECK(knob_spelling("kUseTma") == "usetma");
  CHECK(knob_spelling("k2") == "k2");

  // The error names every knob the manifest declares.
  try {
    (void)TileConfig::parse("bm=64,nope=3");
    FAIL("accepted");
  } catch (const Error& err) {
    CHECK(err.code() == ErrorCode::invalid_argument);
    CHECK_THAT(std::string(err.what()), Contains("unknown knob 'nope'") && Contains("bm, bn, w, s"));
    for (const auto& k : mf::find_entry("fwd", "sm80")->knobs)
      CHECK_THAT(std::string(err.what()), Contains(find_tile_knob(k.name)->spelling));
  }
  CHECK_THROWS_AS(TileConfig::parse("bm=0"), Error);
  CHECK_THROWS_AS(TileConfig::parse("bm"), Error);

  // Every knob maps to one TileKnob; the named ones to their fields.
  for (const auto& k : mf::find_entry("fwd", "sm80")->knobs) {
    const TileKnob* t = find_tile_knob(k.name);
    REQUIRE(t != nullptr);
    CHECK(t->name == k.name);
  }
  CHECK(find_tile_knob("kBlockM")->field == &TileConfig::block_m);
  CHECK(find_tile_knob("kStages")->field == &TileConfig::stages);

  // Round trips over the whole space, every extra knob at each of its values; extras at the
  // template default are omitted, so such tiles keep the four-knob spelling.
  const ProblemKey key = make_key(64, 16, MaskKind::none);
  const auto tiles = enumerate_tiles(key, 0);
  REQUIRE(!tiles.empty());
  for (const TileConfig& t : tiles) {
    INFO(t.str());
    CHECK(TileConfig::parse(t.str()) == t);
    CHECK(hash_value(TileConfig::parse(t.str())) == hash_value(t));
    for (const auto& [name, value] : t.extra) {
      CHECK(find_tile_knob(name)->default_value != std::optional<long long>(value));
      CHECK_THAT(t.str(), Contains("_" + find_tile_knob(name)->spelling + std::to_string(value)));
      // The "name=value" form says the same.
      TileConfig u = TileConfig::parse(fmt::format("bm={},bn={},w={},s={},{}={}", t.block_m, t.block_n, t.warps,
                                                   t.stages, find_tile_knob(name)->spelling, value));
      for (const auto& [n2, v2] : t.extra) u.set(n2, v2);
      CHECK(u == t);
    }
  }
  for (const auto& [name, values] : fwd_knob_space(Arch{}).extra) {
    const TileKnob* k = find_tile_knob(name);
    REQUIRE(k != nullptr);
    CHECK(k->field == nullptr);
    for (int v : values) {
      TileConfig t;
      t.set(name, v);
      CHECK(t.get(name) == v);
      CHECK(t.extra.empty() == (k->default_value == std::optional<long long>(v)));
      CHECK(TileConfig::parse(t.str()) == t);
    }
  }
}

TEST_CASE("nearest_first orders tiles by how many knobs differ from the centre", "[cpu][manifest]") {
  for (const ProblemKey& key : {make_key(32, 16, MaskKind::none), make_key(64, 3, MaskKind::causal, DType::bf16, 16, 2)}) {
    INFO(key.str());
    const std::vector<TileConfig> tiles = enumerate_tiles(key, default_smem_limit(key.arch));
    REQUIRE(tiles.size() > 10);
    const TileConfig center = heuristic_tile(key, ShapeInfo{1024, 384, 384}, default_smem_limit(key.arch));
    const std::vector<TileConfig> ordered = nearest_first(key, tiles, center);

    // A permutation of the input, the centre first.
    REQUIRE(ordered.size() == tiles.size());
    std::vector<std::string> a, b;
    for (const auto& t : tiles) a.push_back(t.str());
    for (const auto& t : ordered) b.push_back(t.str());
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    CHECK(a == b);
    REQUIRE(std::find(tiles.begin(), tiles.end(), center) != tiles.end());
    CHECK(ordered.front() == center);
    CHECK(knob_distance(key, center, center) == 0);

    // Distances never fall; within one distance the enumeration order stands.
    int neighbours = 0;
    for (std::size_t i = 1; i < ordered.size(); ++i) {
      const int d0 = knob_distance(key, ordered[i - 1], center), d1 = knob_distance(key, ordered[i], center);
      CHECK(d0 <= d1);
      if (d0 == d1) {
        const auto p0 = std::find(tiles.begin(), tiles.end(), ordered[i - 1]);
        const auto p1 = std::find(tiles.begin(), tiles.end(), ordered[i]);
        CHECK(p0 < p1);
      }
      neighbours += d1 == 1;
    }
    // Every legal tile one knob away is among the first, and the knob counted is the one changed.
    CHECK(neighbours > 0);
    for (const auto& [name, values] : knob_space(key).all)
      for (int v : values) {
        TileConfig t = center;
        t.set(name, v);
        const auto at = std::find(ordered.begin(), ordered.end(), t);
        if (at == ordered.end()) continue;  // illegal for this key
        CHECK(knob_distance(key, t, center) == (t == center ? 0 : 1));
        CHECK(at - ordered.begin() <= neighbours);
      }
  }
}
