"""flash_bias_func's argument checking, without a GPU: every mistake is caught before the library
is called, with a message naming the argument. CPU tensors exercise the checks that come before
the device check; fake CUDA tensors (FakeTensorMode: shapes, strides and devices without memory)
exercise the rest and the ops' shape functions."""
import math

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (tools/test.sh installs it)")

import flashbias  # noqa: E402
from flashbias import attention, runtime  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

F16 = torch.float16


def qkv(B=2, Nq=17, Nk=13, H=3, D=16, dtype=F16, device="cpu"):
    q = torch.randn(B, Nq, H, D, device=device).to(dtype)
    k = torch.randn(B, Nk, H, D, device=device).to(dtype)
    v = torch.randn(B, Nk, H, D, device=device).to(dtype)
    return q, k, v


def factors(B=2, Nq=17, Nk=13, H=3, R=4, dtype=F16, device="cpu"):
    return (torch.randn(B, Nq, H, R, device=device).to(dtype), torch.randn(B, Nk, H, R, device=device).to(dtype))


def raises(exc, *words):
    """pytest.raises that also checks the message names each of `words`."""
    class Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            r = self.cm.__exit__(*a)
            msg = str(self.info.value)
            for w in words:
                assert w in msg, f"{w!r} not in the message: {msg}"
            return r
    return Ctx()


def test_mask_is_refused_naming_the_argument():
    q, k, v = qkv()
    qb, kb = factors()
    mask = torch.zeros(2, 3, 17, 13)
    with raises(NotImplementedError, "mask", "causal"):
        flashbias.flash_bias_func(q, k, v, qb, kb, mask)
    with raises(NotImplementedError, "mask"):
        flashbias.flash_bias_func(q, k, v, qb, kb, mask=mask, causal=True)


def test_non_tensor_inputs():
    q, k, v = qkv()
    with raises(TypeError, "k", "list"):
        flashbias.flash_bias_func(q, [1, 2], v)
    with raises(TypeError, "q_bias", "int"):
        flashbias.flash_bias_func(q, k, v, 3, 4)


def test_one_factor_without_the_other():
    q, k, v = qkv()
    qb, kb = factors()
    with raises(ValueError, "q_bias", "k_bias", "both"):
        flashbias.flash_bias_func(q, k, v, qb, None)
    with raises(ValueError, "k_bias is given but q_bias is None"):
        flashbias.flash_bias_func(q, k, v, None, kb)


def test_rank_must_be_4():
    q, k, v = qkv()
    with raises(ValueError, "q must be 4-D", "(17, 16)"):
        flashbias.flash_bias_func(q[0, :, 0], k, v)
    qb, kb = factors()
    with raises(ValueError, "k_bias must be 4-D", "rank"):
        flashbias.flash_bias_func(q, k, v, qb, kb[0])


def test_dtypes():
    q, k, v = qkv(dtype=torch.float32)
    with raises(TypeError, "q has dtype torch.float32", "float16", "bfloat16"):
        flashbias.flash_bias_func(q, k, v)
    q, k, v = qkv()
    with raises(TypeError, "v has dtype torch.bfloat16", "torch.float16"):
        flashbias.flash_bias_func(q, k, v.to(torch.bfloat16))
    qb, kb = factors()
    with raises(TypeError, "q_bias has dtype torch.float32", ".to(torch.float16)"):
        flashbias.flash_bias_func(q, k, v, qb.float(), kb)


def test_shapes_of_k_and_v():
    q, k, v = qkv()
    with raises(ValueError, "k has shape (2, 13, 4, 16)", "[2, seqlen_k, 3, 16]"):
        flashbias.flash_bias_func(q, torch.randn(2, 13, 4, 16).half(), v)
    with raises(ValueError, "k has shape", "[2, seqlen_k, 3, 16]"):
        flashbias.flash_bias_func(q, torch.randn(2, 13, 3, 8).half(), v)
    with raises(ValueError, "v has shape (2, 12, 3, 16)", "k's (2, 13, 3, 16)"):
        flashbias.flash_bias_func(q, k, torch.randn(2, 12, 3, 16).half())


def test_shapes_of_the_factors():
    q, k, v = qkv()
    qb, kb = factors()
    with raises(ValueError, "q_bias has shape (2, 13, 3, 4)", "seqlen_q", "17"):
        flashbias.flash_bias_func(q, k, v, torch.randn(2, 13, 3, 4).half(), kb)
    with raises(ValueError, "k_bias has shape (3, 13, 3, 4)", "[2 or 1"):
        flashbias.flash_bias_func(q, k, v, qb, torch.randn(3, 13, 3, 4).half())
    with raises(ValueError, "q_bias has shape (2, 17, 2, 4)", "3 or 1"):
        flashbias.flash_bias_func(q, k, v, torch.randn(2, 17, 2, 4).half(), kb)
    with raises(ValueError, "q_bias has rank 4", "k_bias has 5"):
        flashbias.flash_bias_func(q, k, v, qb, torch.randn(2, 13, 3, 5).half())
    with raises(ValueError, "rank 0", "None"):
        flashbias.flash_bias_func(q, k, v, qb[..., :0], kb[..., :0])


def test_causal_and_scale_types():
    q, k, v = qkv()
    with raises(TypeError, "causal must be a bool", "str"):
        flashbias.flash_bias_func(q, k, v, causal="yes")
    with raises(TypeError, "causal must be a bool", "int"):
        flashbias.flash_bias_func(q, k, v, causal=2)
    with raises(TypeError, "softmax_scale", "Tensor"):
        flashbias.flash_bias_func(q, k, v, softmax_scale=torch.tensor(0.5))
    with raises(TypeError, "softmax_scale", "str"):
        flashbias.flash_bias_func(q, k, v, softmax_scale="0.5")
    with raises(ValueError, "softmax_scale must be finite"):
        flashbias.flash_bias_func(q, k, v, softmax_scale=math.nan)


def test_numpy_scalars_and_int_flags_pass_the_checks():
    """The paper's examples pass softmax_scale = 1 / np.sqrt(d) and causal as 0/1 or a bool."""
    numpy = pytest.importorskip("numpy")
    q, k, v = qkv()
    for scale in (numpy.float32(0.25), numpy.float64(0.25), 1):
        with raises(ValueError, "q is on cpu"):  # every check before the device one passed
            flashbias.flash_bias_func(q, k, v, None, None, None, 1, scale)


def test_cpu_tensors_are_refused_naming_the_device():
    q, k, v = qkv()
    qb, kb = factors()
    with raises(ValueError, "q is on cpu", "CUDA"):
        flashbias.flash_bias_func(q, k, v, qb, kb)


# --- fake CUDA tensors: the checks after the device check, and the ops' shape functions --------

@pytest.fixture
def fake():
    with FakeTensorMode() as mode:
        yield mode


def fake_cuda(*shape, dtype=F16):
    return torch.empty(*shape, dtype=dtype, device="cuda")


def test_mixed_devices(fake):
    q, k, v = (fake_cuda(2, 17, 3, 16) for _ in range(3))
    with raises(ValueError, "k is on cpu but q is on cuda:0", "one CUDA device"):
        flashbias.flash_bias_func(q, torch.empty(2, 17, 3, 16, dtype=F16), v)


def test_last_dim_must_be_contiguous(fake):
    q, k, v = (fake_cuda(2, 17, 3, 16) for _ in range(3))
    vt = fake_cuda(2, 17, 16, 3).transpose(2, 3)
    with raises(ValueError, "v has strides", "last dimension must be contiguous", "v.contiguous()"):
        flashbias.flash_bias_func(q, k, vt)
    qb = fake_cuda(2, 17, 4, 3).transpose(2, 3)
    with raises(ValueError, "q_bias has strides"):
        flashbias.flash_bias_func(q, k, v, qb, fake_cuda(2, 17, 3, 4))


def test_expanded_qkv_are_refused_but_strided_views_are_fine(fake):
    q, k, v = (fake_cuda(2, 17, 3, 16) for _ in range(3))
    qe = fake_cuda(1, 17, 3, 16).expand(2, 17, 3, 16)
    with raises(ValueError, "q is an expanded view", "q.contiguous()"):
        flashbias.flash_bias_func(qe, k, v)
    # A BHSD tensor seen as BSHD (transpose of dims 1 and 2): any strides, last dim contiguous.
    qt = fake_cuda(2, 3, 17, 16).transpose(1, 2)
    out = flashbias.flash_bias_func(qt, k, v)
    assert out.shape == (2, 17, 3, 16) and out.device.type == "cuda"


def test_forward_shapes_under_fake_tensors(fake):
    q = fake_cuda(2, 17, 3, 16)
    k = v = fake_cuda(2, 13, 3, 16)
    qb, kb = fake_cuda(1, 17, 1, 4), fake_cuda(2, 13, 1, 4)
    out, lse = flashbias.flash_bias_func(q, k, v, qb, kb, None, True, 0.25, return_lse=True)
    assert out.shape == (2, 17, 3, 16) and out.dtype == F16 and out.is_contiguous()
    assert lse.shape == (2, 3, 17) and lse.dtype == torch.float32


def test_backward_op_shapes_under_fake_tensors(fake):
    q = fake_cuda(2, 17, 3, 16)
    k = v = fake_cuda(2, 13, 3, 16)
    qb, kb = fake_cuda(1, 17, 1, 4), fake_cuda(2, 13, 1, 4)
    o, lse = fake_cuda(2, 17, 3, 16), fake_cuda(2, 3, 17, dtype=torch.float32)
    dq, dk, dv, dqb, dkb = torch.ops.flashbias.attention_backward(o, q, k, v, qb, kb, o, lse, False, None)
    assert (dq.shape, dk.shape, dv.shape) == ((2, 17, 3, 16), (2, 13, 3, 16), (2, 13, 3, 16))
    assert dqb.shape == qb.shape and dkb.shape == kb.shape  # the factors' own (broadcast) shapes
    *_, dqb, dkb = torch.ops.flashbias.attention_backward(o, q, k, v, None, None, o, lse, False, None)
    assert dqb.numel() == 0 and dkb.numel() == 0


def test_ops_are_registered_with_their_schemas():
    fwd = str(torch.ops.flashbias.attention_forward.default._schema)
    bwd = str(torch.ops.flashbias.attention_backward.default._schema)
    assert "Tensor? q_bias" in fwd and "bool causal" in fwd and "float? softmax_scale" in fwd
    assert fwd.endswith("-> (Tensor, Tensor)")
    assert bwd.endswith("-> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def test_forward_call_checks_its_outputs(fake):
    q = fake_cuda(2, 17, 3, 16)
    with raises(ValueError, "out must be"):
        attention.ForwardCall(q, q, q, out=fake_cuda(2, 17, 3, 8))
    with raises(ValueError, "lse must be a contiguous float32 tensor of shape (2, 3, 17)"):
        attention.ForwardCall(q, q, q, lse=fake_cuda(2, 3, 17))


# --- strides and factor sharing ------------------------------------------------------------------

def test_strides_of_extent_1_dims_are_canonical_and_factors_broadcast():
    t = torch.empty(1, 5, 1, 8)[:, :, :, :]  # B = H = 1
    s = attention._strides(t)
    assert (s.batch, s.seq, s.head) == (5 * 8, 8, 8)
    s = attention._strides(t, (True, True))
    assert (s.batch, s.seq, s.head) == (0, 8, 0)
    bshd = torch.empty(2, 3, 5, 8).transpose(1, 2)  # [2, 5, 3, 8] with BHSD storage
    s = attention._strides(bshd)
    assert (s.batch, s.seq, s.head) == (120, 8, 40)


def test_factor_sharing():
    B, H = 2, 3
    assert runtime.factor_broadcast(torch.empty(1, 5, 1, 4), B, H) == (True, True)
    assert runtime.factor_broadcast(torch.empty(2, 5, 1, 4), B, H) == (False, True)
    assert runtime.factor_broadcast(torch.empty(2, 5, 3, 4), B, H) == (False, False)
    # Extent 1 where the problem's is 1 too is not sharing: the plain key, as `flashbias tune` tunes it.
    assert runtime.factor_broadcast(torch.empty(1, 5, 1, 4), 1, 1) == (False, False)
    # An expanded view shares too (stride 0), whatever its extent.
    assert runtime.factor_broadcast(torch.empty(1, 5, 1, 4).expand(2, 5, 3, 4), B, H) == (True, True)


def test_problem_string_matches_the_call():
    q, k, v = qkv(B=2, Nq=17, Nk=13, H=3, D=16)
    qb, kb = torch.empty(1, 17, 1, 4).half(), torch.empty(2, 13, 1, 4).half()
    s = flashbias.problem_string(q, k, v, qb, kb, causal=True, softmax_scale=0.5)
    assert s == "b=2,h=3,nq=17,nk=13,d=16,r=4,mask=causal,dtype=f16,scale=0.5,qb=1n1r,kb=bn1r"
    assert flashbias.problem_string(q.bfloat16(), k, v) == "b=2,h=3,nq=17,nk=13,d=16,dtype=bf16"


def test_policy_names(monkeypatch):
    monkeypatch.delenv("FLASHBIAS_POLICY", raising=False)
    old = flashbias.set_policy("cache_only")
    try:
        assert flashbias.get_policy() == "cache-only"
        with raises(ValueError, "'fast' is not a policy", "heuristic", "tune", "cache-only"):
            flashbias.set_policy("fast")
        monkeypatch.setenv("FLASHBIAS_POLICY", "tune")
        assert flashbias.get_policy() == "tune"  # the environment overrides, as in the library
    finally:
        flashbias.set_policy(old)


@pytest.mark.parametrize("scale", [0.125, None])
def test_strict_export_traces_one_opaque_op_without_graph_breaks(scale):
    """torch.export in strict mode is Dynamo with fullgraph=True: the argument checks trace, and the
    call is a single opaque flashbias op in the graph (torch.compile gives the same graph)."""
    class M(torch.nn.Module):
        def forward(self, q, k, v, qb, kb):
            return flashbias.flash_bias_func(q, k, v, qb, kb, None, True, scale) * 2

    with FakeTensorMode(allow_non_fake_inputs=True):
        q = fake_cuda(2, 17, 3, 16)
        k, v = fake_cuda(2, 13, 3, 16), fake_cuda(2, 13, 3, 16)
        qb, kb = fake_cuda(1, 17, 1, 4), fake_cuda(2, 13, 1, 4)
        ep = torch.export.export(M(), (q, k, v, qb, kb), strict=True)
    calls = [n for n in ep.graph.nodes if n.op == "call_function" and "flashbias" in str(n.target)]
    assert [str(n.target) for n in calls] == ["flashbias.attention_forward.default"]
    assert calls[0].args[5:] == (True, scale)
