// The fp64 reference, checked by hand on tiny cases, against a dense textbook implementation,
// through identities (softmax shift invariance, broadcast = materialised), and for the backward
// against central finite differences of the forward. Also the low-precision baseline, the
// comparisons (NaN / poison must fail loudly) and the host tensors.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "generator/problem_spec.h"
#include "tuner/host_tensor.h"
#include "tuner/numeric.h"
#include "tuner/reference.h"

using namespace flashbias;
using Catch::Matchers::Contains;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

ProblemSpec make_spec(std::int64_t b, std::int64_t h, std::int64_t nq, std::int64_t nk, std::int64_t d, std::int64_t r,
                      MaskKind mask = MaskKind::none, DType dtype = DType::f16) {
  ProblemSpec s;
  s.dtype = dtype;
  s.batch = b;
  s.heads = h;
  s.seqlen_q = nq;
  s.seqlen_k = nk;
  s.head_dim = d;
  s.rank = r;
  s.mask = mask;
  return s;
}

// fp64 inputs with unrounded N(0, 1) values (Qb / sqrt(R)), factors in their stored shapes.
RefInputs random_ref_inputs(const ProblemSpec& s, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  const auto fill = [&](Shape4 shape, double sd) {
    RefTensor t(shape);
    for (auto& v : t.data) v = sd * normal(rng);
    return t;
  };
  RefInputs in;
  in.q = fill({s.batch, s.seqlen_q, s.heads, s.head_dim}, 1.0);
  in.k = fill({s.batch, s.seqlen_k, s.heads, s.head_dim}, 1.0);
  in.v = fill({s.batch, s.seqlen_k, s.heads, s.head_dim}, 1.0);
  if (s.rank > 0) {
    const auto fs = [&](std::int64_t n, FactorLayout l) {
      return Shape4{l.batch_shared ? 1 : s.batch, n, l.head_shared ? 1 : s.heads, s.rank};
    };
    in.qb = fill(fs(s.seqlen_q, s.qb_layout), 1.0 / std::sqrt(double(s.rank)));
    in.kb = fill(fs(s.seqlen_k, s.kb_layout), 1.0);
  }
  return in;
}

// A deliberately different, textbook implementation: materialise the bias and the mask as dense
// matrices, then softmax each row of S. Returns O [B, Nq, H, D] and LSE [B, H, Nq].
struct Dense {
  RefTensor o;
  std::vector<double> lse;
};
Dense dense_forward(const ProblemSpec& s, const RefInputs& in) {
  const std::int64_t B = s.batch, H = s.heads, Nq = s.seqlen_q, Nk = s.seqlen_k, D = s.head_dim, R = s.rank;
  Dense out{RefTensor({B, Nq, H, D}), std::vector<double>(std::size_t(B * H * Nq))};
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> S(static_cast<std::size_t>(Nq), std::vector<double>(static_cast<std::size_t>(Nk)));
      for (std::int64_t i = 0; i < Nq; ++i)
        for (std::int64_t j = 0; j < Nk; ++j) {
          double qk = 0, bias = 0;
          for (std::int64_t x = 0; x < D; ++x) qk += in.q.at(b, i, h, x) * in.k.at(b, j, h, x);
          for (std::int64_t x = 0; x < R; ++x)
            bias += in.qb.at(s.qb_layout.batch_shared ? 0 : b, i, s.qb_layout.head_shared ? 0 : h, x) *
                    in.kb.at(s.kb_layout.batch_shared ? 0 : b, j, s.kb_layout.head_shared ? 0 : h, x);
          const bool masked = s.mask == MaskKind::causal && j > i + (Nk - Nq);
          S[std::size_t(i)][std::size_t(j)] = masked ? -kInf : double(s.scale()) * qk + bias;
        }
      for (std::int64_t i = 0; i < Nq; ++i) {
        const auto& row = S[std::size_t(i)];
        double m = -kInf;
        for (double v : row) m = std::max(m, v);
        double& lse = out.lse[std::size_t((b * H + h) * Nq + i)];
        if (m == -kInf) {
          lse = -kInf;
          continue;
        }
        double l = 0;
        for (double v : row) l += std::exp(v - m);
        lse = m + std::log(l);
        for (std::int64_t j = 0; j < Nk; ++j)
          for (std::int64_t x = 0; x < D; ++x)
            out.o.at(b, i, h, x) += std::exp(row[std::size_t(j)] - lse) * in.v.at(b, j, h, x);
      }
    }
  return out;
}

void require_close(const ForwardResult& got, const Dense& want, double tol) {
  const std::int64_t B = got.o.shape.b, H = got.o.shape.h, D = got.o.shape.x;
  const std::int64_t Nq = want.o.shape.n;
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::size_t r = 0; r < got.rows.size(); ++r) {
        const std::int64_t i = got.rows[r];
        INFO("b=" << b << " h=" << h << " row=" << i);
        const double wl = want.lse[std::size_t((b * H + h) * Nq + i)];
        if (std::isinf(wl))
          REQUIRE(got.lse_at(b, h, std::int64_t(r)) == wl);
        else
          REQUIRE(got.lse_at(b, h, std::int64_t(r)) == Approx(wl).epsilon(tol).margin(tol));
        for (std::int64_t x = 0; x < D; ++x)
          REQUIRE(got.o.at(b, std::int64_t(r), h, x) == Approx(want.o.at(b, i, h, x)).epsilon(tol).margin(tol));
      }
}

// A 16-bit tensor holding exactly the given fp64 values (they must be representable).
void set_exact(HostTensor& t, std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x, double v) {
  t.set(b, n, h, x, v);
  REQUIRE(t.get(b, n, h, x) == v);
}

}  // namespace

TEST_CASE("reference: one query, one key: O = v, LSE = the score", "[cpu][reference]") {
  ProblemSpec s = make_spec(1, 1, 1, 1, 8, 1);
  AttentionInputs in;
  in.q = HostTensor(s.dtype, {1, 1, 1, 8});
  in.k = HostTensor(s.dtype, {1, 1, 1, 8});
  in.v = HostTensor(s.dtype, {1, 1, 1, 8});
  in.qb = HostTensor(s.dtype, {1, 1, 1, 1});
  in.kb = HostTensor(s.dtype, {1, 1, 1, 1});
  for (int x = 0; x < 8; ++x) {
    set_exact(in.q, 0, 0, 0, x, 0.5 * x);
    set_exact(in.k, 0, 0, 0, x, 1.0 - 0.25 * x);
    set_exact(in.v, 0, 0, 0, x, x - 3.0);
  }
  set_exact(in.qb, 0, 0, 0, 0, 1.5);
  set_exact(in.kb, 0, 0, 0, 0, -2.0);
  const ForwardResult res = reference_forward(s, in, all_rows(s));
  double qk = 0;
  for (int x = 0; x < 8; ++x) qk += 0.5 * x * (1.0 - 0.25 * x);
  CHECK(res.lse_at(0, 0, 0) == Approx(double(s.scale()) * qk - 3.0).epsilon(1e-15));
  for (int x = 0; x < 8; ++x) CHECK(res.o.at(0, 0, 0, x) == x - 3.0);
}

TEST_CASE("reference: two keys give the known two-way softmax", "[cpu][reference]") {
  ProblemSpec s = make_spec(1, 1, 1, 2, 8, 0);
  s.softmax_scale = 0.5f;
  AttentionInputs in{HostTensor(s.dtype, {1, 1, 1, 8}), HostTensor(s.dtype, {1, 2, 1, 8}),
                     HostTensor(s.dtype, {1, 2, 1, 8}), {}, {}};
  set_exact(in.q, 0, 0, 0, 0, 1.0);
  set_exact(in.k, 0, 0, 0, 0, 2.0);  // s0 = 0.5 * 1 * 2 = 1, s1 = 0
  for (int x = 0; x < 8; ++x) {
    set_exact(in.v, 0, 0, 0, x, 1.0);
    set_exact(in.v, 0, 1, 0, x, -1.0);
  }
  const ForwardResult res = reference_forward(s, in, all_rows(s));
  const double e = std::exp(1.0);
  CHECK(res.lse_at(0, 0, 0) == Approx(std::log(e + 1.0)).epsilon(1e-15));
  for (int x = 0; x < 8; ++x) CHECK(res.o.at(0, 0, 0, x) == Approx((e - 1.0) / (e + 1.0)).epsilon(1e-15));  // tanh(1/2)
}

TEST_CASE("reference: a rank-1 bias adds the matrix a_i c_j", "[cpu][reference]") {
  // Without Q K^T (scale 0), the scores are exactly a_i c_j: check against the closed form.
  ProblemSpec s = make_spec(1, 1, 3, 4, 8, 1);
  s.softmax_scale = 0.0f;
  AttentionInputs in = make_inputs(s, 5);
  const double a[3] = {1.0, -0.5, 2.0}, c[4] = {0.25, 1.0, -1.0, 0.0};
  for (int i = 0; i < 3; ++i) set_exact(in.qb, 0, i, 0, 0, a[i]);
  for (int j = 0; j < 4; ++j) set_exact(in.kb, 0, j, 0, 0, c[j]);
  const ForwardResult res = reference_forward(s, in, all_rows(s));
  for (int i = 0; i < 3; ++i) {
    double l = 0;
    for (int j = 0; j < 4; ++j) l += std::exp(a[i] * c[j]);
    CHECK(res.lse_at(0, 0, i) == Approx(std::log(l)).epsilon(1e-14));
    for (int x = 0; x < 8; ++x) {
      double o = 0;
      for (int j = 0; j < 4; ++j) o += std::exp(a[i] * c[j]) / l * in.v.get(0, j, 0, x);
      CHECK(res.o.at(0, i, 0, x) == Approx(o).epsilon(1e-14).margin(1e-15));
    }
  }
}

TEST_CASE("reference: matches a dense textbook implementation", "[cpu][reference]") {
  struct Case {
    ProblemSpec spec;
    const char* what;
  };
  std::vector<Case> cases = {
      {make_spec(2, 3, 17, 17, 16, 3), "square, rank 3"},
      {make_spec(1, 2, 5, 9, 8, 2, MaskKind::causal), "causal, nq < nk"},
      {make_spec(2, 1, 9, 5, 8, 1, MaskKind::causal), "causal, nq > nk: four fully masked rows"},
      {make_spec(1, 1, 113, 1, 8, 0, MaskKind::causal), "one key, causal"},
      {make_spec(1, 2, 1, 113, 24, 128), "one query, rank 128"},
      {make_spec(3, 2, 7, 11, 8, 2, MaskKind::causal, DType::bf16), "broadcast factors, bf16"},
  };
  cases.back().spec.qb_layout = {true, true};
  cases.back().spec.kb_layout = {false, true};
  for (const auto& c : cases) {
    INFO(c.what << ": " << to_string(c.spec));
    const AttentionInputs in = make_inputs(c.spec, 42);
    const Dense want = dense_forward(c.spec, widen(in));
    require_close(reference_forward(c.spec, in, all_rows(c.spec)), want, 1e-12);
    // fp64 inputs take the same path.
    require_close(reference_forward(c.spec, widen(in), all_rows(c.spec)), want, 1e-12);
  }
}

TEST_CASE("reference: bottom-right causal mask, fully masked rows give O = 0 and LSE = -inf", "[cpu][reference]") {
  SECTION("nq > nk") {
    const ProblemSpec s = make_spec(1, 1, 5, 3, 8, 2, MaskKind::causal);
    const AttentionInputs in = make_inputs(s, 9);
    const ForwardResult res = reference_forward(s, in, all_rows(s));
    for (int i = 0; i < 2; ++i) {  // rows 0 and 1 see j <= i - 2: nothing
      CHECK(res.lse_at(0, 0, i) == -kInf);
      for (int x = 0; x < 8; ++x) CHECK(res.o.at(0, i, 0, x) == 0.0);
    }
    for (int x = 0; x < 8; ++x) CHECK(res.o.at(0, 2, 0, x) == in.v.get(0, 0, 0, x));  // row 2 sees key 0 only
    CHECK(std::isfinite(res.lse_at(0, 0, 4)));
  }
  SECTION("nq < nk") {
    const ProblemSpec s = make_spec(1, 1, 2, 4, 8, 0, MaskKind::causal);
    const AttentionInputs in = make_inputs(s, 9);
    const ForwardResult masked = reference_forward(s, in, all_rows(s));
    // Row 0 sees keys 0..2, row 1 sees all four: the same as unmasked attention over those keys.
    ProblemSpec first3 = make_spec(1, 1, 1, 3, 8, 0);
    AttentionInputs sub{HostTensor(s.dtype, {1, 1, 1, 8}), HostTensor(s.dtype, {1, 3, 1, 8}),
                        HostTensor(s.dtype, {1, 3, 1, 8}), {}, {}};
    for (int x = 0; x < 8; ++x) {
      sub.q.set(0, 0, 0, x, in.q.get(0, 0, 0, x));
      for (int j = 0; j < 3; ++j) {
        sub.k.set(0, j, 0, x, in.k.get(0, j, 0, x));
        sub.v.set(0, j, 0, x, in.v.get(0, j, 0, x));
      }
    }
    const ForwardResult r3 = reference_forward(first3, sub, all_rows(first3));
    CHECK(masked.lse_at(0, 0, 0) == r3.lse_at(0, 0, 0));
    for (int x = 0; x < 8; ++x) CHECK(masked.o.at(0, 0, 0, x) == r3.o.at(0, 0, 0, x));
    ProblemSpec unmasked = s;
    unmasked.mask = MaskKind::none;
    const ForwardResult full = reference_forward(unmasked, in, std::vector<std::int64_t>{1});
    CHECK(masked.lse_at(0, 0, 1) == full.lse_at(0, 0, 0));
  }
}

TEST_CASE("reference: broadcast factors equal materialised ones", "[cpu][reference]") {
  for (const FactorLayout qb : {FactorLayout{true, false}, FactorLayout{false, true}, FactorLayout{true, true}})
    for (const FactorLayout kb : {FactorLayout{}, FactorLayout{true, true}, FactorLayout{false, true}}) {
      ProblemSpec s = make_spec(2, 3, 6, 5, 8, 3, MaskKind::causal);
      s.qb_layout = qb;
      s.kb_layout = kb;
      INFO(to_string(s));
      const AttentionInputs shared = make_inputs(s, 17);
      CHECK(shared.qb.strides().batch == (qb.batch_shared ? 0 : 6 * (qb.head_shared ? 1 : 3) * 3));
      CHECK(shared.qb.strides().head == (qb.head_shared ? 0 : 3));
      // Materialise: the same values copied into full [B, N, H, R] tensors.
      ProblemSpec full_spec = s;
      full_spec.qb_layout = full_spec.kb_layout = FactorLayout{};
      AttentionInputs full = shared;
      full.qb = HostTensor(s.dtype, shared.qb.shape());
      full.kb = HostTensor(s.dtype, shared.kb.shape());
      for (std::int64_t b = 0; b < 2; ++b)
        for (std::int64_t h = 0; h < 3; ++h)
          for (std::int64_t x = 0; x < 3; ++x) {
            for (std::int64_t n = 0; n < 6; ++n) full.qb.set(b, n, h, x, shared.qb.get(b, n, h, x));
            for (std::int64_t n = 0; n < 5; ++n) full.kb.set(b, n, h, x, shared.kb.get(b, n, h, x));
          }
      const ForwardResult a = reference_forward(s, shared, all_rows(s));
      const ForwardResult b = reference_forward(full_spec, full, all_rows(s));
      CHECK(a.o.data == b.o.data);  // same arithmetic, bit for bit
      CHECK(a.lse == b.lse);

      // Backward: a shared factor's gradient is the sum of the materialised one over what it shares.
      const HostTensor dout = make_grad_output(s, 3);
      const BackwardResult ga = reference_backward(s, shared, dout);
      const BackwardResult gb = reference_backward(full_spec, full, dout);
      CHECK(ga.dq.data == gb.dq.data);
      CHECK(ga.dk.data == gb.dk.data);
      CHECK(ga.dv.data == gb.dv.data);
      REQUIRE(ga.dqb.shape == shared.qb.storage_shape());
      REQUIRE(ga.dkb.shape == shared.kb.storage_shape());
      const auto check_reduced = [&](const RefTensor& reduced, const RefTensor& per_head, FactorLayout l) {
        RefTensor sum(reduced.shape);
        for (std::int64_t b = 0; b < 2; ++b)
          for (std::int64_t n = 0; n < per_head.shape.n; ++n)
            for (std::int64_t h = 0; h < 3; ++h)
              for (std::int64_t x = 0; x < 3; ++x)
                sum.at(l.batch_shared ? 0 : b, n, l.head_shared ? 0 : h, x) += per_head.at(b, n, h, x);
        for (std::size_t i = 0; i < sum.data.size(); ++i)
          REQUIRE(reduced.data[i] == Approx(sum.data[i]).epsilon(1e-13).margin(1e-14));
      };
      check_reduced(ga.dqb, gb.dqb, qb);
      check_reduced(ga.dkb, gb.dkb, kb);
    }
}

TEST_CASE("reference: a bias constant along keys shifts nothing (softmax invariance)", "[cpu][reference]") {
  // Kb[j, r] = c_r for every key j makes the bias row i the constant Qb_i . c: O must not change,
  // and LSE moves by exactly that constant.
  ProblemSpec biased = make_spec(2, 2, 9, 13, 16, 4, MaskKind::causal);
  ProblemSpec plain = biased;
  plain.rank = 0;
  const AttentionInputs in = make_inputs(biased, 23);
  AttentionInputs with = in;
  const double c[4] = {0.5, -1.25, 2.0, 0.75};
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t j = 0; j < 13; ++j)
        for (int r = 0; r < 4; ++r) with.kb.set(b, j, h, r, c[r]);
  const ForwardResult p = reference_forward(plain, in, all_rows(plain));
  const ForwardResult q = reference_forward(biased, with, all_rows(biased));
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t i = 0; i < 9; ++i) {
        double shift = 0;
        for (int r = 0; r < 4; ++r) shift += with.qb.get(b, i, h, r) * c[r];
        CHECK(q.lse_at(b, h, i) == Approx(p.lse_at(b, h, i) + shift).epsilon(1e-13).margin(1e-13));
        for (std::int64_t x = 0; x < 16; ++x) CHECK(q.o.at(b, i, h, x) == Approx(p.o.at(b, i, h, x)).epsilon(1e-12).margin(1e-14));
      }
}

TEST_CASE("reference: row subsets and thread counts change nothing", "[cpu][reference]") {
  const ProblemSpec s = make_spec(2, 3, 239, 113, 32, 5, MaskKind::causal);
  const AttentionInputs in = make_inputs(s, 1);
  const ForwardResult all = reference_forward(s, in, all_rows(s), 1);
  const ForwardResult all3 = reference_forward(s, in, all_rows(s), 3);
  CHECK(all.o.data == all3.o.data);
  CHECK(all.lse == all3.lse);
  const std::vector<std::int64_t> rows = sample_rows(s, 20);
  const ForwardResult some = reference_forward(s, in, rows, 2);
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t h = 0; h < 3; ++h)
      for (std::size_t r = 0; r < rows.size(); ++r) {
        REQUIRE(some.lse_at(b, h, std::int64_t(r)) == all.lse_at(b, h, rows[r]));
        for (std::int64_t x = 0; x < 32; ++x) REQUIRE(some.o.at(b, std::int64_t(r), h, x) == all.o.at(b, rows[r], h, x));
      }
  const HostTensor dout = make_grad_output(s, 2);
  const BackwardResult g1 = reference_backward(s, in, dout, 1);
  const BackwardResult g4 = reference_backward(s, in, dout, 4);
  CHECK(g1.dq.data == g4.dq.data);
  CHECK(g1.dk.data == g4.dk.data);
  CHECK(g1.dv.data == g4.dv.data);
  CHECK(g1.dqb.data == g4.dqb.data);
  CHECK(g1.dkb.data == g4.dkb.data);
  CHECK(g1.forward.o.data == all.o.data);
  CHECK(g1.forward.lse == all.lse);
}

TEST_CASE("reference: sample_rows", "[cpu][reference]") {
  const ProblemSpec small = make_spec(1, 1, 10, 10, 8, 0);
  CHECK(sample_rows(small, 10) == all_rows(small));
  CHECK(sample_rows(small, 0).empty());
  const ProblemSpec big = make_spec(1, 1, 5000, 3000, 8, 0, MaskKind::causal);
  for (const std::int64_t n : {2, 3, 17, 64}) {
    const auto rows = sample_rows(big, n);
    INFO("max rows " << n);
    CHECK(std::int64_t(rows.size()) <= n);
    CHECK(std::is_sorted(rows.begin(), rows.end()));
    CHECK(std::adjacent_find(rows.begin(), rows.end()) == rows.end());
    CHECK(rows.front() >= 0);
    CHECK(rows.back() <= 4999);
    if (n >= 4) {
      CHECK(std::count(rows.begin(), rows.end(), 1999) == 1);  // last fully masked row
      CHECK(std::count(rows.begin(), rows.end(), 2000) == 1);  // first row that sees a key
      CHECK(rows.front() == 0);
      CHECK(rows.back() == 4999);
    }
  }
}

TEST_CASE("reference backward matches central finite differences of the forward", "[cpu][reference]") {
  struct Case {
    ProblemSpec spec;
    const char* what;
  };
  std::vector<Case> cases = {
      {make_spec(2, 2, 5, 7, 8, 3, MaskKind::causal), "causal nq < nk, shared factors"},
      {make_spec(1, 2, 6, 4, 8, 2, MaskKind::causal), "causal nq > nk: masked rows"},
      {make_spec(2, 1, 4, 4, 8, 0), "no bias"},
      {make_spec(1, 1, 3, 5, 16, 1), "rank 1"},
  };
  cases[0].spec.qb_layout = {true, false};
  cases[0].spec.kb_layout = {false, true};
  cases[1].spec.qb_layout = {true, true};
  cases[1].spec.softmax_scale = 0.7f;
  for (const auto& c : cases) {
    const ProblemSpec& s = c.spec;
    INFO(c.what << ": " << to_string(s));
    RefInputs in = random_ref_inputs(s, 99);
    RefTensor dout({s.batch, s.seqlen_q, s.heads, s.head_dim});
    std::mt19937_64 rng(5);
    std::normal_distribution<double> normal;
    for (auto& v : dout.data) v = normal(rng);
    const BackwardResult g = reference_backward(s, in, dout, 2);
    const auto rows = all_rows(s);
    // L = sum(O * dO); its gradient is what the backward returns.
    const auto loss = [&]() {
      const ForwardResult f = reference_forward(s, in, rows, 1);
      double l = 0;
      for (std::size_t i = 0; i < f.o.data.size(); ++i) l += f.o.data[i] * dout.data[i];
      return l;
    };
    // Step: central differences err O(h^2) from truncation and O(eps / h) from rounding; 1e-5
    // balances them near 1e-10 for O(1) values.
    const double step = 1e-5;
    const auto check = [&](RefTensor& x, const RefTensor& grad, const char* name) {
      REQUIRE(grad.shape == x.shape);
      double num2 = 0, diff2 = 0;
      for (std::size_t i = 0; i < x.data.size(); ++i) {
        const double saved = x.data[i];
        x.data[i] = saved + step;
        const double up = loss();
        x.data[i] = saved - step;
        const double down = loss();
        x.data[i] = saved;
        const double fd = (up - down) / (2 * step);
        INFO(name << " element " << i);
        REQUIRE(grad.data[i] == Approx(fd).epsilon(1e-6).margin(1e-8));
        num2 += fd * fd;
        diff2 += (fd - grad.data[i]) * (fd - grad.data[i]);
      }
      INFO(name);
      CHECK(std::sqrt(diff2) <= 1e-7 * std::sqrt(num2) + 1e-9);
    };
    check(in.q, g.dq, "dQ");
    check(in.k, g.dk, "dK");
    check(in.v, g.dv, "dV");
    if (s.rank > 0) {
      check(in.qb, g.dqb, "dQb");
      check(in.kb, g.dkb, "dKb");
    } else {
      CHECK(g.dqb.data.empty());
      CHECK(g.dkb.data.empty());
    }
    // Fully masked rows pass no gradient to Q.
    for (std::int64_t i = 0; i < s.seqlen_q; ++i)
      if (s.visible_keys(i) == 0)
        for (std::int64_t x = 0; x < s.head_dim; ++x) CHECK(g.dq.at(0, i, 0, x) == 0.0);
  }
}

TEST_CASE("lowp baseline: error against fp64 is that of 16-bit storage", "[cpu][reference]") {
  for (const DType t : {DType::f16, DType::bf16}) {
    const ProblemSpec s = make_spec(2, 2, 113, 239, 64, 16, MaskKind::causal, t);
    const AttentionInputs in = make_inputs(s, 8);
    const auto rows = all_rows(s);
    const ForwardResult ref = reference_forward(s, in, rows);
    const ForwardResult low = lowp_forward(s, in, rows);
    const Comparison c = compare(ref, low);
    INFO(c.str());
    CHECK(c.bad == 0);
    // Rounding O alone costs ~2^-(p+1) / sqrt(3) relative; P's rounding adds about as much.
    const double unit = std::ldexp(1.0, -(numeric::format_of(t).mantissa_bits + 1));
    CHECK(c.rel_l2 > 0.2 * unit);
    CHECK(c.rel_l2 < 3.0 * unit);
    const double tol = lowp_tolerance(ref, low);
    CHECK(tol == std::max(2e-3, 2 * c.rel_l2));
    // Every lowp O value is a dtype value, and fully masked rows agree exactly.
    for (const double v : low.o.data) REQUIRE(numeric::round_to(t, v) == v);
    const Comparison lse = [&] {
      std::vector<float> l(low.lse.begin(), low.lse.end());
      return compare_lse(ref, l);
    }();
    CHECK(lse.bad == 0);
    CHECK(lse.max_abs < 1e-4);
  }
  // bf16 is the coarser format: its tolerance is above the 2e-3 floor, fp16's is at it.
  const ProblemSpec s = make_spec(1, 4, 64, 300, 32, 8, MaskKind::none, DType::bf16);
  const AttentionInputs in = make_inputs(s, 4);
  const auto rows = all_rows(s);
  CHECK(lowp_tolerance(reference_forward(s, in, rows), lowp_forward(s, in, rows)) > 2e-3);
}

TEST_CASE("compare: NaN, stray infinities and unwritten outputs fail loudly", "[cpu][reference]") {
  const ProblemSpec s = make_spec(1, 2, 6, 4, 8, 1, MaskKind::causal);
  const AttentionInputs in = make_inputs(s, 12);
  const std::vector<std::int64_t> rows = {0, 1, 3, 5};
  const ForwardResult ref = reference_forward(s, in, rows);

  // A "kernel output" holding exactly the reference, rounded: passes.
  HostTensor out(s.dtype, {1, 6, 2, 8});
  poison(out);
  CHECK(count_poisoned(out) == 6 * 2 * 8);
  CHECK(std::isnan(out.get(0, 0, 0, 0)));
  const ForwardResult full = reference_forward(s, in, all_rows(s));
  for (std::int64_t i = 0; i < 6; ++i)
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t x = 0; x < 8; ++x) out.set(0, i, h, x, full.o.at(0, i, h, x));
  CHECK(count_poisoned(out) == 0);
  const Comparison good = compare_rows(ref, out);
  CHECK(good.bad == 0);
  CHECK(good.compared == 1 * 4 * 2 * 8);
  CHECK(good.rel_l2 < 1e-3);
  CHECK(good.ok(1e-3));
  CHECK(rel_l2(ref, out) == good.rel_l2);

  // One unwritten (poisoned) element in a sampled row.
  HostTensor bad = out;
  bad.set(0, 3, 1, 5, std::numeric_limits<double>::quiet_NaN());
  const Comparison c = compare_rows(ref, bad);
  CHECK(c.bad == 1);
  CHECK_FALSE(c.ok(1.0));
  CHECK_THAT(c.first_bad, Contains("row=3") && Contains("h=1") && Contains("x=5") && Contains("nan"));
  CHECK_THAT(c.str(), Contains("1 bad"));
  CHECK_THROWS_WITH(rel_l2(ref, bad), Contains("NaN"));
  try {
    (void)rel_l2(ref, bad);
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::internal);
  }
  // The same element in a row outside the sample is not looked at.
  HostTensor unsampled = out;
  unsampled.set(0, 2, 1, 5, std::numeric_limits<double>::quiet_NaN());
  CHECK(compare_rows(ref, unsampled).bad == 0);
  // An infinity where the reference is finite.
  HostTensor inf = out;
  inf.set(0, 5, 0, 0, 1e6);  // overflows f16
  CHECK(compare_rows(ref, inf).bad == 1);

  // LSE: fully masked rows (0 and 1: j <= i - 2) must be -inf; NaN and poison fail.
  std::vector<float> lse(2 * 6);
  poison(lse);
  CHECK(count_poisoned(lse) == 12);
  CHECK(compare_lse(ref, lse).bad == 2 * 4);
  for (std::int64_t h = 0; h < 2; ++h)
    for (std::int64_t i = 0; i < 6; ++i) lse[std::size_t(h * 6 + i)] = float(full.lse_at(0, h, i));
  CHECK(count_poisoned(lse) == 0);
  CHECK(std::isinf(lse[0]));
  const Comparison lc = compare_lse(ref, lse);
  CHECK(lc.bad == 0);
  CHECK(lc.max_abs < 1e-5);
  CHECK(lc.compared == 2 * 2);  // rows 3 and 5 of each head; -inf rows match without counting
  lse[1] = 0.0f;                // row 1 is fully masked: a finite LSE is wrong
  CHECK(compare_lse(ref, lse).bad == 1);

  // Shapes that do not fit are argument errors, not comparisons.
  CHECK_THROWS_AS(compare_rows(ref, HostTensor(s.dtype, {1, 5, 2, 8})), Error);
  CHECK_THROWS_AS(compare_lse(ref, std::span<const float>(lse).first(7)), Error);
  CHECK_THROWS_AS(compare(ref.o, std::span<const float>(lse), "x"), Error);
}

TEST_CASE("compare: gradients in the dtype, in fp32 and in fp64", "[cpu][reference]") {
  RefTensor ref({1, 2, 1, 3});
  ref.data = {1, 2, 3, 4, 5, 6};
  std::vector<float> f(ref.data.begin(), ref.data.end());
  f[5] = 6.5f;
  const Comparison c = compare(ref, f, "dQb");
  CHECK(c.max_abs == 0.5);
  CHECK(c.rel_l2 == Approx(0.5 / std::sqrt(91.0)));
  HostTensor h(DType::bf16, {1, 2, 1, 3});
  for (int i = 0; i < 6; ++i) h.set(0, i / 3, 0, i % 3, ref.data[std::size_t(i)]);
  CHECK(compare(ref, h, "dK").rel_l2 == 0.0);
  CHECK(rel_l2(ref, h) == 0.0);
  RefTensor other = ref;
  other.data[0] = std::numeric_limits<double>::infinity();
  CHECK(compare(ref, other, "dV").bad == 1);
  CHECK_THROWS_AS(compare(ref, RefTensor({1, 3, 1, 2}), "dV"), Error);
  // A zero reference makes the error absolute rather than dividing by zero.
  RefTensor zero({1, 1, 1, 2});
  RefTensor small = zero;
  small.data = {3e-7, 4e-7};
  CHECK(compare(zero, small, "O").rel_l2 == Approx(5e-7));
}

TEST_CASE("host tensors: layout, strides, seeding, input checks", "[cpu][reference]") {
  ProblemSpec s = make_spec(3, 4, 50, 70, 16, 8);
  s.qb_layout = {true, false};
  s.kb_layout = {false, true};
  const AttentionInputs a = make_inputs(s, 1, 1);
  const AttentionInputs b = make_inputs(s, 1, 2);
  const AttentionInputs c = make_inputs(s, 2);
  CHECK(std::equal(a.q.bits().begin(), a.q.bits().end(), b.q.bits().begin()));  // thread count is irrelevant
  CHECK(std::equal(a.kb.bits().begin(), a.kb.bits().end(), b.kb.bits().begin()));
  CHECK_FALSE(std::equal(a.q.bits().begin(), a.q.bits().end(), c.q.bits().begin()));
  CHECK_FALSE(std::equal(a.q.bits().begin(), a.q.bits().end(), a.k.bits().begin()));
  CHECK(a.q.strides().batch == 50 * 4 * 16);
  CHECK(a.q.strides().seq == 4 * 16);
  CHECK(a.q.strides().head == 16);
  CHECK(a.qb.strides().batch == 0);
  CHECK(a.qb.strides().seq == 4 * 8);
  CHECK(a.kb.strides().head == 0);
  CHECK(a.kb.strides().seq == 8);
  CHECK(a.kb.strides().batch == 70 * 8);
  CHECK(a.qb.bytes() == std::size_t(1 * 50 * 4 * 8 * 2));
  CHECK(a.qb.get(0, 7, 2, 3) == a.qb.get(2, 7, 2, 3));
  CHECK(a.kb.get(1, 7, 0, 3) == a.kb.get(1, 7, 3, 3));
  // Qb ~ N(0, 1/R), the others ~ N(0, 1).
  const auto stddev = [](const HostTensor& t) {
    double s2 = 0;
    const auto bits = t.bits();
    for (const auto u : bits) {
      const double v = numeric::decode(t.dtype(), u);
      s2 += v * v;
    }
    return std::sqrt(s2 / double(bits.size()));
  };
  CHECK(stddev(a.q) == Approx(1.0).epsilon(0.03));
  CHECK(stddev(a.qb) == Approx(1.0 / std::sqrt(8.0)).epsilon(0.05));
  CHECK(a.q.to_double().size() == std::size_t(3 * 50 * 4 * 16));
  CHECK(a.qb.to_double()[0] == a.qb.get(0, 0, 0, 0));
  CHECK_THROWS_AS(HostTensor(DType::f16, {1, 0, 1, 8}), Error);
  HostTensor t(DType::f16, {1, 2, 1, 8});
  CHECK_THROWS_AS(t.set(0, 2, 0, 0, 1.0), Error);

  // Inputs that disagree with the spec are refused with the tensor's name.
  AttentionInputs wrong = a;
  wrong.k = HostTensor(s.dtype, {3, 71, 4, 16});
  CHECK_THROWS_WITH(reference_forward(s, wrong, all_rows(s)), Contains("input k") && Contains("[3, 70, 4, 16]"));
  wrong = a;
  wrong.qb = HostTensor(s.dtype, {3, 50, 4, 8});
  CHECK_THROWS_WITH(reference_forward(s, wrong, all_rows(s)), Contains("input qb") && Contains("layout"));
  wrong = a;
  wrong.v = HostTensor(DType::bf16, {3, 70, 4, 16});
  CHECK_THROWS_WITH(lowp_forward(s, wrong, all_rows(s)), Contains("input v") && Contains("bf16"));
  CHECK_THROWS_WITH(reference_forward(s, a, std::vector<std::int64_t>{3, 2}), Contains("ascending"));
  CHECK_THROWS_WITH(reference_forward(s, a, std::vector<std::int64_t>{50}), Contains("outside"));
  CHECK_THROWS_WITH(reference_backward(s, a, HostTensor(s.dtype, {3, 50, 4, 8})), Contains("dO"));
  CHECK(reference_forward(s, a, std::vector<std::int64_t>{}).o.data.empty());
}
