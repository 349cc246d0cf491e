// Empty on purpose. clang's __clang_cuda_intrinsics.h includes this CUDA SDK header for the
// host-side declarations of the sm_70 match/reduce functions; the manifest tool parses device code
// only and must not depend on a CUDA installation, so the include resolves here instead.
