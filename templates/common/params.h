// Kernel parameter blocks, shared verbatim by the host (which fills them) and the device code
// (which reads them). Plain C++ with fixed-width fields only: no host or CUDA headers.
#pragma once

namespace flashbias {

/// Forward parameters. Strides are in elements; the last dimension of every tensor is contiguous.
struct FwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* qb;  // null when rank == 0
  const void* kb;
  void* o;
  float* lse;  // [batch, heads, seqlen_q] contiguous; may be null

  long long q_batch_stride, q_row_stride, q_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long qb_batch_stride, qb_row_stride, qb_head_stride;
  long long kb_batch_stride, kb_row_stride, kb_head_stride;
  long long o_batch_stride, o_row_stride, o_head_stride;

  int batch;
  int heads;
  int seqlen_q;
  int seqlen_k;
  int num_m_blocks;  // ceil(seqlen_q / block_m)
  float scale;       // softmax scale, applied to Q K^T only (the bias enters unscaled)
};

}  // namespace flashbias
