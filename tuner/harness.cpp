#include "tuner/harness.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>

#include "runtime/driver_api.h"

namespace flashbias {

namespace {
const driver::Api& drv() { return driver::api(); }
}  // namespace

CUcontext activate_primary_context(int ordinal) {
  const driver::Api& d = drv();
  CUdevice dev = 0;
  driver::check(d.cuDeviceGet(&dev, ordinal), "cuDeviceGet");
  CUcontext ctx = nullptr;
  driver::check(d.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
  driver::check(d.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
  return ctx;
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  driver::check(drv().cuMemAlloc(&ptr_, bytes), "cuMemAlloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != 0 && !driver::exiting()) drv().cuMemFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = 0;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != 0 && !driver::exiting()) drv().cuMemFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = 0;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::upload(const void* src, std::size_t bytes) {
  if (bytes > bytes_) throw Error(ErrorCode::internal, fmt::format("upload of {} bytes into {}", bytes, bytes_));
  if (bytes) driver::check(drv().cuMemcpyHtoD(ptr_, src, bytes), "cuMemcpyHtoD");
}

void DeviceBuffer::download(void* dst, std::size_t bytes) const {
  if (bytes > bytes_) throw Error(ErrorCode::internal, fmt::format("download of {} bytes from {}", bytes, bytes_));
  if (bytes) driver::check(drv().cuMemcpyDtoH(dst, ptr_, bytes), "cuMemcpyDtoH");
}

DeviceProblem::DeviceProblem(const ProblemSpec& spec, std::uint64_t seed) : spec_(spec) {
  validate(spec_);
  inputs_ = make_inputs(spec_, seed);
  q_ = DeviceBuffer(inputs_.q.bytes());
  k_ = DeviceBuffer(inputs_.k.bytes());
  v_ = DeviceBuffer(inputs_.v.bytes());
  if (spec_.rank > 0) {
    qb_ = DeviceBuffer(inputs_.qb.bytes());
    kb_ = DeviceBuffer(inputs_.kb.bytes());
  }
  o_ = DeviceBuffer(inputs_.q.bytes());
  lse_ = DeviceBuffer(std::size_t(spec_.batch * spec_.heads * spec_.seqlen_q) * sizeof(float));
  upload();
}

void DeviceProblem::regenerate(std::uint64_t seed) {
  inputs_ = make_inputs(spec_, seed);
  fwd_ref_.reset();
  bwd_ref_.reset();
  upload();
}

const DeviceProblem::ForwardReference& DeviceProblem::forward_reference(std::span<const std::int64_t> rows) {
  if (!fwd_ref_ || !std::equal(rows.begin(), rows.end(), fwd_ref_->rows.begin(), fwd_ref_->rows.end())) {
    fwd_ref_.reset();  // a failed computation below leaves no stale reference behind
    ForwardReference r;
    r.rows.assign(rows.begin(), rows.end());
    r.ref = reference_forward(spec_, inputs_, rows);
    r.lowp = lowp_forward(spec_, inputs_, rows);
    fwd_ref_ = std::move(r);
    ++reference_computations_;
  }
  return *fwd_ref_;
}

const DeviceProblem::BackwardReference& DeviceProblem::backward_reference() {
  if (!backward_enabled()) throw std::logic_error("DeviceProblem::backward_reference before enable_backward");
  if (!bwd_ref_) {
    BackwardReference r;
    r.ref = reference_backward(spec_, inputs_, dout_);
    r.lowp = lowp_backward(spec_, inputs_, dout_);
    bwd_ref_ = std::move(r);
    ++reference_computations_;
  }
  return *bwd_ref_;
}

void DeviceProblem::set_inputs(AttentionInputs inputs) {
  auto same = [](const char* name, const HostTensor& want, const HostTensor& got) {
    if (got.dtype() != want.dtype() || got.shape() != want.shape() || got.layout() != want.layout() ||
        got.bytes() != want.bytes())
      throw std::invalid_argument(fmt::format("set_inputs: {} does not have the problem's dtype, shape and layout", name));
  };
  same("q", inputs_.q, inputs.q);
  same("k", inputs_.k, inputs.k);
  same("v", inputs_.v, inputs.v);
  same("qb", inputs_.qb, inputs.qb);
  same("kb", inputs_.kb, inputs.kb);
  inputs_ = std::move(inputs);
  fwd_ref_.reset();
  bwd_ref_.reset();
  upload();
}

void DeviceProblem::upload() {
  q_.upload(inputs_.q.data(), inputs_.q.bytes());
  k_.upload(inputs_.k.data(), inputs_.k.bytes());
  v_.upload(inputs_.v.data(), inputs_.v.bytes());
  if (spec_.rank > 0) {
    qb_.upload(inputs_.qb.data(), inputs_.qb.bytes());
    kb_.upload(inputs_.kb.data(), inputs_.kb.bytes());
  }
}

ForwardArgs DeviceProblem::forward_args() const {
  ForwardArgs a;
  a.dtype = spec_.dtype;
  a.batch = spec_.batch;
  a.heads = spec_.heads;
  a.seqlen_q = spec_.seqlen_q;
  a.seqlen_k = spec_.seqlen_k;
  a.head_dim = spec_.head_dim;
  a.rank = spec_.rank;
  a.q = q_.get();
  a.q_stride = inputs_.q.strides();
  a.k = k_.get();
  a.k_stride = inputs_.k.strides();
  a.v = v_.get();
  a.v_stride = inputs_.v.strides();
  if (spec_.rank > 0) {
    a.qb = qb_.get();
    a.qb_stride = inputs_.qb.strides();
    a.kb = kb_.get();
    a.kb_stride = inputs_.kb.strides();
  }
  a.o = o_.get();
  a.o_stride = inputs_.q.strides();  // O has Q's shape and layout
  a.lse = static_cast<float*>(lse_.get());
  a.softmax_scale = spec_.softmax_scale;
  a.mask = spec_.mask;
  return a;
}

void DeviceProblem::poison_outputs() {
  driver::check(drv().cuMemsetD16(o_.ptr(), kPoison16, o_.bytes() / 2), "cuMemsetD16");
  driver::check(drv().cuMemsetD32(lse_.ptr(), kPoison32, lse_.bytes() / 4), "cuMemsetD32");
}

void DeviceProblem::download(HostTensor& o, std::vector<float>& lse) const {
  o = HostTensor(spec_.dtype, inputs_.q.shape());
  o_.download(o.data(), o.bytes());
  lse.assign(lse_.bytes() / sizeof(float), 0.f);
  lse_.download(lse.data(), lse_.bytes());
}

std::size_t DeviceProblem::device_bytes() const {
  return q_.bytes() + k_.bytes() + v_.bytes() + qb_.bytes() + kb_.bytes() + o_.bytes() + lse_.bytes();
}

void DeviceProblem::enable_backward(std::uint64_t seed) {
  dout_ = make_grad_output(spec_, seed);
  bwd_ref_.reset();
  dout_buf_ = DeviceBuffer(dout_.bytes());
  dout_buf_.upload(dout_.data(), dout_.bytes());
  dq_ = DeviceBuffer(inputs_.q.bytes());
  dk_ = DeviceBuffer(inputs_.k.bytes());
  dv_ = DeviceBuffer(inputs_.v.bytes());
  if (spec_.rank > 0) {
    dqb_ = DeviceBuffer(inputs_.qb.bytes());
    dkb_ = DeviceBuffer(inputs_.kb.bytes());
  }
}

namespace {
// Contiguous strides of a factor's storage shape (extent 1 on shared dims).
Strides storage_strides(const HostTensor& t) {
  const Shape4 s = t.storage_shape();
  return Strides{s.n * s.h * s.x, s.h * s.x, s.x};
}
}  // namespace

BackwardArgs DeviceProblem::backward_args(void* workspace, std::size_t workspace_bytes) const {
  if (!backward_enabled()) throw Error(ErrorCode::internal, "DeviceProblem::backward_args before enable_backward");
  const ForwardArgs f = forward_args();
  BackwardArgs a;
  a.dtype = f.dtype;
  a.batch = f.batch;
  a.heads = f.heads;
  a.seqlen_q = f.seqlen_q;
  a.seqlen_k = f.seqlen_k;
  a.head_dim = f.head_dim;
  a.rank = f.rank;
  a.q = f.q, a.q_stride = f.q_stride;
  a.k = f.k, a.k_stride = f.k_stride;
  a.v = f.v, a.v_stride = f.v_stride;
  a.qb = f.qb, a.qb_stride = f.qb_stride;
  a.kb = f.kb, a.kb_stride = f.kb_stride;
  a.o = f.o, a.o_stride = f.o_stride;
  a.lse = f.lse;
  a.dout = dout_buf_.get(), a.dout_stride = dout_.strides();
  a.dq = dq_.get(), a.dq_stride = inputs_.q.strides();
  a.dk = dk_.get(), a.dk_stride = inputs_.k.strides();
  a.dv = dv_.get(), a.dv_stride = inputs_.v.strides();
  if (spec_.rank > 0) {
    a.dqb = dqb_.get(), a.dqb_stride = storage_strides(inputs_.qb);
    a.dkb = dkb_.get(), a.dkb_stride = storage_strides(inputs_.kb);
  }
  a.softmax_scale = f.softmax_scale;
  a.mask = f.mask;
  a.workspace = workspace;
  a.workspace_bytes = workspace_bytes;
  return a;
}

void DeviceProblem::poison_gradients() {
  for (const DeviceBuffer* b : {&dq_, &dk_, &dv_, &dqb_, &dkb_})
    if (b->bytes() > 0) driver::check(drv().cuMemsetD16(b->ptr(), kPoison16, b->bytes() / 2), "cuMemsetD16");
}

DeviceProblem::Gradients DeviceProblem::download_gradients() const {
  Gradients g;
  g.dq = HostTensor(spec_.dtype, inputs_.q.shape());
  g.dk = HostTensor(spec_.dtype, inputs_.k.shape());
  g.dv = HostTensor(spec_.dtype, inputs_.v.shape());
  dq_.download(g.dq.data(), g.dq.bytes());
  dk_.download(g.dk.data(), g.dk.bytes());
  dv_.download(g.dv.data(), g.dv.bytes());
  if (spec_.rank > 0) {
    g.dqb = HostTensor(spec_.dtype, inputs_.qb.storage_shape());
    g.dkb = HostTensor(spec_.dtype, inputs_.kb.storage_shape());
    dqb_.download(g.dqb.data(), g.dqb.bytes());
    dkb_.download(g.dkb.data(), g.dkb.bytes());
  }
  return g;
}

BackwardCheck check_backward(DeviceProblem& problem, const std::function<void(const ForwardArgs&)>& forward,
                             const std::function<void(const BackwardArgs&)>& backward, std::uint64_t seed) {
  const ProblemSpec& spec = problem.spec();
  if (!problem.backward_enabled()) problem.enable_backward(seed);
  problem.poison_outputs();
  forward(problem.forward_args());
  problem.poison_gradients();
  backward(problem.backward_args());
  driver::check(drv().cuCtxSynchronize(), "cuCtxSynchronize (after the backward kernels)", ErrorCode::launch_failed);
  const DeviceProblem::Gradients got = problem.download_gradients();

  const DeviceProblem::BackwardReference& refs = problem.backward_reference();
  const BackwardResult& ref = refs.ref;
  const BackwardResult& lowp = refs.lowp;
  BackwardCheck r;
  auto add = [&](const RefTensor& want, const HostTensor& have, const RefTensor& plain, const char* name) {
    r.grads.push_back(compare(want, have, name));
    const double lowp_err = require_finite(compare(want, plain, std::string("plain ") + name)).rel_l2;
    r.lowp_error.push_back(lowp_err);
    r.tolerance.push_back(tolerance_for(spec.dtype, lowp_err));
  };
  add(ref.dq, got.dq, lowp.dq, "dQ");
  add(ref.dk, got.dk, lowp.dk, "dK");
  add(ref.dv, got.dv, lowp.dv, "dV");
  if (spec.rank > 0) {
    add(ref.dqb, got.dqb, lowp.dqb, "dQb");
    add(ref.dkb, got.dkb, lowp.dkb, "dKb");
  }
  r.pass = true;
  for (std::size_t i = 0; i < r.grads.size(); ++i) r.pass = r.pass && r.grads[i].ok(r.tolerance[i]);
  return r;
}

std::string BackwardCheck::str() const {
  std::string s;
  for (std::size_t i = 0; i < grads.size(); ++i)
    s += fmt::format("{}{} | tol {:.1e} (plain {:.2e}){}", i ? "\n" : "", grads[i].str(), tolerance[i], lowp_error[i],
                     grads[i].ok(tolerance[i]) ? "" : "  FAIL");
  return s + (pass ? "\nPASS" : "\nFAIL");
}

double tolerance_for(DType dtype, double lowp_error) {
  constexpr double kBound = 2e-3;  // the project's bound for fp16 inputs (shared/BENCH.md)
  if (dtype == DType::f16) return kBound;
  return std::max(kBound, 2.0 * lowp_error);
}

std::string CheckResult::str() const {
  return fmt::format("{} | {} | tol {:.1e} (plain low-precision error {:.2e}) over {} rows: {}", o.str(), lse.str(),
                     tolerance, lowp_error, rows_checked, pass ? "PASS" : "FAIL");
}

CheckResult check_forward(DeviceProblem& problem, const std::function<void(const ForwardArgs&)>& launch,
                          std::int64_t max_rows) {
  const ProblemSpec& spec = problem.spec();
  problem.poison_outputs();
  launch(problem.forward_args());
  driver::check(drv().cuCtxSynchronize(), "cuCtxSynchronize (after the forward kernel)", ErrorCode::launch_failed);
  HostTensor o;
  std::vector<float> lse;
  problem.download(o, lse);

  const std::vector<std::int64_t> rows = sample_rows(spec, max_rows);
  const DeviceProblem::ForwardReference& refs = problem.forward_reference(rows);
  const ForwardResult& ref = refs.ref;
  const ForwardResult& lowp = refs.lowp;
  CheckResult r;
  r.rows_checked = std::int64_t(rows.size());
  r.o = compare_rows(ref, o, "O");
  r.lse = compare_lse(ref, lse, "LSE");
  r.lowp_error = compare(ref, lowp, "O").rel_l2;
  r.tolerance = tolerance_for(spec.dtype, r.lowp_error);
  r.pass = r.o.ok(r.tolerance) && r.lse.ok(r.tolerance);
  return r;
}

double time_ms(const std::function<void()>& launch, CUstream stream, int warmup, int repeats, double* spread_ms) {
  const driver::Api& d = drv();
  for (int i = 0; i < warmup; ++i) launch();
  std::vector<CUevent> events(std::size_t(repeats) + 1);
  for (CUevent& e : events) driver::check(d.cuEventCreate(&e, CU_EVENT_DEFAULT), "cuEventCreate");
  std::vector<double> ms(std::size_t(repeats), 0.0);
  try {
    driver::check(d.cuEventRecord(events[0], stream), "cuEventRecord");
    for (int i = 0; i < repeats; ++i) {
      launch();
      driver::check(d.cuEventRecord(events[std::size_t(i) + 1], stream), "cuEventRecord");
    }
    driver::check(d.cuEventSynchronize(events.back()), "cuEventSynchronize", ErrorCode::launch_failed);
    for (int i = 0; i < repeats; ++i) {
      float t = 0;
      driver::check(d.cuEventElapsedTime(&t, events[std::size_t(i)], events[std::size_t(i) + 1]), "cuEventElapsedTime");
      ms[std::size_t(i)] = t;
    }
  } catch (...) {
    for (CUevent e : events) d.cuEventDestroy(e);
    throw;
  }
  for (CUevent e : events) d.cuEventDestroy(e);
  std::sort(ms.begin(), ms.end());
  if (spread_ms) *spread_ms = ms.back() - ms.front();
  return ms[ms.size() / 2];
}

}  // namespace flashbias
