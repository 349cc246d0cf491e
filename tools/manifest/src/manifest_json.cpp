#include <algorithm>
#include <sstream>

#include "writers.h"

namespace flashbias::manifest_tool {

nlohmann::ordered_json to_json(const Manifest& m) {
  using json = nlohmann::ordered_json;
  json entries = json::array();
  for (const Entry& e : m.entries) {
    json params = json::array();
    for (const Param& p : e.params) {
      params.push_back({
          {"name", p.name},
          {"kind", p.kind == ParamKind::type ? "type" : "non_type"},
          {"type", p.type},
          {"default", p.default_text ? json(*p.default_text) : json(nullptr)},
          {"default_value", p.default_value ? json(*p.default_value) : json(nullptr)},
          {"knob", p.knob >= 0},
      });
    }
    json knobs = json::array();
    for (const Knob& k : e.knobs)
      knobs.push_back({{"name", k.name}, {"param", k.param}, {"values", k.values},
                       {"file", k.pos.file}, {"line", k.pos.line}});
    json rules = json::array();
    for (const Rule& r : e.rules) {
      rules.push_back({
          {"condition", r.condition},
          {"message", r.message},
          {"params", r.params},
          {"members", r.members},
          {"host_evaluable", r.host.has_value()},
          {"host_expr", r.host ? json(r.host->print("")) : json(nullptr)},
          {"not_host_evaluable_because", r.host ? json(nullptr) : json(r.not_host_reason)},
          {"file", r.pos.file},
          {"line", r.pos.line},
      });
    }
    entries.push_back({
        {"name", e.name}, {"direction", e.direction}, {"family", e.family},
        {"knob_table", e.knob_table}, {"file", e.pos.file}, {"line", e.pos.line},
        {"params", params}, {"knobs", knobs}, {"rules", rules},
    });
  }
  return {{"schema", kSchemaVersion}, {"entries", entries}};
}

std::string listing(const Manifest& m) {
  std::ostringstream os;
  if (m.entries.empty()) os << "no kernel templates (no FLASHBIAS_KERNEL in templates/)\n";
  for (const Entry& e : m.entries) {
    os << e.name << "  [" << e.direction << ", " << e.family << "]  " << e.pos.str() << "\n";
    os << "  parameters, in instantiation order:\n";
    std::size_t w = 0;
    for (const Param& p : e.params) w = std::max(w, p.type.size() + 1 + p.name.size() + (p.default_text ? 3 + p.default_text->size() : 0));
    for (const Param& p : e.params) {
      std::string decl = p.type + " " + p.name + (p.default_text ? " = " + *p.default_text : "");
      os << "    " << decl;
      if (p.knob >= 0) {
        os << std::string(w - decl.size() + 2, ' ') << "knob {";
        const Knob& k = e.knobs[p.knob];
        for (std::size_t i = 0; i < k.values.size(); ++i) os << (i ? ", " : "") << k.values[i];
        os << "}";
      }
      os << "\n";
    }
    if (!e.knob_table.empty()) os << "  knob table: " << e.knob_table << "\n";
    os << "  rules:\n";
    if (e.rules.empty()) os << "    (none)\n";
    for (const Rule& r : e.rules) {
      os << "    " << (r.host ? "[host]   " : "[device] ") << r.condition << "\n";
      os << "             \"" << r.message << "\"  (" << r.pos.str() << ")\n";
      if (!r.host) os << "             checked by NVRTC only: " << r.not_host_reason << "\n";
    }
  }
  return os.str();
}

}  // namespace flashbias::manifest_tool
