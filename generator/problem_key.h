// ProblemKey: everything that changes the generated code. TileConfig: the tuned knobs.
// Together they name one kernel (a KernelSpec).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flashbias/flashbias.hpp"

namespace flashbias {

enum class Direction : std::uint8_t { fwd = 0, bwd = 1 };

/// Which of the factor tensors' batch/head strides are zero (shared). Part of the key because the
/// backward reduces gradients over broadcast dimensions; the forward only records it.
enum BroadcastBits : std::uint8_t {
  kBroadcastNone = 0,
  kQbBatch = 1, kQbHead = 2, kKbBatch = 4, kKbHead = 8,
};

/// Arch as compute capability major*10+minor; `arch_suffix_a` selects the sm_90a feature set.
struct Arch {
  int sm = 80;
  bool a = false;
  std::string name() const;                 // "sm_90a"
  static Arch parse(const std::string& s);  // "sm_80", "sm80", "90a", "sm_90a"; throws Error
  bool operator==(const Arch&) const = default;
};

struct ProblemKey {
  Arch arch;
  DType dtype = DType::f16;
  int head_dim = 0;
  int rank = 0;
  MaskKind mask = MaskKind::none;
  Direction direction = Direction::fwd;
  std::uint8_t broadcast = kBroadcastNone;
  /// Widest global access (bytes: 16, 8, 4 or 2) that every row of Q, K, V, O allows,
  /// and the same for the factors Qb, Kb. Decided from pointers and strides at dispatch.
  int qkv_align = 16;
  int bias_align = 16;

  bool operator==(const ProblemKey&) const = default;
  std::string str() const;  // stable, human-readable, used in logs, errors and cache keys
};

/// The tuned knobs of a kernel: the template parameters its manifest marks tunable (see
/// templates/README.md and generator/knobs.h). The four every template has are named fields; any
/// further knob a template declares lives in `extra`, so adding a knob to a template needs no
/// change here.
struct TileConfig {
  int block_m = 128;  ///< query rows per CTA (template knob kBlockM)
  int block_n = 64;   ///< key rows per main-loop step (kBlockN)
  int warps = 4;      ///< warps per CTA; each owns block_m / warps query rows, a multiple of 16 (kWarps)
  int stages = 1;     ///< 1: K and V single-buffered (loads overlap the other GEMM); 2: K/V double-buffered (kStages)
  /// Every other knob, by its template parameter name ({"kSplitK", 2}), in manifest order, holding
  /// only values that differ from the template's default. A tile that leaves a new knob at its
  /// default therefore keeps the spelling, hash and cache keys it had before the knob existed.
  /// set() keeps this form; operator== relies on it.
  std::vector<std::pair<std::string, int>> extra;

  bool operator==(const TileConfig&) const = default;
  /// "bm128_bn64_w4_s1", then "_<spelling><value>" per extra knob ("bm128_bn64_w4_s2_splitk2");
  /// the spelling of kSplitK is "splitk" (knob_spelling() in generator/knobs.h).
  std::string str() const;
  /// "bm=128,bn=64,w=4,s=1,splitk=2" (any order; knobs not named keep their defaults) or str()'s
  /// form. Knob names: bm/block_m, bn/block_n, w/warps, s/stages, and for every knob any template
  /// declares, its spelling or template parameter name (splitk, kSplitK). Throws Error naming the
  /// allowed knobs.
  static TileConfig parse(const std::string& s);

  /// The value of a knob by template parameter name (kBlockM, ..., kSplitK): a named field, an
  /// extra, or the template's default for an extra the tile leaves unset. nullopt when no template
  /// declares the knob (or it has no constant default and the tile leaves it unset).
  std::optional<int> get(std::string_view knob) const;
  /// Set a knob by template parameter name. Throws Error(invalid_argument) naming the knobs when
  /// no template declares it.
  TileConfig& set(std::string_view knob, int value);
};

struct KernelSpec {
  ProblemKey key;
  TileConfig tile;
  bool operator==(const KernelSpec&) const = default;
  std::string str() const { return key.str() + "/" + tile.str(); }
};

/// Whether a forward key's Hopper kernel cannot take `scale` (nullopt: the default 1/sqrt(D),
/// which always can): fp16 with a bias on sm_90a folds the scale into Q, and only |scale| in
/// [2^-6, 1] folds (folds_scale_into_q, templates/common/params.h). validate_forward and
/// dense_problem_key then give the problem the portable family's key (the arch without 'a').
bool forward_scale_needs_portable(const ProblemKey& key, std::optional<float> scale);

std::size_t hash_value(const ProblemKey& k) noexcept;
std::size_t hash_value(const TileConfig& t) noexcept;
std::size_t hash_value(const KernelSpec& s) noexcept;

const char* to_string(DType d) noexcept;
const char* to_string(MaskKind m) noexcept;
const char* to_string(Direction d) noexcept;
DType parse_dtype(const std::string& s);     // "f16"/"fp16"/"half", "bf16"; throws Error
MaskKind parse_mask(const std::string& s);   // "none", "causal"; throws Error

}  // namespace flashbias

template <> struct std::hash<flashbias::ProblemKey> {
  std::size_t operator()(const flashbias::ProblemKey& k) const noexcept { return flashbias::hash_value(k); }
};
template <> struct std::hash<flashbias::TileConfig> {
  std::size_t operator()(const flashbias::TileConfig& t) const noexcept { return flashbias::hash_value(t); }
};
template <> struct std::hash<flashbias::KernelSpec> {
  std::size_t operator()(const flashbias::KernelSpec& s) const noexcept { return flashbias::hash_value(s); }
};
