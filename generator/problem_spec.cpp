#include "generator/problem_spec.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <system_error>

#include <fmt/format.h>

#include "generator/problem_key.h"

namespace flashbias {
namespace {

// Kernel parameters hold batch, heads and sequence lengths as 32-bit ints (templates/common/params.h).
constexpr std::int64_t kMaxExtent = std::numeric_limits<std::int32_t>::max();
// Head dims the sm80 template supports: mma k-steps and 16-byte rows need multiples of 8.
constexpr std::int64_t kMinHeadDim = 8, kMaxHeadDim = 256, kHeadDimStep = 8;
constexpr std::int64_t kMaxRank = 128;
// Element offsets are 64-bit; stay far from overflow in B*N*H*D and in byte counts.
constexpr double kMaxElements = 0x1p60;

constexpr std::string_view kKeys = "b, h, n, nq, nk, d, r, mask, dtype, scale, qb, kb";
constexpr std::string_view kLayouts =
    "bnhr (per batch and head), 1nhr (shared over batch), bn1r (shared over heads), 1n1r (shared over both)";

[[noreturn]] void fail(std::string message) { throw Error(ErrorCode::invalid_argument, std::move(message)); }

std::string_view trim(std::string_view s) {
  const auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && ws(s.front())) s.remove_prefix(1);
  while (!s.empty() && ws(s.back())) s.remove_suffix(1);
  return s;
}

std::int64_t parse_int(std::string_view key, std::string_view value) {
  std::int64_t out = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, out);
  if (ec == std::errc::result_out_of_range)
    fail(fmt::format("problem: {}={} does not fit in a 64-bit integer", key, value));
  if (ec != std::errc() || ptr != end || value.empty())
    fail(fmt::format("problem: {}={} is not an integer (write decimal digits, e.g. {}=64)", key, value, key));
  return out;
}

float parse_float(std::string_view key, std::string_view value) {
  float out = 0;
  const char* end = value.data() + value.size();
  // from_chars<float> rounds the decimal text once, straight to fp32, so "scale=0.1" is exactly
  // the fp32 value a kernel receives and to_string's shortest form parses back to the same bits.
  const auto [ptr, ec] = std::from_chars(value.data(), end, out);
  if (ec == std::errc::result_out_of_range)
    fail(fmt::format("problem: {}={} is out of the fp32 range", key, value));
  if (ec != std::errc() || ptr != end || value.empty())
    fail(fmt::format("problem: {}={} is not a number (e.g. {}=0.125)", key, value, key));
  if (!std::isfinite(out)) fail(fmt::format("problem: {}={} must be a finite number", key, value));
  return out;
}

FactorLayout parse_layout(std::string_view key, std::string_view value) {
  std::string v(value);
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  for (const bool b : {false, true})
    for (const bool h : {false, true}) {
      const FactorLayout layout{b, h};
      if (v == layout.str()) return layout;
    }
  fail(fmt::format("problem: {}={} is not a factor layout; allowed: {}", key, value, kLayouts));
}

void check_extent(std::string_view key, std::int64_t v) {
  if (v < 1 || v > kMaxExtent)
    fail(fmt::format("problem: {}={} is out of range: must be an integer in [1, {}]", key, v, kMaxExtent));
}

}  // namespace

std::string FactorLayout::str() const {
  return fmt::format("{}n{}r", batch_shared ? '1' : 'b', head_shared ? '1' : 'h');
}

float ProblemSpec::scale() const {
  if (softmax_scale) return *softmax_scale;
  // Round 1/sqrt(d) once from double, not 1.0f / sqrtf(d) (two roundings).
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

std::uint8_t ProblemSpec::broadcast_bits() const {
  if (rank == 0) return kBroadcastNone;
  std::uint8_t bits = kBroadcastNone;
  if (qb_layout.batch_shared) bits |= kQbBatch;
  if (qb_layout.head_shared) bits |= kQbHead;
  if (kb_layout.batch_shared) bits |= kKbBatch;
  if (kb_layout.head_shared) bits |= kKbHead;
  return bits;
}

std::int64_t ProblemSpec::visible_keys(std::int64_t row) const {
  if (mask == MaskKind::none) return seqlen_k;
  // Bottom-right alignment: the last query row sees every key.
  return std::clamp<std::int64_t>(row + (seqlen_k - seqlen_q) + 1, 0, seqlen_k);
}

double ProblemSpec::visible_pairs() const {
  const double nk = double(seqlen_k);
  if (mask == MaskKind::none) return double(seqlen_q) * nk;
  // Row i sees clamp(i + off + 1, 0, nk) keys, off = nk - nq. Rows before -off see none; from
  // there the count grows by one per row and reaches exactly nk at the last row (bottom-right
  // alignment), so the visible rows form an arithmetic series ending at nk.
  const std::int64_t off = seqlen_k - seqlen_q;
  const std::int64_t first = std::max<std::int64_t>(0, -off);  // first row that sees a key
  if (first >= seqlen_q) return 0;
  const double count = double(seqlen_q - first);
  return (double(first + off + 1) + nk) * count / 2;
}

double ProblemSpec::forward_flops() const {
  return 4.0 * double(batch) * double(heads) * visible_pairs() * double(head_dim);
}

double ProblemSpec::backward_flops() const {
  return 10.0 * double(batch) * double(heads) * visible_pairs() * double(head_dim);
}

void validate(const ProblemSpec& s) {
  check_extent("b", s.batch);
  check_extent("h", s.heads);
  check_extent("nq", s.seqlen_q);
  check_extent("nk", s.seqlen_k);
  if (s.head_dim < kMinHeadDim || s.head_dim > kMaxHeadDim || s.head_dim % kHeadDimStep != 0)
    fail(fmt::format("problem: d={} is out of range: head dim must be a multiple of {} in [{}, {}]",
                     s.head_dim, kHeadDimStep, kMinHeadDim, kMaxHeadDim));
  if (s.rank < 0 || s.rank > kMaxRank)
    fail(fmt::format("problem: r={} is out of range: bias rank must be an integer in [0, {}]", s.rank, kMaxRank));
  if (s.mask != MaskKind::none && s.mask != MaskKind::causal)
    fail(fmt::format("problem: mask={} is not valid; allowed: none, causal", int(s.mask)));
  if (s.dtype != DType::f16 && s.dtype != DType::bf16)
    fail(fmt::format("problem: dtype={} is not valid; allowed: f16, bf16", int(s.dtype)));
  if (s.softmax_scale && !std::isfinite(*s.softmax_scale))
    fail(fmt::format("problem: scale={} must be a finite number", *s.softmax_scale));
  if (s.rank == 0 && (s.qb_layout != FactorLayout{} || s.kb_layout != FactorLayout{}))
    fail(fmt::format("problem: qb={}, kb={} share bias factors, but r=0 has no factors; set r >= 1 or drop qb/kb",
                     s.qb_layout.str(), s.kb_layout.str()));
  const double elems = double(s.batch) * double(std::max(s.seqlen_q, s.seqlen_k)) * double(s.heads) *
                       double(std::max(s.head_dim, s.rank));
  if (elems > kMaxElements)
    fail(fmt::format("problem: b={}, h={}, nq={}, nk={}, d={} make a tensor of {:.3g} elements; the limit is 2^60",
                     s.batch, s.heads, s.seqlen_q, s.seqlen_k, s.head_dim, elems));
}

ProblemSpec parse_problem(std::string_view text) {
  ProblemSpec spec;
  // Which keys were seen, to report duplicates and missing required keys.
  enum Key { kB, kH, kN, kNq, kNk, kD, kR, kMask, kDtype, kScale, kQb, kKb, kCount };
  static constexpr std::array<std::string_view, kCount> names = {"b",    "h",     "n",     "nq", "nk", "d",
                                                                 "r",    "mask",  "dtype", "scale", "qb", "kb"};
  std::array<bool, kCount> seen{};

  std::string_view rest = text;
  std::size_t index = 0;
  while (true) {
    const std::size_t comma = rest.find(',');
    const std::string_view item = trim(rest.substr(0, comma));
    ++index;
    if (item.empty())
      fail(fmt::format("problem \"{}\": item {} is empty; write key=value items separated by single commas "
                       "(keys: {})", text, index, kKeys));
    const std::size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      fail(fmt::format("problem \"{}\": item \"{}\" has no '='; write key=value (keys: {})", text, item, kKeys));
    const std::string_view key = trim(item.substr(0, eq));
    const std::string_view value = trim(item.substr(eq + 1));
    const auto it = std::find(names.begin(), names.end(), key);
    if (it == names.end())
      fail(fmt::format("problem \"{}\": unknown key \"{}\"; known keys: {}", text, key, kKeys));
    const Key k = Key(it - names.begin());
    if (seen[k]) fail(fmt::format("problem \"{}\": key \"{}\" is given twice", text, key));
    // n is shorthand for nq and nk: together they would say the same thing twice.
    if ((k == kN && (seen[kNq] || seen[kNk])) || ((k == kNq || k == kNk) && seen[kN]))
      fail(fmt::format("problem \"{}\": key \"{}\" conflicts with an earlier key: n sets both nq and nk, "
                       "give either n or nq and nk", text, key));
    seen[k] = true;
    if (value.empty()) fail(fmt::format("problem \"{}\": key \"{}\" has an empty value", text, key));

    switch (k) {
      case kB: spec.batch = parse_int(key, value); check_extent(key, spec.batch); break;
      case kH: spec.heads = parse_int(key, value); check_extent(key, spec.heads); break;
      case kN:
        spec.seqlen_q = spec.seqlen_k = parse_int(key, value);
        check_extent(key, spec.seqlen_q);
        break;
      case kNq: spec.seqlen_q = parse_int(key, value); check_extent(key, spec.seqlen_q); break;
      case kNk: spec.seqlen_k = parse_int(key, value); check_extent(key, spec.seqlen_k); break;
      case kD: spec.head_dim = parse_int(key, value); break;  // range checked by validate()
      case kR: spec.rank = parse_int(key, value); break;
      case kMask:
        try {
          spec.mask = parse_mask(std::string(value));
        } catch (const Error& e) {
          fail(fmt::format("problem \"{}\": key mask: {}", text, e.what()));
        }
        break;
      case kDtype:
        try {
          spec.dtype = parse_dtype(std::string(value));
        } catch (const Error& e) {
          fail(fmt::format("problem \"{}\": key dtype: {}", text, e.what()));
        }
        break;
      case kScale: spec.softmax_scale = parse_float(key, value); break;
      case kQb: spec.qb_layout = parse_layout(key, value); break;
      case kKb: spec.kb_layout = parse_layout(key, value); break;
      case kCount: break;
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }

  if (!seen[kD]) fail(fmt::format("problem \"{}\": missing required key d (head dim, a multiple of 8 in [8, 256])", text));
  if (!seen[kN] && !seen[kNq] && !seen[kNk])
    fail(fmt::format("problem \"{}\": missing required sequence length: give n, or nq and nk", text));
  if (!seen[kN] && !seen[kNq]) fail(fmt::format("problem \"{}\": missing required key nq (nk is given)", text));
  if (!seen[kN] && !seen[kNk]) fail(fmt::format("problem \"{}\": missing required key nk (nq is given)", text));
  validate(spec);
  return spec;
}

std::string to_string(const ProblemSpec& s) {
  std::string out = fmt::format("b={},h={},", s.batch, s.heads);
  if (s.seqlen_q == s.seqlen_k)
    out += fmt::format("n={},", s.seqlen_q);
  else
    out += fmt::format("nq={},nk={},", s.seqlen_q, s.seqlen_k);
  out += fmt::format("d={},r={},mask={},dtype={}", s.head_dim, s.rank, to_string(s.mask), to_string(s.dtype));
  // fmt prints the shortest decimal that reads back as the same fp32 value.
  if (s.softmax_scale) out += fmt::format(",scale={}", *s.softmax_scale);
  if (s.qb_layout != FactorLayout{}) out += ",qb=" + s.qb_layout.str();
  if (s.kb_layout != FactorLayout{}) out += ",kb=" + s.kb_layout.str();
  return out;
}

namespace {

NamedProblem preset(std::string name, std::int64_t b, std::int64_t h, std::int64_t n, std::int64_t d, std::int64_t r,
                    MaskKind mask, std::string description) {
  ProblemSpec s;
  s.dtype = DType::f16;  // BENCH.md: fp16 unless said
  s.batch = b;
  s.heads = h;
  s.seqlen_q = s.seqlen_k = n;
  s.head_dim = d;
  s.rank = r;
  s.mask = mask;
  validate(s);
  return NamedProblem{std::move(name), s, std::move(description)};
}

}  // namespace

const std::vector<NamedProblem>& bench_presets() {
  static const std::vector<NamedProblem> presets = {
      preset("seed_n4k", 2, 4, 4096, 32, 8, MaskKind::none, "the paper's own benchmark shape"),
      preset("seed_n16k", 2, 4, 16384, 32, 8, MaskKind::none, "the paper's benchmark shape, long"),
      preset("alibi_gpt2", 1, 50, 8192, 32, 2, MaskKind::causal, "GPT-2 size model with ALiBi (rank 2 factors)"),
      preset("llm_d64", 4, 16, 4096, 64, 16, MaskKind::none, "language/vision model"),
      preset("llm_d128", 2, 16, 8192, 128, 16, MaskKind::none, "language model"),
      preset("llm_d128_causal", 2, 16, 8192, 128, 16, MaskKind::causal, "decoder"),
      preset("af3_tri", 256, 4, 384, 32, 16, MaskKind::none, "AlphaFold-3 triangle attention: many short rows"),
  };
  return presets;
}

const std::vector<NamedProblem>& demo_presets() {
  // Same D, R, mask and dtype as bench_presets (so the demo compiles and runs the very kernels the
  // benchmark does); batch and N shrink so that each of Q, K, V holds at most ~8M elements (host
  // RNG and copies stay around a second) while rows stay long enough to exercise the main loop
  // over many key blocks. seed_n16k keeps its full length, since length is what it stands for.
  static const std::vector<NamedProblem> presets = {
      preset("seed_n4k", 2, 4, 4096, 32, 8, MaskKind::none, "the paper's own benchmark shape (unscaled)"),
      preset("seed_n16k", 1, 4, 16384, 32, 8, MaskKind::none, "the paper's benchmark shape, long (B 2 -> 1)"),
      preset("alibi_gpt2", 1, 50, 4096, 32, 2, MaskKind::causal, "GPT-2 size model with ALiBi (N 8192 -> 4096)"),
      preset("llm_d64", 1, 16, 4096, 64, 16, MaskKind::none, "language/vision model (B 4 -> 1)"),
      preset("llm_d128", 1, 16, 4096, 128, 16, MaskKind::none, "language model (B 2 -> 1, N 8192 -> 4096)"),
      preset("llm_d128_causal", 1, 16, 4096, 128, 16, MaskKind::causal, "decoder (B 2 -> 1, N 8192 -> 4096)"),
      preset("af3_tri", 64, 4, 384, 32, 16, MaskKind::none, "AlphaFold-3 triangle attention (B 256 -> 64)"),
  };
  return presets;
}

const NamedProblem* find_preset(const std::vector<NamedProblem>& presets, std::string_view name) {
  const auto it = std::find_if(presets.begin(), presets.end(), [&](const NamedProblem& p) { return p.name == name; });
  return it == presets.end() ? nullptr : &*it;
}

namespace {
// The widest access in {16, 8, 4, 2} bytes dividing a row of `bytes` bytes.
int row_alignment(std::int64_t bytes) {
  for (int a : {16, 8, 4}) if (bytes % a == 0) return a;
  return 2;
}
}  // namespace

ProblemKey dense_problem_key(const ProblemSpec& spec, const Arch& arch) {
  ProblemKey k;
  k.arch = arch;
  k.dtype = spec.dtype;
  k.head_dim = int(spec.head_dim);
  k.rank = int(spec.rank);
  k.mask = spec.mask;
  k.direction = Direction::fwd;
  k.broadcast = spec.broadcast_bits();
  // Every stride of a dense tensor is a multiple of its row, so the row length decides.
  k.qkv_align = row_alignment(spec.head_dim * 2);
  k.bias_align = spec.rank > 0 ? row_alignment(spec.rank * 2) : 16;  // rank 0: canonical, as validate_forward
  if (forward_scale_needs_portable(k, spec.softmax_scale)) k.arch.a = false;  // as validate_forward
  return k;
}

}  // namespace flashbias
