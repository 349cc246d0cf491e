// The C ABI (include/flashbias/flashbias.h) over the C++ API. Every entry point catches every
// exception: nothing may unwind into C (or into Python through ctypes).
#include "flashbias/flashbias.h"

#include <cstdint>
#include <new>
#include <string>

#include <fmt/format.h>

#include "flashbias/flashbias.hpp"

#ifndef FLASHBIAS_VERSION_STRING
#error "FLASHBIAS_VERSION_STRING must be defined by the build (runtime/CMakeLists.txt)"
#endif

struct flashbias_context {
  flashbias::Context context;
};

namespace {

thread_local std::string t_last_error;

flashbias_status to_status(flashbias::ErrorCode code) noexcept {
  using flashbias::ErrorCode;
  switch (code) {
    case ErrorCode::ok: return FLASHBIAS_OK;
    case ErrorCode::invalid_argument: return FLASHBIAS_INVALID_ARGUMENT;
    case ErrorCode::unsupported: return FLASHBIAS_UNSUPPORTED;
    case ErrorCode::no_gpu: return FLASHBIAS_NO_GPU;
    case ErrorCode::driver_error: return FLASHBIAS_DRIVER_ERROR;
    case ErrorCode::nvrtc_unavailable: return FLASHBIAS_NVRTC_UNAVAILABLE;
    case ErrorCode::compile_failed: return FLASHBIAS_COMPILE_FAILED;
    case ErrorCode::launch_failed: return FLASHBIAS_LAUNCH_FAILED;
    case ErrorCode::cache_error: return FLASHBIAS_CACHE_ERROR;
    case ErrorCode::not_found: return FLASHBIAS_NOT_FOUND;
    case ErrorCode::internal: return FLASHBIAS_INTERNAL;
  }
  return FLASHBIAS_INTERNAL;
}

flashbias_status fail(flashbias_status status, const char* message) noexcept {
  try {
    t_last_error = message;
  } catch (...) {
    t_last_error.clear();  // out of memory for the message: the status still tells what happened
  }
  return status;
}

// Run `f`, translating exceptions to a status and the thread-local message.
template <class F>
flashbias_status guarded(F&& f) noexcept {
  try {
    f();
    t_last_error.clear();
    return FLASHBIAS_OK;
  } catch (const flashbias::Error& e) {
    return fail(to_status(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(FLASHBIAS_INTERNAL, "out of host memory");
  } catch (const std::exception& e) {
    return fail(FLASHBIAS_INTERNAL, e.what());
  } catch (...) {
    return fail(FLASHBIAS_INTERNAL, "unknown exception");
  }
}

flashbias::Strides strides(const flashbias_strides& s) { return flashbias::Strides{s.batch, s.seq, s.head}; }

void check_enums(std::int32_t dtype, std::int32_t mask) {
  using flashbias::Error;
  using flashbias::ErrorCode;
  // The C++ enums are 8-bit: reject what would wrap; validation checks the rest.
  if (dtype < 0 || dtype > 255)
    throw Error(ErrorCode::invalid_argument, fmt::format("dtype has the invalid value {} (f16 = 0, bf16 = 1)", dtype));
  if (mask < 0 || mask > 255)
    throw Error(ErrorCode::invalid_argument, fmt::format("mask has the invalid value {} (none = 0, causal = 1)", mask));
}

flashbias::BackwardArgs backward_args(const flashbias_backward_args* args) {
  using flashbias::Error;
  using flashbias::ErrorCode;
  if (args == nullptr) throw Error(ErrorCode::invalid_argument, "args is null");
  check_enums(args->dtype, args->mask);
  if (args->mode != FLASHBIAS_BACKWARD_DETERMINISTIC)
    throw Error(ErrorCode::invalid_argument,
                fmt::format("mode has the invalid value {} (deterministic = 0)", args->mode));
  flashbias::BackwardArgs a;
  a.dtype = static_cast<flashbias::DType>(args->dtype);
  a.mask = static_cast<flashbias::MaskKind>(args->mask);
  a.batch = args->batch;
  a.heads = args->heads;
  a.seqlen_q = args->seqlen_q;
  a.seqlen_k = args->seqlen_k;
  a.head_dim = args->head_dim;
  a.rank = args->rank;
  a.q = args->q, a.q_stride = strides(args->q_stride);
  a.k = args->k, a.k_stride = strides(args->k_stride);
  a.v = args->v, a.v_stride = strides(args->v_stride);
  a.qb = args->qb, a.qb_stride = strides(args->qb_stride);
  a.kb = args->kb, a.kb_stride = strides(args->kb_stride);
  a.o = args->o, a.o_stride = strides(args->o_stride);
  a.dout = args->dout, a.dout_stride = strides(args->dout_stride);
  a.lse = args->lse;
  a.dq = args->dq, a.dq_stride = strides(args->dq_stride);
  a.dk = args->dk, a.dk_stride = strides(args->dk_stride);
  a.dv = args->dv, a.dv_stride = strides(args->dv_stride);
  a.dqb = args->dqb, a.dqb_stride = strides(args->dqb_stride);
  a.dkb = args->dkb, a.dkb_stride = strides(args->dkb_stride);
  if (args->has_softmax_scale != 0) a.softmax_scale = args->softmax_scale;
  a.mode = flashbias::BackwardMode::deterministic;
  a.workspace = args->workspace;
  a.workspace_bytes = static_cast<std::size_t>(args->workspace_bytes);
  return a;
}

// The options common to both create calls, validated before any driver work (so that a bad value
// is reported as such also on a machine without a GPU).
flashbias::ContextOptions context_options(std::int32_t device, std::int32_t policy) {
  using flashbias::Error;
  using flashbias::ErrorCode;
  if (device < -1) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("device has the invalid value {} (a CUDA ordinal >= 0, or -1 for the current "
                            "context's device)",
                            device));
  }
  if (policy < FLASHBIAS_POLICY_HEURISTIC || policy > FLASHBIAS_POLICY_CACHE_ONLY) {
    throw Error(ErrorCode::invalid_argument,
                fmt::format("policy has the invalid value {} (heuristic = 0, tune = 1, cache_only = 2)", policy));
  }
  flashbias::ContextOptions options;
  options.device = device;
  options.policy = static_cast<flashbias::Policy>(policy);
  return options;
}

bool flag(const char* name, std::int32_t value) {
  if (value != 0 && value != 1) {
    throw flashbias::Error(flashbias::ErrorCode::invalid_argument,
                           fmt::format("{} has the invalid value {} (0 = off, 1 = on)", name, value));
  }
  return value == 1;
}

// Checks `out` first: on any failure after that, *out is null.
template <class MakeOptions>
flashbias_status create_context(flashbias_context** out, MakeOptions&& make_options) noexcept {
  return guarded([&] {
    if (out == nullptr) throw flashbias::Error(flashbias::ErrorCode::invalid_argument, "out is null");
    *out = nullptr;
    const flashbias::ContextOptions options = make_options();
    *out = new flashbias_context{flashbias::Context(options)};
  });
}

}  // namespace

extern "C" {

flashbias_status flashbias_context_create(int device, int policy, flashbias_context** out) {
  return create_context(out, [&] { return context_options(device, policy); });
}

void flashbias_context_options_init(flashbias_context_options* opts) {
  if (opts == nullptr) return;
  const flashbias::ContextOptions defaults;
  opts->device = defaults.device;
  opts->policy = static_cast<std::int32_t>(defaults.policy);
  opts->check_pointers = defaults.check_pointers ? 1 : 0;
  opts->portable = defaults.portable ? 1 : 0;
}

flashbias_status flashbias_context_create_with_options(const flashbias_context_options* opts,
                                                       flashbias_context** out) {
  return create_context(out, [&] {
    if (opts == nullptr) throw flashbias::Error(flashbias::ErrorCode::invalid_argument, "opts is null");
    flashbias::ContextOptions options = context_options(opts->device, opts->policy);
    options.check_pointers = flag("check_pointers", opts->check_pointers);
    options.portable = flag("portable", opts->portable);
    return options;
  });
}

void flashbias_context_destroy(flashbias_context* ctx) {
  // Destructors do not throw (driver failures there are ignored); delete of null is a no-op.
  delete ctx;
}

flashbias_status flashbias_forward(flashbias_context* ctx, const flashbias_forward_args* args,
                                   flashbias_stream stream) {
  return guarded([&] {
    using flashbias::Error;
    using flashbias::ErrorCode;
    if (ctx == nullptr) throw Error(ErrorCode::invalid_argument, "ctx is null");
    if (args == nullptr) throw Error(ErrorCode::invalid_argument, "args is null");
    check_enums(args->dtype, args->mask);
    flashbias::ForwardArgs a;
    a.dtype = static_cast<flashbias::DType>(args->dtype);
    a.mask = static_cast<flashbias::MaskKind>(args->mask);
    a.batch = args->batch;
    a.heads = args->heads;
    a.seqlen_q = args->seqlen_q;
    a.seqlen_k = args->seqlen_k;
    a.head_dim = args->head_dim;
    a.rank = args->rank;
    a.q = args->q;
    a.q_stride = strides(args->q_stride);
    a.k = args->k;
    a.k_stride = strides(args->k_stride);
    a.v = args->v;
    a.v_stride = strides(args->v_stride);
    a.qb = args->qb;
    a.qb_stride = strides(args->qb_stride);
    a.kb = args->kb;
    a.kb_stride = strides(args->kb_stride);
    a.o = args->o;
    a.o_stride = strides(args->o_stride);
    a.lse = args->lse;
    if (args->has_softmax_scale != 0) a.softmax_scale = args->softmax_scale;
    ctx->context.forward(a, stream);
  });
}

flashbias_status flashbias_backward_workspace_size(flashbias_context* ctx, const flashbias_backward_args* args,
                                                   uint64_t* bytes) {
  return guarded([&] {
    using flashbias::Error;
    using flashbias::ErrorCode;
    if (ctx == nullptr) throw Error(ErrorCode::invalid_argument, "ctx is null");
    if (bytes == nullptr) throw Error(ErrorCode::invalid_argument, "bytes is null");
    *bytes = ctx->context.backward_workspace_size(backward_args(args));
  });
}

flashbias_status flashbias_backward(flashbias_context* ctx, const flashbias_backward_args* args,
                                    flashbias_stream stream) {
  return guarded([&] {
    if (ctx == nullptr) throw flashbias::Error(flashbias::ErrorCode::invalid_argument, "ctx is null");
    ctx->context.backward(backward_args(args), stream);
  });
}

const char* flashbias_last_error(void) { return t_last_error.c_str(); }

const char* flashbias_status_string(flashbias_status status) {
  switch (status) {
    case FLASHBIAS_OK: return "ok";
    case FLASHBIAS_INVALID_ARGUMENT: return "invalid argument";
    case FLASHBIAS_UNSUPPORTED: return "unsupported";
    case FLASHBIAS_NO_GPU: return "no GPU";
    case FLASHBIAS_DRIVER_ERROR: return "CUDA driver error";
    case FLASHBIAS_NVRTC_UNAVAILABLE: return "NVRTC unavailable";
    case FLASHBIAS_COMPILE_FAILED: return "kernel compilation failed";
    case FLASHBIAS_LAUNCH_FAILED: return "kernel launch failed";
    case FLASHBIAS_CACHE_ERROR: return "cache error";
    case FLASHBIAS_NOT_FOUND: return "kernel not found";
    case FLASHBIAS_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* flashbias_version(void) { return FLASHBIAS_VERSION_STRING; }

}  // extern "C"
