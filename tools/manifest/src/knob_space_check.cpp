#include "knob_space_check.h"

#include <algorithm>
#include <functional>

namespace flashbias::manifest_tool {
namespace {

// Above this many combinations the joint check is skipped (the per-rule check still runs): the
// search space would be too large to tune exhaustively anyway, and the build must stay fast.
constexpr std::size_t kMaxJointCombinations = std::size_t{1} << 20;

bool holds(const Rule& r, const std::map<std::string, long long>& values) {
  auto v = r.host->evaluate(values);
  return v && *v != 0;
}

std::string describe(const Rule& r) {
  return "'" + r.condition + "' (\"" + r.message + "\", " + r.pos.str() + ")";
}

std::string describe(const Entry& e, const Knob& k) {
  return "'" + e.knob_table + "::" + k.name + "' (" + k.pos.str() + ")";
}

/// Calls `f` with every assignment of `knobs` (indices into e.knobs) on top of `base`; stops and
/// returns true as soon as `f` returns true.
bool any_assignment(const Entry& e, const std::vector<int>& knobs, std::map<std::string, long long> base,
                    const std::function<bool(const std::map<std::string, long long>&)>& f) {
  std::function<bool(std::size_t)> rec = [&](std::size_t i) {
    if (i == knobs.size()) return f(base);
    const Knob& k = e.knobs[knobs[i]];
    for (long long v : k.values) {
      base[k.name] = v;
      if (rec(i + 1)) return true;
    }
    return false;
  };
  return rec(0);
}

int knob_index(const Entry& e, const std::string& name) {
  for (std::size_t i = 0; i < e.knobs.size(); ++i)
    if (e.knobs[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace

void check_knob_space(const Entry& e, Problems& problems) {
  // The rules this check can decide: host-evaluable, reading knobs only.
  std::vector<const Rule*> rules;
  for (const Rule& r : e.rules) {
    if (!r.host) continue;
    const auto ps = r.host->params();
    if (std::all_of(ps.begin(), ps.end(), [&](const std::string& p) { return knob_index(e, p) >= 0; }))
      rules.push_back(&r);
  }
  if (rules.empty()) return;

  // 1. Each rule on its own: a value no setting of the rule's other knobs satisfies.
  bool per_rule_failed = false;
  for (const Rule* r : rules) {
    std::vector<int> ks;
    for (const auto& p : r->host->params()) ks.push_back(knob_index(e, p));
    for (int ki : ks) {
      const Knob& k = e.knobs[ki];
      std::vector<int> others;
      std::vector<std::string> other_desc;
      for (int o : ks)
        if (o != ki) others.push_back(o);
      for (int o : others) {
        std::string vals;
        for (long long v : e.knobs[o].values) vals += (vals.empty() ? "" : ", ") + std::to_string(v);
        other_desc.push_back(e.knobs[o].name + " in {" + vals + "}");
      }
      for (long long v : k.values) {
        std::map<std::string, long long> base{{k.name, v}};
        if (any_assignment(e, others, base, [&](const auto& m) { return holds(*r, m); })) continue;
        std::string with;
        for (std::size_t i = 0; i < other_desc.size(); ++i) with += (i ? " or " : "") + other_desc[i];
        problems.error(k.pos, "knob " + describe(e, k) + " lists " + k.name + " = " + std::to_string(v) +
                                  ", which breaks the rule " + describe(*r) + " of '" + e.name + "'" +
                                  (with.empty() ? "" : " with every " + with) +
                                  "; remove the value or relax the rule");
        per_rule_failed = true;
      }
    }
  }
  if (per_rule_failed) return;  // the joint check would repeat the same values

  // 2. Rules together: a value that each rule allows for some setting, but no single setting
  //    allows for all of them. Rules interact only through shared knobs, so the check runs per
  //    group of rules connected by shared knobs: smaller products, and an error that names only
  //    the rules that conflict.
  std::vector<int> group(rules.size());
  for (std::size_t i = 0; i < rules.size(); ++i) group[i] = static_cast<int>(i);
  std::function<int(int)> find = [&](int i) { return group[i] == i ? i : group[i] = find(group[i]); };
  for (std::size_t i = 0; i < rules.size(); ++i)
    for (std::size_t j = i + 1; j < rules.size(); ++j) {
      const auto a = rules[i]->host->params();
      const auto b = rules[j]->host->params();
      if (std::any_of(a.begin(), a.end(), [&](const std::string& p) { return std::count(b.begin(), b.end(), p) > 0; }))
        group[find(static_cast<int>(i))] = find(static_cast<int>(j));
    }
  for (std::size_t g = 0; g < rules.size(); ++g) {
    std::vector<const Rule*> members;
    for (std::size_t i = 0; i < rules.size(); ++i)
      if (find(static_cast<int>(i)) == static_cast<int>(g)) members.push_back(rules[i]);
    if (members.size() < 2) continue;  // a single rule was checked above
    std::vector<int> ks;
    for (const Rule* r : members)
      for (const auto& p : r->host->params()) {
        int ki = knob_index(e, p);
        if (std::find(ks.begin(), ks.end(), ki) == ks.end()) ks.push_back(ki);
      }
    std::size_t combos = 1;
    for (int ki : ks) combos = std::min(combos * e.knobs[ki].values.size(), kMaxJointCombinations + 1);
    if (combos > kMaxJointCombinations) continue;
    auto all_hold = [&](const std::map<std::string, long long>& m) {
      return std::all_of(members.begin(), members.end(), [&](const Rule* r) { return holds(*r, m); });
    };
    for (int ki : ks) {
      const Knob& k = e.knobs[ki];
      std::vector<int> others;
      for (int o : ks)
        if (o != ki) others.push_back(o);
      for (long long v : k.values) {
        if (any_assignment(e, others, {{k.name, v}}, all_hold)) continue;
        std::string rs;
        for (const Rule* r : members) rs += (rs.empty() ? "" : ", ") + describe(*r);
        problems.error(k.pos, "knob " + describe(e, k) + " lists " + k.name + " = " + std::to_string(v) +
                                  ", which each of the rules " + rs + " of '" + e.name +
                                  "' allows for some setting of the other knobs, but no setting "
                                  "satisfies all of them at once; remove the value or relax a rule");
      }
    }
  }

  // 3. The defaults are what an untuned key runs: they must be legal.
  std::map<std::string, long long> defaults;
  for (const Knob& k : e.knobs)
    if (const auto& d = e.params[k.param].default_value) defaults[k.name] = *d;
  for (const Rule* r : rules) {
    const auto ps = r->host->params();
    if (!std::all_of(ps.begin(), ps.end(), [&](const std::string& p) { return defaults.count(p) > 0; }))
      continue;
    if (holds(*r, defaults)) continue;
    std::string vals;
    for (const auto& p : ps) vals += (vals.empty() ? "" : ", ") + p + " = " + std::to_string(defaults[p]);
    problems.error(e.pos, "the default template arguments of '" + e.name + "' (" + vals +
                              ") break the rule " + describe(*r));
  }
}

}  // namespace flashbias::manifest_tool
