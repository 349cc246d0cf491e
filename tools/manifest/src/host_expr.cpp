#include "host_expr.h"

#include <algorithm>
#include <set>

namespace flashbias::manifest_tool {
namespace {

using u64 = std::uint64_t;
using i64 = std::int64_t;
// Wide enough for any product or sum of two 64-bit operands, so overflow is detected, not suffered.
__extension__ typedef __int128 i128;

// Bit patterns are kept sign-extended to 64 bits for signed types and zero-extended for unsigned
// ones, so that reading one as i64 or u64 gives the C++ value directly.
u64 normalize(u64 v, const IntType& t) {
  if (t.bits >= 64) return v;
  const u64 mask = (u64{1} << t.bits) - 1;
  v &= mask;
  if (t.is_signed && ((v >> (t.bits - 1)) & 1)) v |= ~mask;
  return v;
}

i128 min_of(const IntType& t) { return t.is_signed ? -(i128{1} << (t.bits - 1)) : 0; }
i128 max_of(const IntType& t) {
  return t.is_signed ? (i128{1} << (t.bits - 1)) - 1 : (i128{1} << t.bits) - 1;
}
i128 as_wide(u64 v, const IntType& t) { return t.is_signed ? i128{static_cast<i64>(v)} : i128{v}; }

// Signed arithmetic that leaves the type's range is undefined, and a constant expression with
// undefined behaviour does not compile: report "no value", exactly as NVRTC would fail the assert.
std::optional<u64> fit(i128 r, const IntType& t) {
  if (t.is_signed) {
    if (r < min_of(t) || r > max_of(t)) return std::nullopt;
    return static_cast<u64>(static_cast<i64>(r));
  }
  return normalize(static_cast<u64>(r), t);  // unsigned arithmetic wraps
}

std::string literal_text(u64 v, const IntType& t) {
  if (t.is_bool()) return v ? "true" : "false";
  const i128 value = as_wide(v, t);
  if (value < 0) return "static_cast<" + t.spelling + ">(" + std::to_string(static_cast<i64>(v)) + "LL)";
  const std::string digits = std::to_string(static_cast<u64>(value));
  if (t.spelling == "int") return digits;
  if (t.spelling == "unsigned int") return digits + "U";
  if (t.spelling == "long") return digits + "L";
  if (t.spelling == "unsigned long") return digits + "UL";
  if (t.spelling == "long long") return digits + "LL";
  if (t.spelling == "unsigned long long") return digits + "ULL";
  return "static_cast<" + t.spelling + ">(" + digits + "ULL)";
}

const char* spelling(HostExpr::Op op) {
  using Op = HostExpr::Op;
  switch (op) {
    case Op::plus: return "+";
    case Op::minus: return "-";
    case Op::bit_not: return "~";
    case Op::log_not: return "!";
    case Op::mul: return "*";
    case Op::div: return "/";
    case Op::rem: return "%";
    case Op::add: return "+";
    case Op::sub: return "-";
    case Op::shl: return "<<";
    case Op::shr: return ">>";
    case Op::lt: return "<";
    case Op::gt: return ">";
    case Op::le: return "<=";
    case Op::ge: return ">=";
    case Op::eq: return "==";
    case Op::ne: return "!=";
    case Op::bit_and: return "&";
    case Op::bit_xor: return "^";
    case Op::bit_or: return "|";
    case Op::log_and: return "&&";
    case Op::log_or: return "||";
    default: return "?";
  }
}

void collect(const HostExpr& e, std::set<std::string>& out) {
  if (e.op == HostExpr::Op::param) out.insert(e.param);
  for (const auto& k : e.kids) collect(k, out);
}

}  // namespace

std::string HostExpr::print(const std::string& prefix) const {
  switch (op) {
    case Op::literal: return literal_text(literal, type);
    case Op::param: return prefix + param;
    case Op::plus: case Op::minus: case Op::bit_not: case Op::log_not:
      return std::string("(") + spelling(op) + kids[0].print(prefix) + ")";
    case Op::cond:
      return "(" + kids[0].print(prefix) + " ? " + kids[1].print(prefix) + " : " + kids[2].print(prefix) + ")";
    case Op::cast:
      // The host compiler inserts the same implicit conversions, since the Values fields have the
      // parameters' own types; writing them out would only make the generated code harder to read.
      if (implicit) return kids[0].print(prefix);
      return "static_cast<" + type.spelling + ">(" + kids[0].print(prefix) + ")";
    default:
      return "(" + kids[0].print(prefix) + " " + spelling(op) + " " + kids[1].print(prefix) + ")";
  }
}

std::optional<std::uint64_t> HostExpr::evaluate(const std::map<std::string, long long>& values) const {
  switch (op) {
    case Op::literal: return literal;
    case Op::param: {
      auto it = values.find(param);
      if (it == values.end()) return std::nullopt;
      if (type.is_bool()) return it->second != 0 ? 1 : 0;
      return normalize(static_cast<u64>(it->second), type);
    }
    case Op::cast: {
      auto v = kids[0].evaluate(values);
      if (!v) return std::nullopt;
      if (type.is_bool()) return *v != 0 ? 1 : 0;
      return normalize(*v, type);
    }
    case Op::log_not: {
      auto v = kids[0].evaluate(values);
      if (!v) return std::nullopt;
      return *v == 0 ? 1 : 0;
    }
    case Op::plus: return kids[0].evaluate(values);
    case Op::minus: {
      auto v = kids[0].evaluate(values);
      if (!v) return std::nullopt;
      return fit(-as_wide(*v, type), type);
    }
    case Op::bit_not: {
      auto v = kids[0].evaluate(values);
      if (!v) return std::nullopt;
      return normalize(~*v, type);
    }
    case Op::log_and: case Op::log_or: {
      // Short-circuit like C++: the unevaluated side may be ill-formed without making the whole
      // condition so (kWarps != 0 && kBlockM % kWarps == 0).
      auto a = kids[0].evaluate(values);
      if (!a) return std::nullopt;
      if (op == Op::log_and && *a == 0) return 0;
      if (op == Op::log_or && *a != 0) return 1;
      auto b = kids[1].evaluate(values);
      if (!b) return std::nullopt;
      return *b != 0 ? 1 : 0;
    }
    case Op::cond: {
      auto c = kids[0].evaluate(values);
      if (!c) return std::nullopt;
      return kids[*c != 0 ? 1 : 2].evaluate(values);
    }
    default: break;
  }
  auto a = kids[0].evaluate(values);
  auto b = kids[1].evaluate(values);
  if (!a || !b) return std::nullopt;
  const IntType& lt = kids[0].type;
  const IntType& rt = kids[1].type;
  const i128 x = as_wide(*a, lt);
  const i128 y = as_wide(*b, rt);
  switch (op) {
    case Op::mul: return fit(x * y, type);
    case Op::add: return fit(x + y, type);
    case Op::sub: return fit(x - y, type);
    case Op::div: case Op::rem:
      if (y == 0) return std::nullopt;
      if (type.is_signed && x == min_of(type) && y == -1) return std::nullopt;
      return fit(op == Op::div ? x / y : x % y, type);
    case Op::shl:
      if (y < 0 || y >= static_cast<i128>(type.bits)) return std::nullopt;
      if (type.is_signed) {
        // C++17 (what NVRTC compiles the templates as): a negative left operand, or a result
        // beyond the corresponding unsigned type, is undefined.
        if (x < 0) return std::nullopt;
        const i128 r = x << static_cast<int>(y);
        IntType u = type;
        u.is_signed = false;
        if (r > max_of(u)) return std::nullopt;
        return normalize(static_cast<u64>(r), type);
      }
      return normalize(static_cast<u64>(x) << static_cast<int>(y), type);
    case Op::shr:
      if (y < 0 || y >= static_cast<i128>(type.bits)) return std::nullopt;
      return fit(x >> static_cast<int>(y), type);
    case Op::lt: return x < y ? 1 : 0;
    case Op::gt: return x > y ? 1 : 0;
    case Op::le: return x <= y ? 1 : 0;
    case Op::ge: return x >= y ? 1 : 0;
    case Op::eq: return x == y ? 1 : 0;
    case Op::ne: return x != y ? 1 : 0;
    case Op::bit_and: return normalize(*a & *b, type);
    case Op::bit_xor: return normalize(*a ^ *b, type);
    case Op::bit_or: return normalize(*a | *b, type);
    default: return std::nullopt;
  }
}

std::vector<std::string> HostExpr::params() const {
  std::set<std::string> s;
  collect(*this, s);
  return {s.begin(), s.end()};
}

}  // namespace flashbias::manifest_tool
