#include <sstream>
#include <stdexcept>

#include "writers.h"

namespace flashbias::manifest_tool {
namespace {

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\%03o", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string raw(const std::string& s) {
  static const std::string delim = "FBMANIFEST";
  if (s.find(")" + delim + "\"") != std::string::npos)
    throw std::runtime_error("manifest text contains the raw-string delimiter )" + delim + "\"");
  return "R\"" + delim + "(" + s + ")" + delim + "\"";
}

std::string string_views(const std::vector<std::string>& v) {
  std::string out = "std::array<std::string_view, " + std::to_string(v.size()) + ">{";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + quote(v[i]);
  return out + "}";
}

void write_entry(std::ostringstream& os, const Entry& e) {
  os << "// ---- " << e.name << " (" << e.pos.str() << ") ----\n";
  os << "namespace " << e.family << "::" << e.direction << " {\n\n";

  os << "/// The non-type template parameters of " << e.name << ", in declaration order.\n";
  os << "struct Values {\n";
  for (const Param& p : e.params)
    if (!p.host_type.empty()) os << "  " << p.host_type << " " << p.name << ";\n";
  os << "};\n\n";

  os << "/// Values from generic arguments (one slot per template parameter; type slots ignored).\n";
  os << "constexpr Values values_from([[maybe_unused]] Args a) {\n  Values v{};\n";
  for (std::size_t i = 0; i < e.params.size(); ++i) {
    const Param& p = e.params[i];
    if (p.host_type.empty()) continue;
    if (p.host_type == "bool")
      os << "  v." << p.name << " = a[" << i << "] != 0;\n";
    else
      os << "  v." << p.name << " = static_cast<" << p.host_type << ">(a[" << i << "]);\n";
  }
  os << "  return v;\n}\n\n";

  for (std::size_t i = 0; i < e.rules.size(); ++i) {
    const Rule& r = e.rules[i];
    const std::string n = "rule_" + std::to_string(i);
    os << "// " << r.pos.str() << ": static_assert(" << r.condition << ", " << quote(r.message) << ")\n";
    if (r.host) {
      os << "constexpr bool " << n << "([[maybe_unused]] const Values& v) { return " << r.host->print("v.")
         << "; }\n";
      os << "constexpr bool " << n << "_args(Args a) { return " << n << "(values_from(a)); }\n";
    }
    os << "inline constexpr auto " << n << "_params = " << string_views(r.params) << ";\n";
    os << "inline constexpr auto " << n << "_members = " << string_views(r.members) << ";\n\n";
  }

  for (const Knob& k : e.knobs) {
    os << "inline constexpr std::array<long long, " << k.values.size() << "> knob_" << k.name << " = {";
    for (std::size_t i = 0; i < k.values.size(); ++i) os << (i ? ", " : "") << k.values[i];
    os << "};\n";
  }

  os << "\ninline constexpr std::array<ParamInfo, " << e.params.size() << "> params = {{\n";
  for (const Param& p : e.params) {
    os << "    {" << quote(p.name) << ", ParamKind::" << (p.kind == ParamKind::type ? "type" : "non_type")
       << ", " << quote(p.type) << ", " << quote(p.default_text.value_or("")) << ", "
       << (p.default_value ? "true" : "false") << ", " << p.default_value.value_or(0) << "LL, " << p.knob
       << "},\n";
  }
  os << "}};\n\n";

  os << "inline constexpr std::array<KnobInfo, " << e.knobs.size() << "> knobs = {{\n";
  for (const Knob& k : e.knobs)
    os << "    {" << quote(k.name) << ", " << k.param << ", knob_" << k.name << ", " << quote(k.pos.file)
       << ", " << k.pos.line << "},\n";
  os << "}};\n\n";

  os << "inline constexpr std::array<RuleInfo, " << e.rules.size() << "> rules = {{\n";
  for (std::size_t i = 0; i < e.rules.size(); ++i) {
    const Rule& r = e.rules[i];
    const std::string n = "rule_" + std::to_string(i);
    os << "    {" << quote(r.condition) << ",\n     " << quote(r.message) << ",\n     " << n << "_params, "
       << n << "_members, " << (r.host ? n + "_args" : "nullptr") << ", " << quote(r.not_host_reason) << ", "
       << quote(r.pos.file) << ", " << r.pos.line << "},\n";
  }
  os << "}};\n\n";

  os << "inline constexpr EntryInfo entry = {" << quote(e.name) << ", " << quote(e.direction) << ", "
     << quote(e.family) << ", " << quote(e.knob_table) << ", " << quote(e.pos.file) << ", " << e.pos.line
     << ", params, knobs, rules};\n\n";

  os << "/// The first host-evaluable rule `v` breaks (its message says why), or null when all hold.\n";
  os << "constexpr const RuleInfo* first_violation([[maybe_unused]] const Values& v) {\n";
  for (std::size_t i = 0; i < e.rules.size(); ++i)
    if (e.rules[i].host) os << "  if (!rule_" << i << "(v)) return &rules[" << i << "];\n";
  os << "  return nullptr;\n}\n";
  os << "constexpr bool legal(const Values& v) { return first_violation(v) == nullptr; }\n\n";

  os << "}  // namespace " << e.family << "::" << e.direction << "\n\n";
}

}  // namespace

std::string header(const Manifest& m, const std::string& ns, const std::string& json, const std::string& list) {
  std::ostringstream os;
  os << "// Generated by flashbias-manifest (tools/manifest) from the kernel templates. Do not edit:\n"
        "// change the templates (declaration style: templates/README.md) and rebuild.\n"
        "#pragma once\n\n"
        "#include <array>\n#include <string_view>\n\n"
        "#include \"flashbias/manifest_types.h\"\n\n";
  os << "namespace " << ns << " {\n\n";
  os << "using ::flashbias::manifest::Args;\n"
        "using ::flashbias::manifest::EntryInfo;\n"
        "using ::flashbias::manifest::KnobInfo;\n"
        "using ::flashbias::manifest::Name;\n"
        "using ::flashbias::manifest::ParamInfo;\n"
        "using ::flashbias::manifest::ParamKind;\n"
        "using ::flashbias::manifest::RuleInfo;\n\n";
  static_assert(kSchemaVersion == 1, "update the static_assert emitted below");
  os << "static_assert(::flashbias::manifest::kSchemaVersion == " << kSchemaVersion
     << ", \"manifest.gen.h was generated for another version of flashbias/manifest_types.h: rebuild\");\n\n";

  for (const Entry& e : m.entries) write_entry(os, e);

  // Only the real manifest (fixtures generate into other namespaces): one definition per entry.
  if (ns == "flashbias::manifest") {
    os << "// The template side of FLASHBIAS_MANIFEST_REQUIRE_KNOB / _VALUE messages.\n";
    for (const Entry& e : m.entries)
      os << "#define FLASHBIAS_MANIFEST_WHERE_" << e.family << "_" << e.direction << " "
         << quote("templates/" + e.pos.file + ":" + std::to_string(e.pos.line) + " (" + e.name +
                  (e.knob_table.empty() ? "" : ", knob table " + e.knob_table) + ")")
         << "\n";
    os << "\n";
  }

  os << "/// Every kernel entry template, sorted by (family, direction).\n";
  os << "inline constexpr std::array<EntryInfo, " << m.entries.size() << "> entries = {{\n";
  for (const Entry& e : m.entries) os << "    " << e.family << "::" << e.direction << "::entry,\n";
  os << "}};\n\n";

  os << R"CODE(/// The entry declared FLASHBIAS_KERNEL(direction, family), or null.
constexpr const EntryInfo* find_entry(std::string_view direction, std::string_view family) {
  return ::flashbias::manifest::find_entry(entries, direction, family);
}

/// Whether that entry's Knobs table has an array named `knob`.
constexpr bool has_knob(std::string_view direction, std::string_view family, std::string_view knob) {
  const EntryInfo* e = find_entry(direction, family);
  return e && e->find_knob(knob);
}

/// Whether `value` is among the candidate values of that knob.
constexpr bool knob_allows(std::string_view direction, std::string_view family, std::string_view knob,
                           long long value) {
  const EntryInfo* e = find_entry(direction, family);
  const KnobInfo* k = e ? e->find_knob(knob) : nullptr;
  return k && k->allows(value);
}

/// Instantiate (e.g. `static_assert(RequireKnobValue<"fwd", "sm80", "kBlockM", 128>::ok);`) to
/// fail the build, unless the template declares the knob and lists the value. The compiler's
/// instantiation note shows the four arguments; the messages name the template side.
template <Name Direction, Name Family, Name Knob, long long Value>
struct RequireKnobValue {
  static_assert(find_entry(Direction.view(), Family.view()) != nullptr,
                "no kernel template under templates/ is declared FLASHBIAS_KERNEL(Direction, Family) "
                "(see 'RequireKnobValue<...>' below for the names used by the caller)");
  static_assert(find_entry(Direction.view(), Family.view()) == nullptr ||
                    has_knob(Direction.view(), Family.view(), Knob.view()),
                "the kernel template's Knobs table (templates/, see the manifest listing) has no "
                "array named Knob: the caller names a knob the template does not declare");
  static_assert(!has_knob(Direction.view(), Family.view(), Knob.view()) ||
                    knob_allows(Direction.view(), Family.view(), Knob.view(), Value),
                "Value is not among the candidate values the template's Knobs table lists for Knob");
  static constexpr bool ok = true;
};

)CODE";
  os << "/// The manifest as JSON (schema " << kSchemaVersion << "), for tools and tests.\n";
  os << "inline constexpr std::string_view kJson = " << raw(json) << ";\n\n";
  os << "/// The manifest as text: what `flashbias gen --list` prints.\n";
  os << "inline constexpr std::string_view kListing = " << raw(list) << ";\n\n";
  os << "}  // namespace " << ns << "\n";
  return os.str();
}

}  // namespace flashbias::manifest_tool
