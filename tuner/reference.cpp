#include "tuner/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "generator/problem_key.h"
#include "tuner/numeric.h"
#include "tuner/parallel.h"

namespace flashbias {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Forward tasks are (batch, head, chunk of rows). A chunk re-gathers its head's K, V and Kb
// (Nk * (2D + R) values) before computing rows at Nk * (2D + R) multiply-adds each, so 16 rows
// per chunk bounds that overhead at about 6%, while still splitting B*H = 1 problems over cores.
constexpr std::int64_t kMinRowsPerChunk = 16;
// Aim for this many tasks per thread so that uneven chunks (causal rows) balance out.
constexpr std::int64_t kTasksPerThread = 4;
// Backward tasks per problem, fixed (not derived from the thread count) because the partial
// dK, dV, dKb sums of a head's chunks are added in chunk order: a fixed chunking keeps the
// result bitwise identical on every machine.
constexpr std::int64_t kBackwardTasks = 16;

[[noreturn]] void bad_input(std::string message) { throw Error(ErrorCode::invalid_argument, std::move(message)); }

// Element readers: the templates below run on 16-bit inputs (decoding on the fly, so a big
// problem never exists in fp64 all at once) and on fp64 inputs (exact, for finite differences).
struct Read16 {
  const HostTensor* t;
  double operator()(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const { return t->get(b, n, h, x); }
};
struct Read64 {
  const RefTensor* t;
  FactorLayout shared;  // factors are stored with extent 1 on the dimensions they share
  double operator()(std::int64_t b, std::int64_t n, std::int64_t h, std::int64_t x) const {
    return t->at(shared.batch_shared ? 0 : b, n, shared.head_shared ? 0 : h, x);
  }
};

// Rows [n0, n1) of head (b, h), as a dense (n1 - n0) x X block.
template <class Read, class T>
void gather(const Read& read, std::int64_t b, std::int64_t h, std::int64_t n0, std::int64_t n1, std::int64_t X,
            std::vector<T>& out) {
  out.resize(static_cast<std::size_t>((n1 - n0) * X));
  for (std::int64_t n = n0; n < n1; ++n)
    for (std::int64_t x = 0; x < X; ++x) out[static_cast<std::size_t>((n - n0) * X + x)] = T(read(b, n, h, x));
}

template <class T>
T dot(const T* a, const T* b, std::int64_t n) {
  T acc = 0;
  for (std::int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

Shape4 q_shape(const ProblemSpec& s) { return {s.batch, s.seqlen_q, s.heads, s.head_dim}; }
Shape4 kv_shape(const ProblemSpec& s) { return {s.batch, s.seqlen_k, s.heads, s.head_dim}; }
Shape4 factor_storage(const ProblemSpec& s, std::int64_t n, FactorLayout l) {
  return {l.batch_shared ? 1 : s.batch, n, l.head_shared ? 1 : s.heads, s.rank};
}

void check_tensor(std::string_view name, const HostTensor& t, const Shape4& want, DType dtype, FactorLayout layout) {
  if (t.empty()) bad_input(fmt::format("reference: input {} is empty; expected shape {}", name, want.str()));
  if (t.shape() != want)
    bad_input(fmt::format("reference: input {} has shape {}; the problem needs {}", name, t.shape().str(), want.str()));
  if (t.dtype() != dtype)
    bad_input(fmt::format("reference: input {} is {}; the problem is {}", name, to_string(t.dtype()), to_string(dtype)));
  if (t.layout() != layout)
    bad_input(fmt::format("reference: input {} has layout {}; the problem says {}", name, t.layout().str(), layout.str()));
}

void check_inputs(const ProblemSpec& spec, const AttentionInputs& in) {
  validate(spec);
  check_tensor("q", in.q, q_shape(spec), spec.dtype, {});
  check_tensor("k", in.k, kv_shape(spec), spec.dtype, {});
  check_tensor("v", in.v, kv_shape(spec), spec.dtype, {});
  if (spec.rank > 0) {
    check_tensor("qb", in.qb, {spec.batch, spec.seqlen_q, spec.heads, spec.rank}, spec.dtype, spec.qb_layout);
    check_tensor("kb", in.kb, {spec.batch, spec.seqlen_k, spec.heads, spec.rank}, spec.dtype, spec.kb_layout);
  }
}

void check_tensor(std::string_view name, const RefTensor& t, const Shape4& want) {
  if (t.shape != want)
    bad_input(fmt::format("reference: input {} has shape {}; the problem needs {}", name, t.shape.str(), want.str()));
  if (t.data.size() != static_cast<std::size_t>(want.elements()))
    bad_input(fmt::format("reference: input {} holds {} values; shape {} needs {}", name, t.data.size(), want.str(),
                          want.elements()));
}

void check_inputs(const ProblemSpec& spec, const RefInputs& in) {
  validate(spec);
  check_tensor("q", in.q, q_shape(spec));
  check_tensor("k", in.k, kv_shape(spec));
  check_tensor("v", in.v, kv_shape(spec));
  if (spec.rank > 0) {
    check_tensor("qb", in.qb, factor_storage(spec, spec.seqlen_q, spec.qb_layout));
    check_tensor("kb", in.kb, factor_storage(spec, spec.seqlen_k, spec.kb_layout));
  }
}

void check_rows(const ProblemSpec& spec, std::span<const std::int64_t> rows) {
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (rows[r] < 0 || rows[r] >= spec.seqlen_q)
      bad_input(fmt::format("reference: row {} is outside [0, {}) (nq={})", rows[r], spec.seqlen_q, spec.seqlen_q));
    if (r > 0 && rows[r] <= rows[r - 1])
      bad_input(fmt::format("reference: rows must be ascending and unique; row {} follows {}", rows[r], rows[r - 1]));
  }
}

// Split `n` rows of each of `heads` (batch, head) pairs into chunks: enough tasks to occupy every
// thread a few times over, none smaller than kMinRowsPerChunk rows unless a head has fewer.
std::int64_t forward_chunk_rows(std::int64_t n, std::int64_t heads, unsigned threads) {
  const std::int64_t want_tasks = kTasksPerThread * detail::resolve_threads(threads);
  const std::int64_t per_head = std::max<std::int64_t>(1, (want_tasks + heads - 1) / heads);
  const std::int64_t size = (n + per_head - 1) / per_head;
  return std::max<std::int64_t>(std::min(kMinRowsPerChunk, n), size);
}

template <class Read>
ForwardResult forward_impl(const ProblemSpec& spec, const Read& rq, const Read& rk, const Read& rv, const Read& rqb,
                           const Read& rkb, std::span<const std::int64_t> rows, unsigned threads) {
  check_rows(spec, rows);
  const std::int64_t B = spec.batch, H = spec.heads, D = spec.head_dim, R = spec.rank;
  const auto nr = static_cast<std::int64_t>(rows.size());
  ForwardResult res;
  res.rows.assign(rows.begin(), rows.end());
  res.o = RefTensor(Shape4{B, nr, H, D});
  res.lse.assign(static_cast<std::size_t>(B * H * nr), 0.0);
  if (nr == 0) return res;

  const double scale = spec.scale();
  const std::int64_t chunk = forward_chunk_rows(nr, B * H, threads);
  const std::int64_t chunks = (nr + chunk - 1) / chunk;
  detail::parallel_for(B * H * chunks, threads, [&](std::int64_t task) {
    const std::int64_t bh = task / chunks, c = task % chunks, b = bh / H, h = bh % H;
    const std::int64_t r0 = c * chunk, r1 = std::min(nr, r0 + chunk);
    // Rows ascend and visible_keys grows with the row, so the chunk's last row needs the most keys.
    const std::int64_t keys = spec.visible_keys(rows[static_cast<std::size_t>(r1 - 1)]);
    std::vector<double> K, V, Kb, q, qb, s;
    gather(rk, b, h, 0, keys, D, K);
    gather(rv, b, h, 0, keys, D, V);
    if (R > 0) gather(rkb, b, h, 0, keys, R, Kb);
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t i = rows[static_cast<std::size_t>(r)];
      const std::int64_t nv = spec.visible_keys(i);
      double* o = &res.o.at(b, r, h, 0);
      double& lse = res.lse[static_cast<std::size_t>((b * H + h) * nr + r)];
      if (nv == 0) {  // fully masked: O = 0 (already), LSE = -inf
        lse = kNegInf;
        continue;
      }
      gather(rq, b, h, i, i + 1, D, q);
      if (R > 0) gather(rqb, b, h, i, i + 1, R, qb);
      s.resize(static_cast<std::size_t>(nv));
      double m = kNegInf;
      for (std::int64_t j = 0; j < nv; ++j) {
        double sj = scale * dot(q.data(), &K[static_cast<std::size_t>(j * D)], D);
        if (R > 0) sj += dot(qb.data(), &Kb[static_cast<std::size_t>(j * R)], R);
        s[static_cast<std::size_t>(j)] = sj;
        m = std::max(m, sj);
      }
      double l = 0;
      for (std::int64_t j = 0; j < nv; ++j) {
        const double p = std::exp(s[static_cast<std::size_t>(j)] - m);
        l += p;
        const double* vj = &V[static_cast<std::size_t>(j * D)];
        for (std::int64_t x = 0; x < D; ++x) o[x] += p * vj[x];
      }
      for (std::int64_t x = 0; x < D; ++x) o[x] /= l;
      lse = m + std::log(l);
    }
  });
  return res;
}

template <class Read>
BackwardResult backward_impl(const ProblemSpec& spec, const Read& rq, const Read& rk, const Read& rv, const Read& rqb,
                             const Read& rkb, const Read& rdo, unsigned threads) {
  const std::int64_t B = spec.batch, H = spec.heads, D = spec.head_dim, R = spec.rank;
  const std::int64_t Nq = spec.seqlen_q, Nk = spec.seqlen_k;
  const double scale = spec.scale();
  BackwardResult res;
  res.forward.rows = all_rows(spec);
  res.forward.o = RefTensor(q_shape(spec));
  res.forward.lse.assign(static_cast<std::size_t>(B * H * Nq), 0.0);
  res.dq = RefTensor(q_shape(spec));
  res.dk = RefTensor(kv_shape(spec));
  res.dv = RefTensor(kv_shape(spec));
  // Factor gradients per (batch, head) first; summed over shared dimensions at the end.
  RefTensor dqb_full, dkb_full;
  if (R > 0) {
    dqb_full = RefTensor(Shape4{B, Nq, H, R});
    dkb_full = RefTensor(Shape4{B, Nk, H, R});
  }

  const std::int64_t per_head = std::clamp<std::int64_t>((kBackwardTasks + B * H - 1) / (B * H), 1, Nq);
  const std::int64_t chunk = (Nq + per_head - 1) / per_head;
  const std::int64_t chunks = (Nq + chunk - 1) / chunk;
  // Each task's dK, dV, dKb contributions, [key][D | D | R], added up in chunk order afterwards.
  const std::int64_t part_stride = 2 * D + R;
  std::vector<std::vector<double>> parts(static_cast<std::size_t>(B * H * chunks));

  detail::parallel_for(B * H * chunks, threads, [&](std::int64_t task) {
    const std::int64_t bh = task / chunks, c = task % chunks, b = bh / H, h = bh % H;
    const std::int64_t i0 = c * chunk, i1 = std::min(Nq, i0 + chunk);
    const std::int64_t keys = spec.visible_keys(i1 - 1);
    std::vector<double>& part = parts[static_cast<std::size_t>(task)];
    part.assign(static_cast<std::size_t>(Nk * part_stride), 0.0);
    std::vector<double> K, V, Kb, q, qb, dout, p, dq(static_cast<std::size_t>(D)), dqb(static_cast<std::size_t>(R));
    gather(rk, b, h, 0, keys, D, K);
    gather(rv, b, h, 0, keys, D, V);
    if (R > 0) gather(rkb, b, h, 0, keys, R, Kb);
    for (std::int64_t i = i0; i < i1; ++i) {
      const std::int64_t nv = spec.visible_keys(i);
      double& lse = res.forward.lse[static_cast<std::size_t>((b * H + h) * Nq + i)];
      if (nv == 0) {  // no key: O, dQ, dQb stay 0 and nothing flows to K, V, Kb
        lse = kNegInf;
        continue;
      }
      gather(rq, b, h, i, i + 1, D, q);
      gather(rdo, b, h, i, i + 1, D, dout);
      if (R > 0) gather(rqb, b, h, i, i + 1, R, qb);
      // Recompute P for this row (normalised probabilities).
      p.resize(static_cast<std::size_t>(nv));
      double m = kNegInf;
      for (std::int64_t j = 0; j < nv; ++j) {
        double sj = scale * dot(q.data(), &K[static_cast<std::size_t>(j * D)], D);
        if (R > 0) sj += dot(qb.data(), &Kb[static_cast<std::size_t>(j * R)], R);
        p[static_cast<std::size_t>(j)] = sj;
        m = std::max(m, sj);
      }
      // O in the forward's order of operations (unnormalised sum, then / l), so the backward's
      // O is bitwise the forward's.
      double l = 0;
      double* o = &res.forward.o.at(b, i, h, 0);
      for (std::int64_t j = 0; j < nv; ++j) {
        const double pj = std::exp(p[static_cast<std::size_t>(j)] - m);
        p[static_cast<std::size_t>(j)] = pj;
        l += pj;
        for (std::int64_t x = 0; x < D; ++x) o[x] += pj * V[static_cast<std::size_t>(j * D + x)];
      }
      for (std::int64_t x = 0; x < D; ++x) o[x] /= l;
      for (auto& pj : p) pj /= l;
      lse = m + std::log(l);
      // Delta_i = dO_i . O_i = sum_j P_ij dP_ij: the softmax Jacobian's rank-one part.
      const double delta = dot(dout.data(), o, D);
      std::fill(dq.begin(), dq.end(), 0.0);
      std::fill(dqb.begin(), dqb.end(), 0.0);
      for (std::int64_t j = 0; j < nv; ++j) {
        const double pj = p[static_cast<std::size_t>(j)];
        const double* kj = &K[static_cast<std::size_t>(j * D)];
        const double* vj = &V[static_cast<std::size_t>(j * D)];
        const double ds = pj * (dot(dout.data(), vj, D) - delta);
        double* dk = &part[static_cast<std::size_t>(j * part_stride)];
        double* dv = dk + D;
        for (std::int64_t x = 0; x < D; ++x) {
          dq[static_cast<std::size_t>(x)] += ds * kj[x];
          dk[x] += scale * ds * q[static_cast<std::size_t>(x)];
          dv[x] += pj * dout[static_cast<std::size_t>(x)];
        }
        if (R > 0) {
          const double* kbj = &Kb[static_cast<std::size_t>(j * R)];
          double* dkb = dv + D;
          for (std::int64_t x = 0; x < R; ++x) {
            dqb[static_cast<std::size_t>(x)] += ds * kbj[x];
            dkb[x] += ds * qb[static_cast<std::size_t>(x)];
          }
        }
      }
      for (std::int64_t x = 0; x < D; ++x) res.dq.at(b, i, h, x) = scale * dq[static_cast<std::size_t>(x)];
      for (std::int64_t x = 0; x < R; ++x) dqb_full.at(b, i, h, x) = dqb[static_cast<std::size_t>(x)];
    }
  });

  // Sum each head's chunk partials in chunk order (deterministic), one head per task.
  detail::parallel_for(B * H, threads, [&](std::int64_t bh) {
    const std::int64_t b = bh / H, h = bh % H;
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::vector<double>& part = parts[static_cast<std::size_t>(bh * chunks + c)];
      for (std::int64_t j = 0; j < Nk; ++j) {
        const double* src = &part[static_cast<std::size_t>(j * part_stride)];
        for (std::int64_t x = 0; x < D; ++x) {
          res.dk.at(b, j, h, x) += src[x];
          res.dv.at(b, j, h, x) += src[D + x];
        }
        for (std::int64_t x = 0; x < R; ++x) dkb_full.at(b, j, h, x) += src[2 * D + x];
      }
    }
  });

  if (R > 0) {
    // A shared factor's gradient is the sum over the (batch, head) pairs that read it.
    const auto reduce = [&](const RefTensor& full, FactorLayout l) {
      RefTensor out(factor_storage(spec, full.shape.n, l));
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = 0; n < full.shape.n; ++n)
          for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t x = 0; x < R; ++x)
              out.at(l.batch_shared ? 0 : b, n, l.head_shared ? 0 : h, x) += full.at(b, n, h, x);
      return out;
    };
    res.dqb = reduce(dqb_full, spec.qb_layout);
    res.dkb = reduce(dkb_full, spec.kb_layout);
  }
  return res;
}

// Bits of a float as the dtype, back to float: the rounding a kernel does when it stores P.
float round_f(DType t, float x) { return float(numeric::round_to(t, x)); }

}  // namespace

BackwardResult lowp_backward(const ProblemSpec& spec, const AttentionInputs& in, const HostTensor& dout,
                            unsigned threads) {
  check_inputs(spec, in);
  check_tensor("dout", dout, q_shape(spec), spec.dtype, {});
  const std::int64_t B = spec.batch, H = spec.heads, D = spec.head_dim, R = spec.rank;
  const std::int64_t Nq = spec.seqlen_q, Nk = spec.seqlen_k;
  const DType dt = spec.dtype;
  const float scale = spec.scale();
  BackwardResult res;
  res.forward.rows = all_rows(spec);
  res.forward.o = RefTensor(q_shape(spec));
  res.forward.lse.assign(static_cast<std::size_t>(B * H * Nq), 0.0);
  res.dq = RefTensor(q_shape(spec));
  res.dk = RefTensor(kv_shape(spec));
  res.dv = RefTensor(kv_shape(spec));
  std::vector<float> dqb_full, dkb_full;  // fp32 [B, N, H, R] before the reduction
  if (R > 0) {
    dqb_full.assign(static_cast<std::size_t>(B * Nq * H * R), 0.f);
    dkb_full.assign(static_cast<std::size_t>(B * Nk * H * R), 0.f);
  }
  const std::int64_t per_head = std::clamp<std::int64_t>((kBackwardTasks + B * H - 1) / (B * H), 1, Nq);
  const std::int64_t chunk = (Nq + per_head - 1) / per_head;
  const std::int64_t chunks = (Nq + chunk - 1) / chunk;
  const std::int64_t part_stride = 2 * D + R;
  std::vector<std::vector<float>> parts(static_cast<std::size_t>(B * H * chunks));
  const Read16 rq{&in.q}, rk{&in.k}, rv{&in.v}, rqb{&in.qb}, rkb{&in.kb}, rdo{&dout};

  detail::parallel_for(B * H * chunks, threads, [&](std::int64_t task) {
    const std::int64_t bh = task / chunks, c = task % chunks, b = bh / H, h = bh % H;
    const std::int64_t i0 = c * chunk, i1 = std::min(Nq, i0 + chunk);
    const std::int64_t keys = spec.visible_keys(i1 - 1);
    std::vector<float>& part = parts[static_cast<std::size_t>(task)];
    part.assign(static_cast<std::size_t>(Nk * part_stride), 0.f);
    std::vector<float> K, V, Kb, q, qb, g, s, o(static_cast<std::size_t>(D)), dq(static_cast<std::size_t>(D)),
        dqb(static_cast<std::size_t>(R));
    gather(rk, b, h, 0, keys, D, K);
    gather(rv, b, h, 0, keys, D, V);
    if (R > 0) gather(rkb, b, h, 0, keys, R, Kb);
    for (std::int64_t i = i0; i < i1; ++i) {
      const std::int64_t nv = spec.visible_keys(i);
      double& lse_out = res.forward.lse[static_cast<std::size_t>((b * H + h) * Nq + i)];
      if (nv == 0) {
        lse_out = kNegInf;
        continue;
      }
      gather(rq, b, h, i, i + 1, D, q);
      gather(rdo, b, h, i, i + 1, D, g);
      if (R > 0) gather(rqb, b, h, i, i + 1, R, qb);
      // The forward as lowp_forward computes it: O rounded to the dtype, LSE in fp32.
      s.resize(static_cast<std::size_t>(nv));
      float m = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = 0; j < nv; ++j) {
        float sj = scale * dot(q.data(), &K[static_cast<std::size_t>(j * D)], D);
        if (R > 0) sj += dot(qb.data(), &Kb[static_cast<std::size_t>(j * R)], R);
        s[static_cast<std::size_t>(j)] = sj;
        m = std::max(m, sj);
      }
      float l = 0;
      std::fill(o.begin(), o.end(), 0.f);
      for (std::int64_t j = 0; j < nv; ++j) {
        const float p = std::exp(s[static_cast<std::size_t>(j)] - m);
        l += p;
        const float p16 = round_f(dt, p);
        for (std::int64_t x = 0; x < D; ++x) o[static_cast<std::size_t>(x)] += p16 * V[static_cast<std::size_t>(j * D + x)];
      }
      for (std::int64_t x = 0; x < D; ++x) {
        o[static_cast<std::size_t>(x)] = round_f(dt, o[static_cast<std::size_t>(x)] / l);
        res.forward.o.at(b, i, h, x) = o[static_cast<std::size_t>(x)];
      }
      const float lse = m + std::log(l);
      lse_out = lse;
      // The backward of a plain implementation: fp32 P, dP, dS; P and dS rounded to the dtype
      // before each gradient product (fp32 accumulation); gradients rounded at the end.
      const float delta = dot(g.data(), o.data(), D);
      std::fill(dq.begin(), dq.end(), 0.f);
      std::fill(dqb.begin(), dqb.end(), 0.f);
      for (std::int64_t j = 0; j < nv; ++j) {
        const float p = std::exp(s[static_cast<std::size_t>(j)] - lse);
        const float dp = dot(g.data(), &V[static_cast<std::size_t>(j * D)], D);
        const float ds = round_f(dt, p * (dp - delta));
        const float p16 = round_f(dt, p);
        const float* kj = &K[static_cast<std::size_t>(j * D)];
        float* dk = &part[static_cast<std::size_t>(j * part_stride)];
        float* dv = dk + D;
        for (std::int64_t x = 0; x < D; ++x) {
          dq[static_cast<std::size_t>(x)] += ds * kj[x];
          dk[x] += ds * q[static_cast<std::size_t>(x)];
          dv[x] += p16 * g[static_cast<std::size_t>(x)];
        }
        if (R > 0) {
          const float* kbj = &Kb[static_cast<std::size_t>(j * R)];
          float* dkb = dv + D;
          for (std::int64_t x = 0; x < R; ++x) {
            dqb[static_cast<std::size_t>(x)] += ds * kbj[x];
            dkb[x] += ds * qb[static_cast<std::size_t>(x)];
          }
        }
      }
      for (std::int64_t x = 0; x < D; ++x) res.dq.at(b, i, h, x) = round_f(dt, scale * dq[static_cast<std::size_t>(x)]);
      for (std::int64_t x = 0; x < R; ++x)
        dqb_full[static_cast<std::size_t>(((b * Nq + i) * H + h) * R + x)] = dqb[static_cast<std::size_t>(x)];
    }
  });
  detail::parallel_for(B * H, threads, [&](std::int64_t bh) {
    const std::int64_t b = bh / H, h = bh % H;
    std::vector<float> acc(static_cast<std::size_t>(Nk * part_stride), 0.f);
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::vector<float>& part = parts[static_cast<std::size_t>(bh * chunks + c)];
      for (std::size_t e = 0; e < acc.size(); ++e) acc[e] += part[e];
    }
    for (std::int64_t j = 0; j < Nk; ++j) {
      const float* src = &acc[static_cast<std::size_t>(j * part_stride)];
      for (std::int64_t x = 0; x < D; ++x) {
        res.dk.at(b, j, h, x) = round_f(dt, scale * src[x]);
        res.dv.at(b, j, h, x) = round_f(dt, src[D + x]);
      }
      for (std::int64_t x = 0; x < R; ++x) dkb_full[static_cast<std::size_t>(((b * Nk + j) * H + h) * R + x)] = src[2 * D + x];
    }
  });
  if (R > 0) {
    const auto reduce = [&](const std::vector<float>& full, std::int64_t n_len, FactorLayout l) {
      const Shape4 st = factor_storage(spec, n_len, l);
      std::vector<float> acc(static_cast<std::size_t>(st.elements()), 0.f);
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t n = 0; n < n_len; ++n)
          for (std::int64_t h = 0; h < H; ++h)
            for (std::int64_t x = 0; x < R; ++x)
              acc[static_cast<std::size_t>((((l.batch_shared ? 0 : b) * st.n + n) * st.h + (l.head_shared ? 0 : h)) * R +
                                           x)] += full[static_cast<std::size_t>(((b * n_len + n) * H + h) * R + x)];
      RefTensor out(st);
      for (std::size_t e = 0; e < acc.size(); ++e) out.data[e] = round_f(dt, acc[e]);
      return out;
    };
    res.dqb = reduce(dqb_full, Nq, spec.qb_layout);
    res.dkb = reduce(dkb_full, Nk, spec.kb_layout);
  }
  return res;
}

namespace {

// Compare n values; ref(i) and got(i) give the values, where(i) names element i for messages.
template <class RefAt, class GotAt, class Where>
Comparison compare_impl(std::string_view name, std::int64_t n, RefAt ref, GotAt got, Where where) {
  Comparison c;
  c.name = std::string(name);
  double diff2 = 0, ref2 = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double r = ref(i), g = got(i);
    const bool finite = std::isfinite(r) && std::isfinite(g);
    // Equal infinities (a masked row's LSE) agree; anything else non-finite is wrong.
    if (!finite && !(r == g && !std::isnan(r))) {
      if (c.bad++ == 0) c.first_bad = fmt::format("{}{} = {} (reference {})", name, where(i), g, r);
      continue;
    }
    if (!finite) continue;
    const double d = g - r;
    diff2 += d * d;
    ref2 += r * r;
    c.max_abs = std::max(c.max_abs, std::fabs(d));
    ++c.compared;
  }
  c.rel_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  return c;
}

std::string where4(const Shape4& s, std::int64_t i, std::string_view row_name, std::int64_t row_value) {
  const std::int64_t x = i % s.x, h = (i / s.x) % s.h, b = i / (s.x * s.h * s.n);
  return fmt::format("[b={}, {}={}, h={}, x={}]", b, row_name, row_value, h, x);
}

void check_same_shape(std::string_view name, const Shape4& ref, const Shape4& got) {
  if (ref != got)
    bad_input(fmt::format("compare {}: output shape {} differs from the reference's {}", name, got.str(), ref.str()));
}

}  // namespace

std::vector<std::int64_t> all_rows(const ProblemSpec& spec) {
  std::vector<std::int64_t> rows(static_cast<std::size_t>(spec.seqlen_q));
  for (std::int64_t i = 0; i < spec.seqlen_q; ++i) rows[static_cast<std::size_t>(i)] = i;
  return rows;
}

std::vector<std::int64_t> sample_rows(const ProblemSpec& spec, std::int64_t max_rows) {
  const std::int64_t nq = spec.seqlen_q;
  if (max_rows >= nq) return all_rows(spec);
  std::vector<std::int64_t> rows;
  if (max_rows <= 0) return rows;
  if (spec.mask == MaskKind::causal && nq > spec.seqlen_k) {
    const std::int64_t first_visible = nq - spec.seqlen_k;  // row i sees i - (nq - nk) + 1 keys
    rows.push_back(first_visible - 1);
    rows.push_back(first_visible);
  }
  const auto evenly = std::max<std::int64_t>(2, max_rows - std::int64_t(rows.size()));
  for (std::int64_t k = 0; k < evenly; ++k)
    rows.push_back(static_cast<std::int64_t>(std::llround(double(k) * double(nq - 1) / double(evenly - 1))));
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  // The boundary rows may push the count over by at most two; drop interior even-spaced ones.
  while (std::int64_t(rows.size()) > max_rows) rows.erase(rows.begin() + std::int64_t(rows.size()) / 2);
  return rows;
}

RefInputs widen(const AttentionInputs& in) {
  const auto widen_one = [](const HostTensor& t) {
    if (t.empty()) return RefTensor();
    RefTensor out(t.storage_shape());
    // Storage is contiguous in storage_shape(): a flat decode keeps the factor's own shape.
    const auto bits = t.bits();
    for (std::size_t i = 0; i < bits.size(); ++i) out.data[i] = numeric::decode(t.dtype(), bits[i]);
    return out;
  };
  return RefInputs{widen_one(in.q), widen_one(in.k), widen_one(in.v), widen_one(in.qb), widen_one(in.kb)};
}

ForwardResult reference_forward(const ProblemSpec& spec, const AttentionInputs& in, std::span<const std::int64_t> rows,
                                unsigned threads) {
  check_inputs(spec, in);
  return forward_impl(spec, Read16{&in.q}, Read16{&in.k}, Read16{&in.v}, Read16{&in.qb}, Read16{&in.kb}, rows, threads);
}

ForwardResult reference_forward(const ProblemSpec& spec, const RefInputs& in, std::span<const std::int64_t> rows,
                                unsigned threads) {
  check_inputs(spec, in);
  return forward_impl(spec, Read64{&in.q, {}}, Read64{&in.k, {}}, Read64{&in.v, {}}, Read64{&in.qb, spec.qb_layout},
                      Read64{&in.kb, spec.kb_layout}, rows, threads);
}

BackwardResult reference_backward(const ProblemSpec& spec, const AttentionInputs& in, const HostTensor& dout,
                                  unsigned threads) {
  check_inputs(spec, in);
  if (dout.shape() != q_shape(spec))
    bad_input(fmt::format("reference: dO has shape {}; the problem needs {}", dout.shape().str(), q_shape(spec).str()));
  return backward_impl(spec, Read16{&in.q}, Read16{&in.k}, Read16{&in.v}, Read16{&in.qb}, Read16{&in.kb},
                       Read16{&dout}, threads);
}

BackwardResult reference_backward(const ProblemSpec& spec, const RefInputs& in, const RefTensor& dout,
                                  unsigned threads) {
  check_inputs(spec, in);
  check_tensor("dO", dout, q_shape(spec));
  return backward_impl(spec, Read64{&in.q, {}}, Read64{&in.k, {}}, Read64{&in.v, {}}, Read64{&in.qb, spec.qb_layout},
                       Read64{&in.kb, spec.kb_layout}, Read64{&dout, {}}, threads);
}

ForwardResult lowp_forward(const ProblemSpec& spec, const AttentionInputs& in, std::span<const std::int64_t> rows,
                           unsigned threads) {
  check_inputs(spec, in);
  check_rows(spec, rows);
  const std::int64_t B = spec.batch, H = spec.heads, D = spec.head_dim, R = spec.rank;
  const auto nr = static_cast<std::int64_t>(rows.size());
  const DType dt = spec.dtype;
  ForwardResult res;
  res.rows.assign(rows.begin(), rows.end());
  res.o = RefTensor(Shape4{B, nr, H, D});
  res.lse.assign(static_cast<std::size_t>(B * H * nr), 0.0);
  if (nr == 0) return res;

  const float scale = spec.scale();
  const std::int64_t chunk = forward_chunk_rows(nr, B * H, threads);
  const std::int64_t chunks = (nr + chunk - 1) / chunk;
  const Read16 rq{&in.q}, rk{&in.k}, rv{&in.v}, rqb{&in.qb}, rkb{&in.kb};
  detail::parallel_for(B * H * chunks, threads, [&](std::int64_t task) {
    const std::int64_t bh = task / chunks, c = task % chunks, b = bh / H, h = bh % H;
    const std::int64_t r0 = c * chunk, r1 = std::min(nr, r0 + chunk);
    const std::int64_t keys = spec.visible_keys(rows[static_cast<std::size_t>(r1 - 1)]);
    // 16-bit values widen exactly to fp32, and a product of two of them is exact in fp32
    // (11 + 11 significant bits <= 24); only the sums round, as on a tensor core.
    std::vector<float> K, V, Kb, q, qb, s, acc(static_cast<std::size_t>(D));
    gather(rk, b, h, 0, keys, D, K);
    gather(rv, b, h, 0, keys, D, V);
    if (R > 0) gather(rkb, b, h, 0, keys, R, Kb);
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t i = rows[static_cast<std::size_t>(r)];
      const std::int64_t nv = spec.visible_keys(i);
      double& lse = res.lse[static_cast<std::size_t>((b * H + h) * nr + r)];
      if (nv == 0) {
        lse = kNegInf;
        continue;
      }
      gather(rq, b, h, i, i + 1, D, q);
      if (R > 0) gather(rqb, b, h, i, i + 1, R, qb);
      s.resize(static_cast<std::size_t>(nv));
      float m = -std::numeric_limits<float>::infinity();
      for (std::int64_t j = 0; j < nv; ++j) {
        float sj = scale * dot(q.data(), &K[static_cast<std::size_t>(j * D)], D);
        if (R > 0) sj += dot(qb.data(), &Kb[static_cast<std::size_t>(j * R)], R);
        s[static_cast<std::size_t>(j)] = sj;
        m = std::max(m, sj);
      }
      float l = 0;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (std::int64_t j = 0; j < nv; ++j) {
        const float p = std::exp(s[static_cast<std::size_t>(j)] - m);
        l += p;
        const float p16 = round_f(dt, p);
        const float* vj = &V[static_cast<std::size_t>(j * D)];
        for (std::int64_t x = 0; x < D; ++x) acc[static_cast<std::size_t>(x)] += p16 * vj[x];
      }
      for (std::int64_t x = 0; x < D; ++x) res.o.at(b, r, h, x) = numeric::round_to(dt, acc[static_cast<std::size_t>(x)] / l);
      lse = double(m + std::log(l));
    }
  });
  return res;
}

std::string Comparison::str() const {
  std::string s = fmt::format("{}: rel_l2 {:.3e}, max_abs {:.3e} over {} values", name, rel_l2, max_abs, compared);
  if (bad > 0) s += fmt::format("; {} bad (NaN/Inf/unwritten), first {}", bad, first_bad);
  return s;
}

Comparison compare_rows(const ForwardResult& ref, const HostTensor& got, std::string_view name) {
  const Shape4& rs = ref.o.shape;
  const Shape4& gs = got.shape();
  if (gs.b != rs.b || gs.h != rs.h || gs.x != rs.x || (!ref.rows.empty() && gs.n <= ref.rows.back()))
    bad_input(fmt::format("compare {}: output shape {} does not hold the reference's {} rows of [{}, *, {}, {}]", name,
                          gs.str(), ref.rows.size(), rs.b, rs.h, rs.x));
  const auto row_of = [&](std::int64_t i) { return ref.rows[static_cast<std::size_t>((i / (rs.x * rs.h)) % rs.n)]; };
  return compare_impl(
      name, rs.elements(), [&](std::int64_t i) { return ref.o.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) {
        const std::int64_t x = i % rs.x, h = (i / rs.x) % rs.h, b = i / (rs.x * rs.h * rs.n);
        return got.get(b, row_of(i), h, x);
      },
      [&](std::int64_t i) { return where4(rs, i, "row", row_of(i)); });
}

Comparison compare_lse(const ForwardResult& ref, std::span<const float> got, std::string_view name) {
  const std::int64_t B = ref.o.shape.b, H = ref.o.shape.h, nr = ref.o.shape.n;
  const auto total = static_cast<std::int64_t>(got.size());
  const std::int64_t nq = B * H > 0 ? total / (B * H) : 0;
  if (nq * B * H != total || (!ref.rows.empty() && nq <= ref.rows.back()))
    bad_input(fmt::format("compare {}: {} values do not form [B={}, H={}, Nq] holding the reference's rows", name, total,
                          B, H));
  const auto got_index = [&](std::int64_t i) {
    const std::int64_t bh = i / nr, r = i % nr;
    return static_cast<std::size_t>(bh * nq + ref.rows[static_cast<std::size_t>(r)]);
  };
  return compare_impl(
      name, B * H * nr, [&](std::int64_t i) { return ref.lse[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) { return double(got[got_index(i)]); },
      [&](std::int64_t i) {
        return fmt::format("[b={}, h={}, row={}]", i / (H * nr), (i / nr) % H, ref.rows[static_cast<std::size_t>(i % nr)]);
      });
}

Comparison compare(const ForwardResult& ref, const ForwardResult& got, std::string_view name) {
  if (ref.rows != got.rows) bad_input(fmt::format("compare {}: the two results hold different rows", name));
  check_same_shape(name, ref.o.shape, got.o.shape);
  const Shape4& s = ref.o.shape;
  return compare_impl(
      name, s.elements(), [&](std::int64_t i) { return ref.o.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) { return got.o.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) {
        return where4(s, i, "row", ref.rows[static_cast<std::size_t>((i / (s.x * s.h)) % s.n)]);
      });
}

Comparison compare(const RefTensor& ref, const HostTensor& got, std::string_view name) {
  check_same_shape(name, ref.shape, got.shape());
  const Shape4& s = ref.shape;
  return compare_impl(
      name, s.elements(), [&](std::int64_t i) { return ref.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) {
        const std::int64_t x = i % s.x, h = (i / s.x) % s.h, n = (i / (s.x * s.h)) % s.n, b = i / (s.x * s.h * s.n);
        return got.get(b, n, h, x);
      },
      [&](std::int64_t i) { return where4(s, i, "n", (i / (s.x * s.h)) % s.n); });
}

Comparison compare(const RefTensor& ref, std::span<const float> got, std::string_view name) {
  if (got.size() != ref.data.size())
    bad_input(fmt::format("compare {}: output holds {} values; the reference shape {} has {}", name, got.size(),
                          ref.shape.str(), ref.data.size()));
  const Shape4& s = ref.shape;
  return compare_impl(
      name, s.elements(), [&](std::int64_t i) { return ref.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) { return double(got[static_cast<std::size_t>(i)]); },
      [&](std::int64_t i) { return where4(s, i, "n", (i / (s.x * s.h)) % s.n); });
}

Comparison compare(const RefTensor& ref, const RefTensor& got, std::string_view name) {
  check_same_shape(name, ref.shape, got.shape);
  const Shape4& s = ref.shape;
  return compare_impl(
      name, s.elements(), [&](std::int64_t i) { return ref.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) { return got.data[static_cast<std::size_t>(i)]; },
      [&](std::int64_t i) { return where4(s, i, "n", (i / (s.x * s.h)) % s.n); });
}

const Comparison& require_finite(const Comparison& c) {
  if (c.bad > 0)
    throw Error(ErrorCode::internal, fmt::format("{}: {} element(s) are NaN, infinite or unwritten; first: {}", c.name,
                                                 c.bad, c.first_bad));
  return c;
}

double rel_l2(const ForwardResult& ref, const HostTensor& got_o) { return require_finite(compare_rows(ref, got_o)).rel_l2; }

double rel_l2(const RefTensor& ref, const HostTensor& got) { return require_finite(compare(ref, got, "output")).rel_l2; }

double lowp_tolerance(const ForwardResult& ref, const ForwardResult& lowp, double floor) {
  return std::max(floor, 2.0 * require_finite(compare(ref, lowp, "lowp O")).rel_l2);
}

}  // namespace flashbias
