#include "flashbias/flashbias.hpp"

namespace flashbias {

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::ok: return "ok";
    case ErrorCode::invalid_argument: return "invalid_argument";
    case ErrorCode::unsupported: return "unsupported";
    case ErrorCode::no_gpu: return "no_gpu";
    case ErrorCode::driver_error: return "driver_error";
    case ErrorCode::nvrtc_unavailable: return "nvrtc_unavailable";
    case ErrorCode::compile_failed: return "compile_failed";
    case ErrorCode::launch_failed: return "launch_failed";
    case ErrorCode::cache_error: return "cache_error";
    case ErrorCode::not_found: return "not_found";
    case ErrorCode::internal: return "internal";
  }
  return "unknown";
}

}  // namespace flashbias
