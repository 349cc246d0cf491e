"""The argument blocks the launches hand the library, without a GPU: attention._forward_impl and
_backward_impl build a block once per layout and copy it with each call's pointers. A fake library
records every block it is given; each must equal a block built field by field from that call's
tensors (the path ForwardCall takes), pointers included, over repeated calls (the cached path),
other layouts (new blocks) and the cache's eviction."""
import ctypes

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (tools/test.sh installs it)")

from flashbias import _library, attention, runtime  # noqa: E402


class FakeLib:
    def __init__(self):
        self.forward_blocks, self.backward_blocks = [], []
        self.features = {"backward"}

    def forward(self, handle, ref, stream):
        self.forward_blocks.append(bytes(ctypes.cast(ref, ctypes.POINTER(_library.ForwardArgs)).contents))
        return _library.OK

    def backward(self, handle, ref, stream):
        self.backward_blocks.append(bytes(ctypes.cast(ref, ctypes.POINTER(_library.BackwardArgs)).contents))
        return _library.OK

    def backward_workspace_size(self, handle, ref, size_ref):
        a = ctypes.cast(ref, ctypes.POINTER(_library.BackwardArgs)).contents
        ctypes.cast(size_ref, ctypes.POINTER(ctypes.c_uint64)).contents.value = 1000 + a.seqlen_q
        return _library.OK

    def check(self, status, what=""):
        assert status == _library.OK, what

    def require(self, feature, what=""):
        assert feature in self.features


class FakeContext:
    def __init__(self):
        self.lib = FakeLib()
        self.handle = ctypes.c_void_p(1)


@pytest.fixture
def fake(monkeypatch):
    ctx = FakeContext()
    monkeypatch.setattr(runtime, "get_context", lambda device, **kw: ctx)
    monkeypatch.setattr(attention, "_stream", lambda device: ctypes.c_void_p(0))
    monkeypatch.setitem(attention._DTYPES, torch.float32, _library.F16)  # CPU float32 tensors stand in
    monkeypatch.setattr(attention, "_fwd_templates", {})
    monkeypatch.setattr(attention, "_bwd_templates", {})
    return ctx.lib


def _inputs(B, H, Nq, Nk, D, R, qb_shape=None, transpose_k=False):
    q = torch.randn(B, Nq, H, D)
    k = torch.randn(B, H, Nk, D).transpose(1, 2) if transpose_k else torch.randn(B, Nk, H, D)
    v = torch.randn(B, Nk, H, D)
    qb = torch.randn(*(qb_shape or (B, Nq, H, R))) if R else None
    kb = torch.randn(B, Nk, H, R) if R else None
    return q, k, v, qb, kb


def _want_forward(q, k, v, qb, kb, causal, scale, out, lse):
    return bytes(attention._forward_args(q, k, v, qb, kb, causal, scale, out, lse))


def _want_backward(dout, q, k, v, qb, kb, out, lse, causal, scale, grads, workspace_bytes):
    B, _, H, _ = q.shape
    a = _library.BackwardArgs()
    qs = runtime.factor_broadcast(qb, B, H) if qb is not None else (False, False)
    ks = runtime.factor_broadcast(kb, B, H) if kb is not None else (False, False)
    attention._fill_common(a, q, k, v, qb, kb, causal, scale, qs, ks)
    a.o, a.o_stride = out.data_ptr(), attention._strides(out)
    a.dout, a.dout_stride = dout.data_ptr(), attention._strides(dout)
    a.lse = lse.data_ptr()
    dq, dk, dv, dqb, dkb = grads
    a.dq, a.dq_stride = dq.data_ptr(), attention._strides(dq)
    a.dk, a.dk_stride = dk.data_ptr(), attention._strides(dk)
    a.dv, a.dv_stride = dv.data_ptr(), attention._strides(dv)
    if qb is not None:
        a.dqb, a.dqb_stride = dqb.data_ptr(), attention._strides(dqb)
        a.dkb, a.dkb_stride = dkb.data_ptr(), attention._strides(dkb)
    a.mode = _library.BACKWARD_DETERMINISTIC
    a.workspace_bytes = workspace_bytes
    return a


LAYOUTS = {
    "plain": dict(B=2, H=3, Nq=17, Nk=17, D=64, R=0),
    "bias": dict(B=2, H=3, Nq=17, Nk=9, D=64, R=4),
    "broadcast_factor": dict(B=2, H=3, Nq=17, Nk=9, D=32, R=2, qb_shape=(1, 17, 1, 2)),
    "strided_k": dict(B=2, H=3, Nq=5, Nk=9, D=32, R=3, transpose_k=True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_blocks_carry_each_calls_pointers(fake, layout):
    for causal, scale in ((False, None), (True, 0.25), (False, None)):
        for _ in range(2):  # the second call of a layout takes the cached block
            q, k, v, qb, kb = _inputs(**LAYOUTS[layout])
            out, lse = attention._forward_impl(q, k, v, qb, kb, causal, scale)
            assert fake.forward_blocks[-1] == _want_forward(q, k, v, qb, kb, causal, scale, out, lse)
    assert len(attention._fwd_templates) == 2  # (causal, scale) pairs; layout fixed


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backward_blocks_carry_each_calls_pointers(fake, layout):
    for causal in (False, True, False):
        q, k, v, qb, kb = _inputs(**LAYOUTS[layout])
        out, lse = attention._forward_impl(q, k, v, qb, kb, causal, None)
        dout = torch.randn(out.shape)
        grads = attention._backward_impl(dout, q, k, v, qb, kb, out, lse, causal, None)
        got = _library.BackwardArgs.from_buffer_copy(fake.backward_blocks[-1])
        want = _want_backward(dout, q, k, v, qb, kb, out, lse, causal, None, grads, 1000 + q.shape[1])
        want.workspace = got.workspace  # the workspace tensor is internal; its size is checked
        assert got.workspace, "the workspace pointer must never be NULL (NULL asks the library to allocate)"
        assert bytes(got) == bytes(want)
        for g, t in zip(grads, (q, k, v, qb, kb)):
            if t is not None:
                assert g.shape == t.shape and g.is_contiguous()


def test_the_block_cache_is_bounded(fake, monkeypatch):
    monkeypatch.setattr(attention, "_MAX_TEMPLATES", 4)
    for n in range(1, 11):
        q, k, v, qb, kb = _inputs(1, 1, n, n, 16, 2)
        out, lse = attention._forward_impl(q, k, v, qb, kb, False, None)
        assert fake.forward_blocks[-1] == _want_forward(q, k, v, qb, kb, False, None, out, lse)
        assert len(attention._fwd_templates) <= 4
