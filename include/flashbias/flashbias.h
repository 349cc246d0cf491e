/* FlashBias JIT, C ABI.
 *
 *   O = softmax(scale * Q K^T + Qb Kb^T + mask) V
 *
 * Every function returns a flashbias_status; on failure flashbias_last_error() returns a
 * thread-local message naming the argument and the limit. Nothing here aborts the process. */
#ifndef FLASHBIAS_H_
#define FLASHBIAS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FLASHBIAS_API __declspec(dllexport)
#else
#define FLASHBIAS_API __attribute__((visibility("default")))
#endif

typedef struct CUstream_st* flashbias_stream; /* a CUstream (cudaStream_t); NULL = legacy default stream */

typedef enum flashbias_status {
  FLASHBIAS_OK = 0,
  FLASHBIAS_INVALID_ARGUMENT = 1,
  FLASHBIAS_UNSUPPORTED = 2,
  FLASHBIAS_NO_GPU = 3,
  FLASHBIAS_DRIVER_ERROR = 4,
  FLASHBIAS_NVRTC_UNAVAILABLE = 5,
  FLASHBIAS_COMPILE_FAILED = 6,
  FLASHBIAS_LAUNCH_FAILED = 7,
  FLASHBIAS_CACHE_ERROR = 8,
  FLASHBIAS_NOT_FOUND = 9,
  FLASHBIAS_INTERNAL = 10
} flashbias_status;

typedef enum flashbias_dtype { FLASHBIAS_F16 = 0, FLASHBIAS_BF16 = 1 } flashbias_dtype;
typedef enum flashbias_mask { FLASHBIAS_MASK_NONE = 0, FLASHBIAS_MASK_CAUSAL = 1 } flashbias_mask;
typedef enum flashbias_policy {
  FLASHBIAS_POLICY_HEURISTIC = 0,
  FLASHBIAS_POLICY_TUNE = 1,
  FLASHBIAS_POLICY_CACHE_ONLY = 2
} flashbias_policy;

/* Element strides of [batch, seq, heads, dim]; the last dim is contiguous. */
typedef struct flashbias_strides {
  int64_t batch, seq, head;
} flashbias_strides;

typedef struct flashbias_forward_args {
  int32_t dtype; /* flashbias_dtype */
  int32_t mask;  /* flashbias_mask */
  int64_t batch, heads, seqlen_q, seqlen_k, head_dim, rank;
  const void* q;  flashbias_strides q_stride;
  const void* k;  flashbias_strides k_stride;
  const void* v;  flashbias_strides v_stride;
  const void* qb; flashbias_strides qb_stride; /* batch/head strides may be 0 (broadcast) */
  const void* kb; flashbias_strides kb_stride;
  void* o;        flashbias_strides o_stride;
  float* lse;            /* optional [batch, heads, seqlen_q] fp32 */
  float softmax_scale;   /* used when has_softmax_scale != 0, else 1/sqrt(head_dim) */
  int32_t has_softmax_scale;
} flashbias_forward_args;

/* Backward (issue 6): gradients of O = softmax(scale Q K^T + Qb Kb^T + mask) V with respect to
 * Q, K, V, Qb and Kb, given dO and the forward's O and LSE. dqb/dkb have the factors' own shape:
 * where qb/kb broadcast (batch or head stride 0), the gradient is the sum over that dimension and
 * dqb/dkb hold one slice there (their stride in that dimension is ignored). */
typedef enum flashbias_backward_mode {
  FLASHBIAS_BACKWARD_DETERMINISTIC = 0 /* bitwise identical results run to run (no float atomics) */
} flashbias_backward_mode;

typedef struct flashbias_backward_args {
  int32_t dtype; /* flashbias_dtype */
  int32_t mask;  /* flashbias_mask */
  int64_t batch, heads, seqlen_q, seqlen_k, head_dim, rank;
  const void* q;  flashbias_strides q_stride;
  const void* k;  flashbias_strides k_stride;
  const void* v;  flashbias_strides v_stride;
  const void* qb; flashbias_strides qb_stride; /* batch/head strides may be 0 (broadcast) */
  const void* kb; flashbias_strides kb_stride;
  const void* o;  flashbias_strides o_stride;   /* the forward's output */
  const void* dout; flashbias_strides dout_stride; /* gradient of the loss w.r.t. O */
  const float* lse;   /* required: the forward's [batch, heads, seqlen_q] fp32 LSE */
  void* dq;  flashbias_strides dq_stride;
  void* dk;  flashbias_strides dk_stride;
  void* dv;  flashbias_strides dv_stride;
  void* dqb; flashbias_strides dqb_stride; /* required when rank > 0 */
  void* dkb; flashbias_strides dkb_stride;
  float softmax_scale;   /* used when has_softmax_scale != 0, else 1/sqrt(head_dim) */
  int32_t has_softmax_scale;
  int32_t mode;          /* flashbias_backward_mode */
  /* Scratch device memory of at least flashbias_backward_workspace_size() bytes, 16-byte aligned,
   * used in stream order. NULL: the call allocates and frees it in stream order itself
   * (cuMemAllocAsync/cuMemFreeAsync), which never synchronises either. */
  void* workspace;
  uint64_t workspace_bytes;
} flashbias_backward_args;

typedef struct flashbias_context flashbias_context;

/* device: CUDA ordinal, or -1 for the current context's device (device 0 if none).
 * policy: a flashbias_policy. The same as flashbias_context_create_with_options with
 * check_pointers = 1 and portable = 0. */
FLASHBIAS_API flashbias_status flashbias_context_create(int device, int policy, flashbias_context** out);

/* The options of flashbias_context_create_with_options (flashbias::ContextOptions in C). Fill it
 * with flashbias_context_options_init() first, then set what differs from the defaults. */
typedef struct flashbias_context_options {
  int32_t device;         /* CUDA device ordinal, or -1 (default) for the current context's device
                             (device 0 if none) */
  int32_t policy;         /* flashbias_policy; default FLASHBIAS_POLICY_HEURISTIC */
  int32_t check_pointers; /* 1 (default): verify that every pointer is device memory (a driver query
                             per pointer); 0: skip the check (e.g. system-allocated memory on
                             HMM/ATS systems) */
  int32_t portable;       /* 1: run the portable kernel family (mma.sync, sm_80 and newer) even where
                             a faster family exists (the wgmma/TMA forward on sm_90a), for comparison
                             and testing; kernels are compiled for the plain arch (sm_90, not sm_90a),
                             so their cache and bundle entries stay apart. 0 (default): the fastest
                             family for each problem */
} flashbias_context_options;

/* Set *opts to the defaults: device -1, FLASHBIAS_POLICY_HEURISTIC, check_pointers 1, portable 0.
 * NULL is a no-op. */
FLASHBIAS_API void flashbias_context_options_init(flashbias_context_options* opts);
/* As flashbias_context_create, with every option of the C++ API. Each field is validated (device
 * >= -1, policy a flashbias_policy, check_pointers and portable 0 or 1): a bad one is
 * FLASHBIAS_INVALID_ARGUMENT naming the field and the allowed values. *out is NULL on failure. */
FLASHBIAS_API flashbias_status flashbias_context_create_with_options(const flashbias_context_options* opts,
                                                                    flashbias_context** out);
FLASHBIAS_API void flashbias_context_destroy(flashbias_context* ctx);
FLASHBIAS_API flashbias_status flashbias_forward(flashbias_context* ctx, const flashbias_forward_args* args,
                                                 flashbias_stream stream);
/* Scratch bytes a backward call with these arguments needs (pointers are not read). */
FLASHBIAS_API flashbias_status flashbias_backward_workspace_size(flashbias_context* ctx,
                                                                 const flashbias_backward_args* args,
                                                                 uint64_t* bytes);
FLASHBIAS_API flashbias_status flashbias_backward(flashbias_context* ctx, const flashbias_backward_args* args,
                                                  flashbias_stream stream);
/* The message of the last failed call on this thread ("" if none). Valid until the next call. */
FLASHBIAS_API const char* flashbias_last_error(void);
FLASHBIAS_API const char* flashbias_status_string(flashbias_status status);
FLASHBIAS_API const char* flashbias_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FLASHBIAS_H_ */
