"""flash_bias_func: the FlashBias paper's Python API over libflashbias.so, with autograd. Two entry
points run the same launches: opaque custom ops (torch.library), which torch.compile keeps in one
graph, and, for eager calls, a torch.autograd.Function that costs a fraction of their CPU time.
Both capture into CUDA graphs.

    O = softmax(softmax_scale * Q K^T + Qb Kb^T) V      (causal: bottom-right aligned)

Layouts: q [B, Nq, H, D]; k, v [B, Nk, H, D]; q_bias [B|1, Nq, H|1, R]; k_bias [B|1, Nk, H|1, R].
A factor's batch or head extent of 1 (where B or H is larger) broadcasts: the kernels read it with
stride 0, and its gradient is the sum over that dimension (the library reduces, in a fixed order).
Tensors are passed by pointer and strides: any strides work as long as the last dimension is
contiguous; nothing is copied, except (documented on flash_bias_func) the incoming gradient dO
when autograd hands a layout the kernels cannot read, and an expanded factor in the backward.
Calls run on the caller's current CUDA stream; the forward and backward neither allocate inside the
library nor synchronise (the backward's scratch memory is a torch tensor), so they capture into
CUDA graphs once the kernels are built (run the call once before capturing).
"""
import ctypes
import math
from typing import Optional, Tuple

import torch

from . import _library, runtime

_DTYPES = {torch.float16: _library.F16, torch.bfloat16: _library.BF16}
_NAMES = ("q", "k", "v", "q_bias", "k_bias")


# ---------------------------------------------------------------------------------------------
# Argument checks: run on the user's tensors (also on fake tensors while torch.compile traces, so
# they only read shapes, strides, dtypes and devices).

def _check_inputs(q, k, v, q_bias, k_bias, mask, causal, softmax_scale):
    if mask is not None:
        raise NotImplementedError(
            "flash_bias_func: the additive `mask` argument is not supported by FlashBias JIT's kernels "
            "(only causal masking is: causal=True, bottom-right aligned). Pass mask=None; a low-rank "
            "additive mask can be folded into q_bias/k_bias.")
    tensors = {"q": q, "k": k, "v": v, "q_bias": q_bias, "k_bias": k_bias}
    for name in ("q", "k", "v"):
        if not isinstance(tensors[name], torch.Tensor):
            raise TypeError(f"flash_bias_func: {name} must be a torch.Tensor, got {type(tensors[name]).__name__}")
    if (q_bias is None) != (k_bias is None):
        given, missing = ("q_bias", "k_bias") if k_bias is None else ("k_bias", "q_bias")
        raise ValueError(f"flash_bias_func: {given} is given but {missing} is None; pass both bias factors "
                         f"(rank R >= 1) or neither (plain attention)")
    names = _NAMES if q_bias is not None else _NAMES[:3]
    for name in names[3:]:
        if not isinstance(tensors[name], torch.Tensor):
            raise TypeError(f"flash_bias_func: {name} must be a torch.Tensor or None, got "
                            f"{type(tensors[name]).__name__}")
    for name in names:
        if tensors[name].dim() != 4:
            layout = "[batch, seqlen, heads, rank]" if "bias" in name else "[batch, seqlen, heads, head_dim]"
            raise ValueError(f"flash_bias_func: {name} must be 4-D {layout}; got shape {tuple(tensors[name].shape)}")

    if q.dtype not in _DTYPES:
        raise TypeError(f"flash_bias_func: q has dtype {q.dtype}; FlashBias runs torch.float16 and torch.bfloat16")
    for name in names[1:]:
        if tensors[name].dtype != q.dtype:
            raise TypeError(f"flash_bias_func: {name} has dtype {tensors[name].dtype} but q has {q.dtype}; "
                            f"q, k, v, q_bias and k_bias must share one dtype (cast with .to({q.dtype}))")

    B, Nq, H, D = q.shape
    Nk = k.shape[1]
    if k.shape[0] != B or k.shape[2] != H or k.shape[3] != D:
        raise ValueError(f"flash_bias_func: k has shape {tuple(k.shape)}; with q of shape {tuple(q.shape)} it must "
                         f"be [{B}, seqlen_k, {H}, {D}]")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"flash_bias_func: v has shape {tuple(v.shape)}; it must equal k's {tuple(k.shape)}")
    if q_bias is not None:
        R = q_bias.shape[3]
        for name, t, n, nname in (("q_bias", q_bias, Nq, "seqlen_q"), ("k_bias", k_bias, Nk, "seqlen_k")):
            if (t.shape[0] not in (1, B)) or t.shape[1] != n or (t.shape[2] not in (1, H)):
                raise ValueError(
                    f"flash_bias_func: {name} has shape {tuple(t.shape)}; it must be [B|1, {nname}, H|1, R] = "
                    f"[{B} or 1, {n}, {H} or 1, R] (extent 1 broadcasts over batch or heads)")
        if k_bias.shape[3] != R:
            raise ValueError(f"flash_bias_func: q_bias has rank {R} (last dim) but k_bias has {k_bias.shape[3]}; "
                             f"the factors' last dims must match")
        if R == 0:
            raise ValueError("flash_bias_func: q_bias and k_bias have rank 0 (last dim); pass q_bias=k_bias=None "
                             "for plain attention")

    if isinstance(causal, torch.Tensor) or not (isinstance(causal, bool) or causal in (0, 1)):
        raise TypeError(f"flash_bias_func: causal must be a bool, got {type(causal).__name__}")
    if softmax_scale is not None:
        # Any real number: Python and NumPy scalars (the paper's examples pass 1 / np.sqrt(d)).
        if isinstance(softmax_scale, (torch.Tensor, bool, str)):
            raise TypeError(f"flash_bias_func: softmax_scale must be a real number or None, got "
                            f"{type(softmax_scale).__name__}")
        if not math.isfinite(float(softmax_scale)):
            raise ValueError(f"flash_bias_func: softmax_scale must be finite, got {softmax_scale}")

    if q.device.type != "cuda":
        raise ValueError(f"flash_bias_func: q is on {q.device}; FlashBias runs on CUDA tensors")
    for name in names[1:]:
        if tensors[name].device != q.device:
            raise ValueError(f"flash_bias_func: {name} is on {tensors[name].device} but q is on {q.device}; all "
                             f"tensors must be on one CUDA device")

    for name in names:
        t = tensors[name]
        if t.shape[3] > 1 and t.stride(3) != 1:
            raise ValueError(f"flash_bias_func: {name} has strides {tuple(t.stride())}: its last dimension must be "
                             f"contiguous (stride 1); pass {name}.contiguous()")
    for name in names[:3]:
        t = tensors[name]
        for d in range(3):
            if t.shape[d] > 1 and t.stride(d) == 0:
                raise ValueError(f"flash_bias_func: {name} is an expanded view (stride 0 in dimension {d} of shape "
                                 f"{tuple(t.shape)}); q, k and v need real storage: pass {name}.contiguous()")


# ---------------------------------------------------------------------------------------------
# Argument blocks.

def _readable(t):
    """t itself when the kernels can read its layout (last dim contiguous, no stride 0 where the
    extent is > 1), else a contiguous copy. Used only where a layout comes from autograd or the
    compiler rather than from the caller (whose tensors _check_inputs has already checked)."""
    if t.shape[3] > 1 and t.stride(3) != 1:
        return t.contiguous()
    for d in range(3):
        if t.shape[d] > 1 and t.stride(d) == 0:
            return t.contiguous()
    return t


def _strides(t, shared=(False, False)):
    """flashbias_strides for a [B, N, H, X] tensor (see _strides_of)."""
    return _strides_of(t.shape, t.stride(), shared)


def _strides_of(shape, st, shared=(False, False)):
    """flashbias_strides for a [B, N, H, X] layout. Shared (broadcast) dims get 0. A dim of extent
    1 gets its contiguous stride: the kernels never step along it, the library refuses 0 outside
    the factors, and a multiple of X keeps the alignment class of the layout."""
    X = shape[3]
    canon = (shape[1] * shape[2] * X, shape[2] * X, X)
    b = 0 if shared[0] else (st[0] if shape[0] > 1 else canon[0])
    n = st[1] if shape[1] > 1 else canon[1]
    h = 0 if shared[1] else (st[2] if shape[2] > 1 else canon[2])
    return _library.Strides(b, n, h)


def _contiguous_strides(shape):
    strides, n = [], 1
    for extent in reversed(shape):
        strides.append(n)
        n *= extent
    return tuple(reversed(strides))


def _expanded(t):
    """An expanded view (stride 0 where the extent is > 1) in the batch or head dim."""
    return any(t.shape[d] > 1 and t.stride(d) == 0 for d in (0, 2))


_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _stream(device):
    """The device's current CUDA stream as a handle. The raw query skips building a
    torch.cuda.Stream object (a few microseconds per call); the public one is the fallback."""
    if _raw_stream is not None:
        return ctypes.c_void_p(_raw_stream(device.index))
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def _fill_common(a, q, k, v, q_bias, k_bias, causal, softmax_scale, qb_shared, kb_shared):
    B, Nq, H, D = q.shape
    a.dtype = _DTYPES[q.dtype]
    a.mask = _library.MASK_CAUSAL if causal else _library.MASK_NONE
    a.batch, a.heads, a.seqlen_q, a.seqlen_k, a.head_dim = B, H, Nq, k.shape[1], D
    a.rank = 0 if q_bias is None else q_bias.shape[3]
    a.q, a.q_stride = q.data_ptr(), _strides(q)
    a.k, a.k_stride = k.data_ptr(), _strides(k)
    a.v, a.v_stride = v.data_ptr(), _strides(v)
    if q_bias is not None:
        a.qb, a.qb_stride = q_bias.data_ptr(), _strides(q_bias, qb_shared)
        a.kb, a.kb_stride = k_bias.data_ptr(), _strides(k_bias, kb_shared)
    if softmax_scale is not None:
        a.softmax_scale, a.has_softmax_scale = softmax_scale, 1


def _forward_args(q, k, v, q_bias, k_bias, causal, softmax_scale, out, lse):
    B, _, H, _ = q.shape
    a = _library.ForwardArgs()
    qs = runtime.factor_broadcast(q_bias, B, H) if q_bias is not None else (False, False)
    ks = runtime.factor_broadcast(k_bias, B, H) if k_bias is not None else (False, False)
    _fill_common(a, q, k, v, q_bias, k_bias, causal, softmax_scale, qs, ks)
    a.o, a.o_stride = out.data_ptr(), _strides(out)
    a.lse = lse.data_ptr()
    return a


class ForwardCall:
    """One forward call's argument block, built once and launched by run() on the current stream
    as often as wanted (same pointers): the lowest-overhead way in (benchmarks, hand-made CUDA
    graphs). Keeps its tensors alive. No autograd. out/lse are allocated unless given
    (out: [B, Nq, H, D] in q's dtype, any strides with a contiguous last dim; lse: contiguous fp32
    [B, H, Nq])."""

    def __init__(self, q, k, v, q_bias=None, k_bias=None, causal=False, softmax_scale=None, out=None, lse=None):
        _check_inputs(q, k, v, q_bias, k_bias, None, causal, softmax_scale)
        B, Nq, H, D = q.shape
        self.out = torch.empty((B, Nq, H, D), dtype=q.dtype, device=q.device) if out is None else out
        self.lse = torch.empty((B, H, Nq), dtype=torch.float32, device=q.device) if lse is None else lse
        if self.out.shape != q.shape or self.out.dtype != q.dtype or self.out.device != q.device:
            raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} on {q.device}")
        if self.out.stride(3) != 1:
            raise ValueError(f"out has strides {tuple(self.out.stride())}: its last dimension must be contiguous")
        if (tuple(self.lse.shape) != (B, H, Nq) or self.lse.dtype != torch.float32 or not self.lse.is_contiguous()
                or self.lse.device != q.device):
            raise ValueError(f"lse must be a contiguous float32 tensor of shape {(B, H, Nq)} on {q.device}")
        self.args = _forward_args(q, k, v, q_bias, k_bias, bool(causal),
                                  None if softmax_scale is None else float(softmax_scale), self.out, self.lse)
        self.device = q.device
        self.context = runtime.get_context(q.device.index)
        self._keep = (q, k, v, q_bias, k_bias)
        self._ref = ctypes.byref(self.args)

    def run(self):
        """Launch on the current CUDA stream of the tensors' device; returns out."""
        lib = self.context.lib
        lib.check(lib.forward(self.context.handle, self._ref, _stream(self.device)), "flash_bias_func forward")
        return self.out


# ---------------------------------------------------------------------------------------------
# The custom ops.

# Argument blocks are built once per layout (shapes, strides, dtype, flags, device) and copied per
# call with the new pointers: building one field by field through ctypes costs tens of microseconds,
# more than a small problem's kernels take. Bounded: cleared when it reaches _MAX_TEMPLATES.
_MAX_TEMPLATES = 256
_fwd_templates = {}
_bwd_templates = {}


def _layout(tensors):
    return tuple(None if t is None else (t.shape, t.stride()) for t in tensors)


def _remember(cache, key, value):
    if len(cache) >= _MAX_TEMPLATES:
        cache.clear()
    cache[key] = value


def _forward_impl(q, k, v, q_bias, k_bias, causal, softmax_scale):
    """The forward launch (both entry points; layouts the kernels can read): out [B, Nq, H, D] and
    lse [B, H, Nq] float32."""
    B, Nq, H, D = q.shape
    device = q.device
    out = torch.empty((B, Nq, H, D), dtype=q.dtype, device=device)
    lse = torch.empty((B, H, Nq), dtype=torch.float32, device=device)
    key = (device.index, q.dtype, causal, softmax_scale, _layout((q, k, v, q_bias, k_bias)))
    template = _fwd_templates.get(key)
    if template is None:
        # out is allocated contiguous here, so its strides follow from q's shape (in the key).
        template = _forward_args(q, k, v, q_bias, k_bias, causal, softmax_scale, out, lse)
        _remember(_fwd_templates, key, template)
    a = _library.ForwardArgs.from_buffer_copy(template)
    a.q, a.k, a.v, a.o, a.lse = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr()
    if q_bias is not None:
        a.qb, a.kb = q_bias.data_ptr(), k_bias.data_ptr()
    ctx = runtime.get_context(device.index)
    ctx.lib.check(ctx.lib.forward(ctx.handle, ctypes.byref(a), _stream(device)), "flash_bias_func forward")
    return out, lse


@torch.library.custom_op("flashbias::attention_forward", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_bias: Optional[torch.Tensor],
                k_bias: Optional[torch.Tensor], causal: bool,
                softmax_scale: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    # Layouts here are the caller's (checked by flash_bias_func) unless a compiler changed them.
    q, k, v = _readable(q), _readable(k), _readable(v)
    if q_bias is not None:
        q_bias, k_bias = _readable(q_bias), _readable(k_bias)
    return _forward_impl(q, k, v, q_bias, k_bias, causal, softmax_scale)


@_forward_op.register_fake
def _forward_fake(q, k, v, q_bias, k_bias, causal, softmax_scale):
    B, Nq, H, D = q.shape
    return q.new_empty((B, Nq, H, D)), q.new_empty((B, H, Nq), dtype=torch.float32)


def _backward_block(dout, q, k, v, q_bias, k_bias, out, causal, softmax_scale, lib, handle):
    """A backward argument block without pointers, and the workspace bytes it needs (the
    gradients are allocated contiguous, so their strides follow from the shapes in the key)."""
    B, Nq, H, D = q.shape
    a = _library.BackwardArgs()
    qs = ks = (False, False)
    if q_bias is not None:
        qs = runtime.factor_broadcast(q_bias, B, H)
        ks = runtime.factor_broadcast(k_bias, B, H)
    _fill_common(a, q, k, v, q_bias, k_bias, causal, softmax_scale, qs, ks)
    a.o_stride = _strides(out)
    a.dout_stride = _strides(dout)
    a.dq_stride = _strides_of(q.shape, _contiguous_strides(q.shape))
    a.dk_stride = _strides_of(k.shape, _contiguous_strides(k.shape))
    a.dv_stride = _strides_of(k.shape, _contiguous_strides(k.shape))
    if q_bias is not None:
        a.dqb_stride = _strides_of(q_bias.shape, _contiguous_strides(q_bias.shape))
        a.dkb_stride = _strides_of(k_bias.shape, _contiguous_strides(k_bias.shape))
    a.mode = _library.BACKWARD_DETERMINISTIC
    size = ctypes.c_uint64(0)
    lib.check(lib.backward_workspace_size(handle, ctypes.byref(a), ctypes.byref(size)),
              "flash_bias_func backward (workspace size)")
    # At least 16 bytes so the pointer is never NULL (NULL asks the library to allocate itself).
    return a, max(int(size.value), 16)


def _backward_impl(dout, q, k, v, q_bias, k_bias, out, lse, causal, softmax_scale):
    """The backward launch (both entry points; q, k, v, out in layouts the kernels can read): dq,
    dk, dv, dqb, dkb (the last two empty without factors), deterministic mode."""
    device = q.device
    ctx = runtime.get_context(device.index)
    lib = ctx.lib
    lib.require("backward")
    B, Nq, H, D = q.shape
    Nk = k.shape[1]
    # dO comes from autograd: o.sum().backward() hands an expanded (all-stride-0) tensor, other
    # losses a transposed one. The kernels need a contiguous last dim and real storage: copy then.
    dout = _readable(dout.to(q.dtype))
    dq = torch.empty((B, Nq, H, D), dtype=q.dtype, device=device)
    dk = torch.empty((B, Nk, H, D), dtype=q.dtype, device=device)
    dv = torch.empty((B, Nk, H, D), dtype=q.dtype, device=device)
    if q_bias is not None:
        # An expanded factor (a size-B view of one slice, stride 0) needs a gradient per element,
        # not the sum the library writes for a shared dim: pass a copy with real strides.
        dqb = torch.empty(tuple(q_bias.shape), dtype=q.dtype, device=device)
        dkb = torch.empty(tuple(k_bias.shape), dtype=q.dtype, device=device)
        q_bias = _readable(q_bias.contiguous() if _expanded(q_bias) else q_bias)
        k_bias = _readable(k_bias.contiguous() if _expanded(k_bias) else k_bias)
    else:
        dqb = torch.empty((0,), dtype=q.dtype, device=device)
        dkb = torch.empty((0,), dtype=q.dtype, device=device)
    lse = lse if lse.is_contiguous() else lse.contiguous()
    key = (device.index, q.dtype, causal, softmax_scale, _layout((dout, q, k, v, q_bias, k_bias, out)))
    entry = _bwd_templates.get(key)
    if entry is None:
        entry = _backward_block(dout, q, k, v, q_bias, k_bias, out, causal, softmax_scale, lib, ctx.handle)
        _remember(_bwd_templates, key, entry)
    template, workspace_bytes = entry
    # Scratch from PyTorch's allocator (inside a CUDA graph capture: the graph's pool), so the
    # library never allocates; the caching allocator's blocks are 512-byte aligned.
    workspace = torch.empty((workspace_bytes,), dtype=torch.uint8, device=device)
    a = _library.BackwardArgs.from_buffer_copy(template)
    a.q, a.k, a.v, a.o, a.dout = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), dout.data_ptr()
    a.lse, a.dq, a.dk, a.dv = lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr()
    if q_bias is not None:
        a.qb, a.kb, a.dqb, a.dkb = q_bias.data_ptr(), k_bias.data_ptr(), dqb.data_ptr(), dkb.data_ptr()
    a.workspace, a.workspace_bytes = workspace.data_ptr(), workspace_bytes
    lib.check(lib.backward(ctx.handle, ctypes.byref(a), _stream(device)), "flash_bias_func backward")
    return dq, dk, dv, dqb, dkb


@torch.library.custom_op("flashbias::attention_backward", mutates_args=())
def _backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 q_bias: Optional[torch.Tensor], k_bias: Optional[torch.Tensor], out: torch.Tensor,
                 lse: torch.Tensor, causal: bool, softmax_scale: Optional[float]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # The saved tensors' layouts are the forward's unless a compiler changed them.
    q, k, v, out = _readable(q), _readable(k), _readable(v), _readable(out)
    return _backward_impl(dout, q, k, v, q_bias, k_bias, out, lse, causal, softmax_scale)


@_backward_op.register_fake
def _backward_fake(dout, q, k, v, q_bias, k_bias, out, lse, causal, softmax_scale):
    B, Nq, H, D = q.shape
    Nk = k.shape[1]
    dq = q.new_empty((B, Nq, H, D))
    dk = q.new_empty((B, Nk, H, D))
    dv = q.new_empty((B, Nk, H, D))
    if q_bias is not None:
        dqb = q.new_empty(tuple(q_bias.shape))
        dkb = q.new_empty(tuple(k_bias.shape))
    else:
        dqb = q.new_empty((0,))
        dkb = q.new_empty((0,))
    return dq, dk, dv, dqb, dkb


def _setup_context(ctx, inputs, output):
    q, k, v, q_bias, k_bias, causal, softmax_scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, q_bias, k_bias, out, lse)
    ctx.causal = causal
    ctx.softmax_scale = softmax_scale


def _gradients(ctx, dout, launch):
    """The forward's seven inputs' gradients from the saved tensors, through `launch` (the
    backward op or its body): None for absent factors and the two non-tensor arguments."""
    q, k, v, q_bias, k_bias, out, lse = ctx.saved_tensors
    dq, dk, dv, dqb, dkb = launch(dout, q, k, v, q_bias, k_bias, out, lse, ctx.causal, ctx.softmax_scale)
    if q_bias is None:
        dqb = dkb = None
    return dq, dk, dv, dqb, dkb, None, None


def _backward(ctx, dout, dlse):
    return _gradients(ctx, dout, _backward_op)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# The eager entry point. Outside torch.compile, dispatching through the custom ops costs more CPU
# time per call than the kernels of a small problem take on the GPU (torch.library's Python
# dispatch, its autograd wrapper and the schema checks: docs/PERF_NOTES.md, "Python call
# overhead"). Eager calls therefore run the same launches through a torch.autograd.Function, or,
# when no gradient is wanted, call the forward launch directly; torch.compile traces the custom
# ops, which it can keep in one graph.

class _EagerFunction(torch.autograd.Function):
    """Eager autograd over _forward_impl / _backward_impl (the custom ops' bodies, so both entry
    points launch the same kernels with the same arguments and give bitwise-equal results)."""

    @staticmethod
    def forward(ctx, q, k, v, q_bias, k_bias, causal, softmax_scale):
        inputs = (q, k, v, q_bias, k_bias, causal, softmax_scale)
        output = _forward_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        return _gradients(ctx, dout, _backward_impl)


# Set to False to send eager calls through the custom ops as well (for comparison and debugging).
eager_fast_path = True

_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def _eager_call(tensors):
    """True when flash_bias_func may skip the custom ops: not under torch.compile or export, and
    every tensor a plain (or Parameter) tensor, i.e. none of the fake, functional or subclass
    tensors that tracing uses (those go through the custom ops, which carry fake kernels)."""
    if not eager_fast_path or torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) in _PLAIN_TYPES for t in tensors)


# ---------------------------------------------------------------------------------------------
# The public function.

def flash_bias_func(q, k, v, q_bias=None, k_bias=None, mask=None, causal=False, softmax_scale=None, *,
                    return_lse=False):
    """FlashBias attention, a drop-in for the paper's Triton `flash_bias_func`:

        softmax(softmax_scale * q k^T + q_bias k_bias^T) v

    q: [B, Nq, H, D]; k, v: [B, Nk, H, D]; q_bias: [B|1, Nq, H|1, R]; k_bias: [B|1, Nk, H|1, R]
    (extent 1 broadcasts over batch or heads). float16 or bfloat16, all one dtype, on one CUDA
    device; D a multiple of 8 up to 256, R up to 128 (the library names the limit otherwise).
    q_bias = k_bias = None: plain attention. The scale multiplies q k^T only; default 1/sqrt(D).
    causal: query i sees key j iff j <= i + Nk - Nq (bottom-right aligned, as FlashAttention-2; the
    usual mask when Nq == Nk; the paper's kernel aligns top-left, which differs only when Nq != Nk).
    A row that sees no key gives 0. mask: must be None (additive masks are not supported by the
    kernels; NotImplementedError otherwise).

    Any strides work if the last dim is contiguous; nothing is copied (a ValueError names the
    tensor otherwise). In the backward, dO is copied when autograd hands one the kernels cannot
    read (e.g. the all-stride-0 gradient of o.sum()), and an expanded factor (a stride-0 view with
    extent B or H) is copied so that its gradient is per element. Gradients: dq, dk, dv, and
    dq_bias / dk_bias in the factors' own shapes (summed over broadcast dims). return_lse: also
    return the [B, H, Nq] float32 log-sum-exp of each row (not differentiable).

    Runs on the current CUDA stream; works under torch.compile (fullgraph; pass softmax_scale as a
    Python float there: Dynamo traces NumPy scalars as arrays) and CUDA graph capture (call once
    before capturing, so the kernels are built). Eager calls take a lighter path than the custom
    ops that torch.compile sees (a torch.autograd.Function; no autograd node at all when no input
    needs a gradient): same kernels, same results, a fraction of the CPU time per call. Library
    failures raise flashbias.FlashBiasError with the library's message."""
    _check_inputs(q, k, v, q_bias, k_bias, mask, causal, softmax_scale)
    causal = bool(causal)
    softmax_scale = None if softmax_scale is None else float(softmax_scale)
    tensors = (q, k, v, q_bias, k_bias)
    if not _eager_call(tensors):
        out, lse = _forward_op(q, k, v, q_bias, k_bias, causal, softmax_scale)
    elif torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, lse = _EagerFunction.apply(q, k, v, q_bias, k_bias, causal, softmax_scale)
    else:
        out, lse = _forward_impl(q, k, v, q_bias, k_bias, causal, softmax_scale)
    return (out, lse) if return_lse else out


class FlashBiasFunc:
    """The paper's `FlashBiasFunc.apply(q, k, v, q_bias, k_bias, mask, causal, softmax_scale)`
    spelling of flash_bias_func (same autograd: the eager Function, or the custom ops' under
    torch.compile)."""

    @staticmethod
    def apply(q, k, v, q_bias=None, k_bias=None, mask=None, causal=False, softmax_scale=None):
        return flash_bias_func(q, k, v, q_bias, k_bias, mask, causal, softmax_scale)
