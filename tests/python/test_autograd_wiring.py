"""The autograd glue of both entry points (the custom ops' register_autograd and the eager
torch.autograd.Function: what the forward saves, how the backward is called, which gradients come
back, None for absent factors), checked on the CPU by giving both ops a CPU kernel computed from
the reference (and the Function the same functions in place of its launches); the CUDA kernels
are the library's and are tested in test_gpu.py. Registering CPU kernels only adds the CPU dispatch key: flash_bias_func itself
still refuses CPU tensors, and the CUDA path is untouched."""
import math

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (tools/test.sh installs it)")

import flashbias  # noqa: E402,F401  (registers the ops)
from flashbias import attention  # noqa: E402
from reference import make_inputs, reference  # noqa: E402

calls = []


def _scale(q, softmax_scale):
    return softmax_scale if softmax_scale is not None else 1 / math.sqrt(q.shape[3])


def _cpu_forward(q, k, v, q_bias, k_bias, causal, softmax_scale):
    calls.append("forward")
    with torch.no_grad():
        o, lse = reference(*(t.double() if t is not None else None for t in (q, k, v, q_bias, k_bias)), causal,
                           _scale(q, softmax_scale))
    return o.to(q.dtype), lse.float()


def _cpu_backward(dout, q, k, v, q_bias, k_bias, out, lse, causal, softmax_scale):
    """The attention backward written out in float64 (a kernel runs below autograd, so it cannot
    differentiate the reference): dV = P^T dO, dS = P (dO V^T - rowsum(dO O)), dQ = scale dS K,
    dK = scale dS^T Q, dQb = dS Kb, dKb = dS^T Qb, summed over the factors' broadcast dims."""
    calls.append("backward")
    B, Nq, H, D = q.shape
    Nk = k.shape[1]
    scale = _scale(q, softmax_scale)
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, dout))
    s = torch.einsum("bqhd,bkhd->bhqk", q64, k64) * scale
    if q_bias is not None:
        qb = q_bias.double().expand(B, Nq, H, -1)
        kb = k_bias.double().expand(B, Nk, H, -1)
        s = s + torch.einsum("bqhr,bkhr->bhqk", qb, kb)
    if causal:
        keep = torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq)
        s = s.masked_fill(~keep, -math.inf)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    o = torch.einsum("bhqk,bkhd->bqhd", p, v64)
    dv = torch.einsum("bhqk,bqhd->bkhd", p, do64)
    dp = torch.einsum("bqhd,bkhd->bhqk", do64, v64)
    delta = (do64 * o).sum(-1).permute(0, 2, 1)[..., None]  # [B, H, Nq, 1]
    ds = p * (dp - delta)
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, k64) * scale
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, q64) * scale
    grads = [dq, dk, dv]
    if q_bias is not None:
        dqb = torch.einsum("bhqk,bkhr->bqhr", ds, kb)
        dkb = torch.einsum("bhqk,bqhr->bkhr", ds, qb)
        for g, f in ((dqb, q_bias), (dkb, k_bias)):
            dims = [d for d in (0, 2) if f.shape[d] == 1 and g.shape[d] > 1]
            grads.append(g.sum(dim=dims, keepdim=True) if dims else g)
    else:
        grads += [q.new_empty((0,)), q.new_empty((0,))]
    return tuple(g.to(q.dtype) if g.numel() else g for g in grads)


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    torch.library.register_kernel("flashbias::attention_forward", "cpu", _cpu_forward)
    torch.library.register_kernel("flashbias::attention_backward", "cpu", _cpu_backward)


def _eager_apply(*args):
    return attention._EagerFunction.apply(*args)


# The two autograd entry points: the custom op (torch.compile's) and the eager Function, whose
# launches (attention._forward_impl / _backward_impl) are replaced by the CPU ones for these tests.
ENTRY_POINTS = {"custom_op": lambda *args: torch.ops.flashbias.attention_forward(*args), "eager": _eager_apply}


@pytest.fixture(params=sorted(ENTRY_POINTS))
def forward(request, monkeypatch):
    monkeypatch.setattr(attention, "_forward_impl", _cpu_forward)
    monkeypatch.setattr(attention, "_backward_impl", _cpu_backward)
    return ENTRY_POINTS[request.param]


def test_gradients_flow_to_all_five_inputs_in_their_own_shapes(forward):
    q, k, v, qb, kb, dout = make_inputs(2, 3, 9, 7, 8, 2, torch.float32, (1, 9, 1, 2), (2, 7, 1, 2), device="cpu")
    leaves = [t.clone().requires_grad_() for t in (q, k, v, qb, kb)]
    calls.clear()
    out, lse = forward(*leaves, True, 0.5)
    assert not lse.requires_grad  # marked non-differentiable
    out.backward(dout)
    assert calls == ["forward", "backward"]
    want = [t.detach().double().requires_grad_() for t in (q, k, v, qb, kb)]
    o, _ = reference(*want, True, 0.5)
    o.backward(dout.double())
    for name, got, w in zip(("dq", "dk", "dv", "dqb", "dkb"), leaves, want):
        assert got.grad.shape == w.shape, name
        assert torch.allclose(got.grad.double(), w.grad, rtol=1e-5, atol=1e-5), name


def test_plain_attention_returns_no_factor_gradients(forward):
    q, k, v, _, _, dout = make_inputs(1, 2, 5, 5, 8, 0, torch.float32, device="cpu")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, _ = forward(*leaves, None, None, False, None)
    grads = torch.autograd.grad(out, leaves, dout)
    assert [g.shape for g in grads] == [t.shape for t in leaves]


def test_only_the_inputs_that_need_it_get_gradients(forward):
    q, k, v, qb, kb, dout = make_inputs(1, 2, 5, 5, 8, 2, torch.float32, device="cpu")
    qb = qb.clone().requires_grad_()
    out, _ = forward(q, k, v, qb, kb, False, None)
    (g,) = torch.autograd.grad(out, (qb,), dout)
    assert g.shape == qb.shape and torch.isfinite(g).all()


def test_eager_backward_refuses_a_second_derivative():
    q, k, v, qb, kb, dout = make_inputs(1, 2, 5, 5, 8, 2, torch.float32, device="cpu")
    q = q.clone().requires_grad_()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(attention, "_forward_impl", _cpu_forward)
        m.setattr(attention, "_backward_impl", _cpu_backward)
        out, _ = _eager_apply(q, k, v, qb, kb, False, None)
        # (dO requiring a gradient, as in a double-backward; otherwise g simply has no graph)
        (g,) = torch.autograd.grad(out, (q,), dout.requires_grad_(), create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable|second time|double"):
            g.sum().backward()


def test_flash_bias_func_picks_the_eager_path_outside_compile_only(monkeypatch):
    """The dispatch rule, without a GPU: eager calls on plain tensors take the Function (or no
    autograd node when nothing needs a gradient); tracing, tensor subclasses and the switch
    take the custom ops."""
    q = torch.zeros(1, 2, 1, 8)
    assert attention._eager_call((q, q, q, None, None))
    assert attention._eager_call((q, q, q, torch.nn.Parameter(torch.zeros(1, 2, 1, 2)), q))

    class Sub(torch.Tensor):
        pass
    assert not attention._eager_call((q, q.as_subclass(Sub), q, None, None))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not attention._eager_call((q, q, q, None, None))
    monkeypatch.undo()
    monkeypatch.setattr(attention, "eager_fast_path", False)
    assert not attention._eager_call((q, q, q, None, None))
