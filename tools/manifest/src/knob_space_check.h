// KnobSpaceCheck: do the knob tables agree with the rules declared next to them?
//
// Rules that read only knobs (and literals) can be decided here, once, for the whole search space.
// A candidate value that no combination of the other knobs can make legal is a mistake in the knob
// table (a typo, or a rule tightened without updating the table): the tuner would only ever record
// it as not-supported. The check reports it with the knob's and the rule's places. Rules that also
// read problem parameters (kHeadDim, kRank, ...) depend on the ProblemKey and are left to the
// generator and tuner, which evaluate them through the generated header.
#pragma once

#include "manifest.h"
#include "problems.h"

namespace flashbias::manifest_tool {

void check_knob_space(const Entry& entry, Problems& problems);

}  // namespace flashbias::manifest_tool
