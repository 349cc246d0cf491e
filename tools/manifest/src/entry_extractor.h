// EntryExtractor: AST of one template file -> the kernel entries it declares.
//
// An entry is a class template marked FLASHBIAS_KERNEL(direction, family) (templates/README.md).
// From it the extractor reads the template parameters, the knob table (`using Knobs = X;`, one
// constexpr array per tunable parameter, evaluated by clang's constant evaluator) and the
// legality rules (the static_asserts of the class body), lowering host-evaluable conditions into
// HostExpr. Problems found on the way (a knob array that names no parameter, a rule without a
// message, ...) go to `problems` with the place in the template.
#pragma once

#include <vector>

#include "manifest.h"
#include "problems.h"

namespace clang {
class ASTContext;
}

namespace flashbias::manifest_tool {

/// Appends the entries declared (defined) in the translation unit of `ctx` to `out`. Entries
/// reached through #include are reported too; the caller drops repeats by name and place.
void extract_entries(clang::ASTContext& ctx, const std::string& root, std::vector<Entry>& out,
                     Problems& problems);

}  // namespace flashbias::manifest_tool
