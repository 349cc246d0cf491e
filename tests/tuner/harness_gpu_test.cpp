// DeviceProblem keeps its references per set of inputs: every kernel checked on one problem is
// compared against the same fp64 reference and plain low-precision result, computed once, and new
// inputs (or a new dO) are never compared against the old ones.
#include <catch2/catch.hpp>

#include "generator/problem_spec.h"
#include "tuner/harness.h"
#include "tuner/reference.h"

using namespace flashbias;

TEST_CASE("a problem's references are computed once per set of inputs and dO", "[gpu][harness]") {
  activate_primary_context(0);
  const ProblemSpec spec = parse_problem("b=1,h=2,nq=70,nk=90,d=32,r=3");
  DeviceProblem p(spec, 11);
  const std::vector<std::int64_t> rows = sample_rows(spec, 16);
  const ForwardResult first = p.forward_reference(rows).ref;
  CHECK(p.reference_computations() == 1);
  CHECK(compare(reference_forward(spec, p.inputs(), rows), first).rel_l2 == 0.0);
  p.forward_reference(rows);
  CHECK(p.reference_computations() == 1);  // kept

  const std::vector<std::int64_t> all = all_rows(spec);
  CHECK(p.forward_reference(all).rows == all);  // other rows: computed for those
  CHECK(p.reference_computations() == 2);

  p.regenerate(12);  // new inputs: computed again, and different
  const ForwardResult second = p.forward_reference(rows).ref;
  CHECK(p.reference_computations() == 3);
  CHECK(compare(first, second).rel_l2 > 0.0);
  CHECK(compare(reference_forward(spec, p.inputs(), rows), second).rel_l2 == 0.0);

  p.enable_backward(5);
  const RefTensor dq = p.backward_reference().ref.dq;
  p.backward_reference();
  CHECK(p.reference_computations() == 4);
  p.enable_backward(6);  // a new dO: computed again
  CHECK(compare(dq, p.backward_reference().ref.dq, "dQ").rel_l2 > 0.0);
  CHECK(p.reference_computations() == 5);
  p.regenerate(13);  // new inputs drop the backward's reference too
  p.backward_reference();
  CHECK(p.reference_computations() == 6);
}
