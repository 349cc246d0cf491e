"""Minimal ctypes binding of libflashbias.so's C ABI (include/flashbias/flashbias.h) for the
benchmarks: our kernels run in the same process, on the same tensors, as the PyTorch peers."""
import ctypes
import math
import os
from pathlib import Path

import torch

F16, BF16 = 0, 1
MASK_NONE, MASK_CAUSAL = 0, 1


class Strides(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int64), ("seq", ctypes.c_int64), ("head", ctypes.c_int64)]


class ForwardArgs(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int32), ("mask", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("heads", ctypes.c_int64), ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("rank", ctypes.c_int64),
        ("q", ctypes.c_void_p), ("q_stride", Strides),
        ("k", ctypes.c_void_p), ("k_stride", Strides),
        ("v", ctypes.c_void_p), ("v_stride", Strides),
        ("qb", ctypes.c_void_p), ("qb_stride", Strides),
        ("kb", ctypes.c_void_p), ("kb_stride", Strides),
        ("o", ctypes.c_void_p), ("o_stride", Strides),
        ("lse", ctypes.c_void_p),
        ("softmax_scale", ctypes.c_float), ("has_softmax_scale", ctypes.c_int32),
    ]


def _find_library():
    env = os.environ.get("FLASHBIAS_LIB")
    if env:
        return env
    root = Path(__file__).resolve().parent.parent
    for cand in (root / "build" / "runtime" / "libflashbias.so", root / "build" / "libflashbias.so"):
        if cand.exists():
            return str(cand)
    raise FileNotFoundError("libflashbias.so not found: build the project or set FLASHBIAS_LIB")


class FlashBias:
    def __init__(self, device=-1, policy=0):
        self.lib = ctypes.CDLL(_find_library())
        self.lib.flashbias_last_error.restype = ctypes.c_char_p
        self.lib.flashbias_forward.argtypes = [ctypes.c_void_p, ctypes.POINTER(ForwardArgs), ctypes.c_void_p]
        self.lib.flashbias_context_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
        self.lib.flashbias_context_destroy.argtypes = [ctypes.c_void_p]
        torch.cuda.init()
        torch.empty(1, device="cuda")  # make the primary context current on this thread
        ctx = ctypes.c_void_p()
        self._check(self.lib.flashbias_context_create(device, policy, ctypes.byref(ctx)))
        self.ctx = ctx

    def _check(self, status):
        if status != 0:
            raise RuntimeError(f"flashbias status {status}: {self.lib.flashbias_last_error().decode()}")

    @staticmethod
    def _strides(t, factor=False):
        """Element strides (batch, seq, head). A factor with batch or head extent 1 is broadcast
        (stride 0); Q/K/V/O keep their real strides (the API refuses 0 there)."""
        if t is None:
            return Strides(0, 0, 0)
        if t.stride(3) != 1:
            raise ValueError("the last dimension must be contiguous")
        b, h = t.stride(0), t.stride(2)
        if factor:
            b = b if t.shape[0] > 1 else 0
            h = h if t.shape[2] > 1 else 0
        return Strides(b, t.stride(1), h)

    def prepare(self, q, k, v, qb=None, kb=None, causal=False, softmax_scale=None, out=None, lse=None):
        """Build the argument block once (so the timed call is only the C call). Tensors are BSHD;
        factors may have batch/head extent 1 (broadcast)."""
        B, Nq, H, D = q.shape
        Nk = k.shape[1]
        R = 0 if qb is None else qb.shape[3]
        out = torch.empty_like(q) if out is None else out
        lse = torch.empty(B, H, Nq, device=q.device, dtype=torch.float32) if lse is None else lse
        a = ForwardArgs()
        a.dtype = BF16 if q.dtype == torch.bfloat16 else F16
        a.mask = MASK_CAUSAL if causal else MASK_NONE
        a.batch, a.heads, a.seqlen_q, a.seqlen_k, a.head_dim, a.rank = B, H, Nq, Nk, D, R
        a.q, a.q_stride = q.data_ptr(), self._strides(q)
        a.k, a.k_stride = k.data_ptr(), self._strides(k)
        a.v, a.v_stride = v.data_ptr(), self._strides(v)
        if R:
            a.qb, a.qb_stride = qb.data_ptr(), self._strides(qb, factor=True)
            a.kb, a.kb_stride = kb.data_ptr(), self._strides(kb, factor=True)
        a.o, a.o_stride = out.data_ptr(), self._strides(out)
        a.lse = lse.data_ptr()
        if softmax_scale is not None:
            a.softmax_scale, a.has_softmax_scale = softmax_scale, 1
        keep = (q, k, v, qb, kb, out, lse)
        return a, out, lse, keep

    def run(self, args):
        stream = torch.cuda.current_stream().cuda_stream
        self._check(self.lib.flashbias_forward(self.ctx, ctypes.byref(args), ctypes.c_void_p(stream)))

    def forward(self, q, k, v, qb=None, kb=None, causal=False, softmax_scale=None):
        a, out, lse, _ = self.prepare(q, k, v, qb, kb, causal, softmax_scale)
        self.run(a)
        return out, lse
