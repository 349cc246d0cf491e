// HostExpr: a static_assert condition that the host can evaluate, lowered out of the Clang AST.
//
// Host-evaluable means: integer/bool literals, enumerators, non-type template parameters of the
// entry, casts between integral types, and the built-in unary, binary and conditional operators.
// Clang has already made every usual arithmetic conversion explicit (ImplicitCastExpr), so each
// node carries its exact C++ type and evaluation here reproduces the compiler's result bit for bit
// (wrap-around included); only what C++ itself rejects in a constant expression (division by zero,
// an out-of-range shift) yields "no value", which counts as the rule failing, as it would in NVRTC.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace flashbias::manifest_tool {

/// An integral C++ type, as far as evaluation and printing need it.
struct IntType {
  unsigned bits = 32;     ///< 1 for bool
  bool is_signed = true;
  std::string spelling = "int";  ///< host spelling: "int", "unsigned int", "bool", "long long", ...
  bool is_bool() const { return bits == 1; }
};

struct HostExpr {
  enum class Op {
    literal, param,
    plus, minus, bit_not, log_not,                      // unary
    mul, div, rem, add, sub, shl, shr,                  // arithmetic
    lt, gt, le, ge, eq, ne,                             // comparison
    bit_and, bit_xor, bit_or, log_and, log_or,          // bitwise, logical
    cond,                                               // a ? b : c
    cast,                                               // conversion to `type`
  };
  Op op = Op::literal;
  IntType type;                 ///< the type of this node's value
  std::uint64_t literal = 0;    ///< Op::literal: the value's bit pattern in `type`
  std::string param;            ///< Op::param: the template parameter's name
  bool implicit = false;        ///< Op::cast: inserted by the compiler, so the host compiler redoes it
  std::vector<HostExpr> kids;

  /// C++ source for a constexpr function body, parameters read as `<prefix><name>` (e.g. "v.").
  std::string print(const std::string& prefix) const;

  /// Value for the given parameter values (bit patterns are converted to each parameter's type);
  /// nullopt where C++ would reject the constant expression. Parameters missing from `values`
  /// also give nullopt.
  std::optional<std::uint64_t> evaluate(const std::map<std::string, long long>& values) const;

  /// Names of the parameters the expression reads, sorted, without duplicates.
  std::vector<std::string> params() const;
};

}  // namespace flashbias::manifest_tool
