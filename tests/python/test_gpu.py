"""flash_bias_func on a GPU against an fp64 PyTorch reference: the forward (O and LSE) and all five
gradients, odd sizes, Nq != Nk, causal (bottom-right aligned), broadcast factors, strided and
expanded inputs; the portable kernel family (Context portable=True) as well as the default;
CUDA graph capture and replay against eager; torch.compile(fullgraph=True);
torch.library.opcheck of both ops; tuning from Python then running under the cache-only policy.

Tolerances (relative L2 against the fp64 reference): float16 < 2e-3; bfloat16 < max(2e-3, 2x the
error of a plain bfloat16 PyTorch implementation of the same math on the same inputs).
Skipped, saying so, without a CUDA GPU. Gradient tests are skipped (with the reason) when the
loaded library does not export the backward; tools/python_gpu_check.sh counts that as a failure
unless told --forward-only. Set FLASHBIAS_TEST_REPORT=path.jsonl to append every measured error.
"""
import json
import math
import os

import pytest

from conftest import requires_cuda

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

pytestmark = requires_cuda

import flashbias  # noqa: E402
from flashbias import _library  # noqa: E402
from reference import make_inputs, reference, rel_l2  # noqa: E402

FP16_BOUND = 2e-3


def _report(**row):
    path = os.environ.get("FLASHBIAS_TEST_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def lib():
    return _library.load()


@pytest.fixture(scope="module")
def backward(lib):
    if "backward" not in lib.features:
        pytest.skip(f"the loaded library {lib.path} does not export the backward (flashbias_backward, "
                    f"flashbias_backward_workspace_size): gradients are untested")


def run_ours(q, k, v, qb, kb, dout, causal, scale, grads=True):
    leaves = [t.detach().clone().requires_grad_(grads) if t is not None else None for t in (q, k, v, qb, kb)]
    out, lse = flashbias.flash_bias_func(*leaves, None, causal, scale, return_lse=True)
    res = {"o": out.detach(), "lse": lse}
    if grads:
        out.backward(dout)
        for name, t in zip(("dq", "dk", "dv", "dqb", "dkb"), leaves):
            if t is not None:
                res[name] = t.grad
    return res


def run_reference(q, k, v, qb, kb, dout, causal, scale, dtype, grads=True):
    leaves = [t.detach().to(dtype).requires_grad_(grads) if t is not None else None for t in (q, k, v, qb, kb)]
    out, lse = reference(*leaves, causal, scale if scale is not None else 1 / math.sqrt(q.shape[3]))
    res = {"o": out.detach(), "lse": lse.detach()}
    if grads:
        out.backward(dout.to(dtype))
        for name, t in zip(("dq", "dk", "dv", "dqb", "dkb"), leaves):
            if t is not None:
                res[name] = t.grad
    return res


def check_against_reference(case, q, k, v, qb, kb, dout, causal, scale, grads):
    dtype = q.dtype
    ours = run_ours(q, k, v, qb, kb, dout, causal, scale, grads)
    ref = run_reference(q, k, v, qb, kb, dout, causal, scale, torch.float64, grads)
    plain = run_reference(q, k, v, qb, kb, dout, causal, scale, dtype, grads) if dtype == torch.bfloat16 else None
    failures = []
    for name in ref:
        if name == "lse":
            got, want = ours["lse"], ref["lse"]
            masked = torch.isinf(want)
            assert torch.equal(torch.isinf(got) & (got < 0), masked), f"{case}: LSE -inf rows differ"
            err = rel_l2(got[~masked], want[~masked]) if (~masked).any() else 0.0
        else:
            assert ours[name].shape == ref[name].shape, f"{case}: {name} shape {ours[name].shape} vs {ref[name].shape}"
            assert ours[name].dtype == dtype, f"{case}: {name} dtype {ours[name].dtype}"
            err = rel_l2(ours[name], ref[name])
        bound = FP16_BOUND
        plain_err = None
        if plain is not None:
            plain_err = 0.0 if name == "lse" else rel_l2(plain[name], ref[name])
            bound = max(FP16_BOUND, 2 * plain_err)
        _report(case=case, tensor=name, dtype=str(dtype), rel_l2=err, bound=bound, plain_rel_l2=plain_err)
        if not (err < bound):  # also catches NaN
            failures.append(f"{name}: rel L2 {err:.3e} >= bound {bound:.3e}"
                            + (f" (plain bf16 {plain_err:.3e})" if plain_err is not None else ""))
    assert not failures, f"{case}: " + "; ".join(failures)
    if causal and q.shape[1] > k.shape[1]:
        blind = q.shape[1] - k.shape[1]  # rows 0 .. Nq-Nk-1 see no key: O = 0 exactly
        assert torch.count_nonzero(ours["o"][:, :blind]) == 0, f"{case}: rows that see no key are not 0"


# (B, H, Nq, Nk, D, R, causal, qb shape, kb shape): odd sizes, Nq != Nk, broadcast factors.
CASES = {
    "tiny_1x1": (1, 1, 1, 1, 64, 1, False, None, None),
    "n17_causal": (2, 3, 17, 17, 64, 4, True, None, None),
    "n113_d128_r16": (2, 2, 113, 113, 128, 16, False, None, None),
    "nq113_nk17_causal_blind_rows": (2, 3, 113, 17, 32, 8, True, None, None),
    "nq17_nk113_causal": (1, 4, 17, 113, 64, 3, True, None, None),
    "factors_1n1r": (2, 3, 113, 113, 64, 5, False, (1, 113, 1, 5), (1, 113, 1, 5)),
    "factors_bn1r_causal": (2, 3, 17, 113, 64, 4, True, (2, 17, 1, 4), (2, 113, 1, 4)),
    "factors_mixed": (3, 2, 113, 17, 32, 2, False, (1, 113, 2, 2), (3, 17, 1, 2)),
    "plain_rank0": (2, 2, 113, 17, 64, 0, True, None, None),
    "d256_r1": (1, 2, 17, 17, 256, 1, False, None, None),
}
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_forward_against_fp64(case, dtype):
    B, H, Nq, Nk, D, R, causal, qbs, kbs = CASES[case]
    q, k, v, qb, kb, dout = make_inputs(B, H, Nq, Nk, D, R, DTYPES[dtype], qbs, kbs)
    check_against_reference(f"{case}/{dtype}/fwd", q, k, v, qb, kb, dout, causal, None, grads=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_gradients_against_fp64(case, dtype, backward):
    B, H, Nq, Nk, D, R, causal, qbs, kbs = CASES[case]
    q, k, v, qb, kb, dout = make_inputs(B, H, Nq, Nk, D, R, DTYPES[dtype], qbs, kbs)
    check_against_reference(f"{case}/{dtype}/bwd", q, k, v, qb, kb, dout, causal, 0.3, grads=True)


@pytest.mark.parametrize("scale", [-0.5, 0.0])
@pytest.mark.parametrize("rank", [0, 3])
def test_negative_and_zero_scales_forward_and_backward(scale, rank, backward):
    """softmax_scale may be any finite number: negative reverses the score order, zero leaves the
    bias alone (uniform rows without one). Causal, odd sizes: masked entries and padded tiles."""
    q, k, v, qb, kb, dout = make_inputs(2, 3, 113, 77, 64, rank, torch.float16)
    check_against_reference(f"scale{scale}/r{rank}", q, k, v, qb, kb, dout, True, scale, grads=True)


@pytest.mark.parametrize("scale", [1.0, 0.015625, 0.2, 2.5, 0.005])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scales_in_and_out_of_the_fold_range(scale, dtype, backward):
    """With a bias and |scale| in [2^-6, 1] every kernel scores with round16(scale * Q); other
    scales run the portable family on Hopper. Odd sizes, causal, head dim 72 (the sm90 backward
    and its non-power-of-two default scales)."""
    q, k, v, qb, kb, dout = make_inputs(1, 2, 113, 150, 72, 3, dtype)
    check_against_reference(f"scale{scale}/{dtype}", q, k, v, qb, kb, dout, True, scale, grads=True)


def test_strided_inputs_are_used_in_place_and_agree(backward):
    """BHSD storage seen as BSHD (transposed views) gives the same O and gradients as contiguous
    copies, bitwise: same kernels, no copies needed."""
    B, H, N, D, R = 2, 3, 113, 64, 4
    q, k, v, qb, kb, dout = make_inputs(B, H, N, N, D, R, torch.float16)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    a = run_ours(*views, qb, kb, dout, True, None)
    b = run_ours(q, k, v, qb, kb, dout, True, None)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sum_loss_gives_an_expanded_gradient_that_works(backward):
    """o.sum().backward() hands the op an all-stride-0 dO; it is copied and the result is right."""
    B, H, N, D, R = 1, 2, 17, 64, 2
    q, k, v, qb, kb, _ = make_inputs(B, H, N, N, D, R, torch.float16)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, qb, kb)]
    flashbias.flash_bias_func(*leaves, causal=True).sum().backward()
    ref = run_reference(q, k, v, qb, kb, torch.ones_like(q), True, None, torch.float64)
    for name, t in zip(("dq", "dk", "dv", "dqb", "dkb"), leaves):
        assert rel_l2(t.grad, ref[name]) < FP16_BOUND, name


def test_expanded_factor_gets_per_element_gradients(backward):
    """A factor passed as an expanded view (stride 0, extent B and H) of a [1, N, 1, R] leaf: the
    leaf's gradient is the sum over the expansion, as autograd defines it."""
    B, H, N, D, R = 2, 3, 17, 64, 4
    q, k, v, _, _, dout = make_inputs(B, H, N, N, D, 0, torch.float16)
    g = torch.Generator(device="cuda").manual_seed(1)
    qb0 = (torch.randn(1, N, 1, R, device="cuda", generator=g) / 2).half().requires_grad_()
    kb0 = torch.randn(1, N, 1, R, device="cuda", generator=g).half().requires_grad_()
    out = flashbias.flash_bias_func(q, k, v, qb0.expand(B, N, H, R), kb0.expand(B, N, H, R))
    out.backward(dout)
    ref = run_reference(q, k, v, qb0.detach(), kb0.detach(), dout, False, None, torch.float64)
    assert rel_l2(qb0.grad, ref["dqb"]) < FP16_BOUND
    assert rel_l2(kb0.grad, ref["dkb"]) < FP16_BOUND


def test_forward_call_matches_flash_bias_func():
    B, H, N, D, R = 2, 2, 113, 64, 8
    q, k, v, qb, kb, _ = make_inputs(B, H, N, N, D, R, torch.bfloat16, (1, N, 1, R), (1, N, 1, R))
    call = flashbias.ForwardCall(q, k, v, qb, kb, causal=True)
    assert torch.equal(call.run(), flashbias.flash_bias_func(q, k, v, qb, kb, causal=True))


def test_eager_path_and_custom_ops_agree_bitwise(backward, monkeypatch):
    """Eager calls run through a torch.autograd.Function (or, without gradients, no autograd node);
    attention.eager_fast_path = False sends them through the custom ops that torch.compile sees.
    Same launches: the outputs and all five gradients (deterministic backward) are bitwise equal."""
    from flashbias import attention
    B, H, Nq, Nk, D, R = 2, 3, 113, 77, 64, 4
    q, k, v, qb, kb, dout = make_inputs(B, H, Nq, Nk, D, R, torch.bfloat16, (1, Nq, 1, R), (B, Nk, 1, R))
    results = {}
    for fast in (True, False):
        monkeypatch.setattr(attention, "eager_fast_path", fast)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, qb, kb)]
        out = flashbias.flash_bias_func(*leaves, causal=True, softmax_scale=0.3)
        node = type(out.grad_fn).__name__
        assert ("_EagerFunction" in node) == fast, node
        results[fast] = (out.detach(),) + torch.autograd.grad(out, leaves, dout)
        with torch.no_grad():
            plain = flashbias.flash_bias_func(*leaves, causal=True, softmax_scale=0.3)
        assert plain.grad_fn is None and torch.equal(plain, out.detach())
    for name, a, b in zip(("o", "dq", "dk", "dv", "dqb", "dkb"), results[True], results[False]):
        assert torch.equal(a, b), f"{name}: the eager path differs from the custom ops"


@pytest.mark.parametrize("dtype", DTYPES)
def test_portable_family_and_the_default_against_fp64(dtype, lib, backward):
    """set_context_options(portable=True) runs the portable kernel family even where a faster one
    exists (the sm90 forward and backward on sm_90a take this shape): forward and all five
    gradients against the fp64 reference, with the same bounds as the default family."""
    if "context_options" not in lib.features:
        pytest.skip(f"the loaded library {lib.path} has no flashbias_context_create_with_options")
    B, H, N, D, R = 2, 3, 113, 64, 4
    q, k, v, qb, kb, dout = make_inputs(B, H, N, N, D, R, DTYPES[dtype], (1, N, 1, R), (B, N, 1, R))
    for portable in (False, True):
        old = flashbias.set_context_options(portable=portable)
        try:
            assert flashbias.get_context(q.device.index).portable is portable
            check_against_reference(f"portable={portable}/{dtype}", q, k, v, qb, kb, dout, True, 0.3, grads=True)
        finally:
            flashbias.set_context_options(**old)


def _graph_inputs(requires_grad):
    B, H, Nq, Nk, D, R = 2, 3, 113, 77, 64, 4
    q, k, v, qb, kb, dout = make_inputs(B, H, Nq, Nk, D, R, torch.float16, (1, Nq, 1, R), (B, Nk, 1, R))
    return [t.clone().requires_grad_(requires_grad) for t in (q, k, v, qb, kb)], dout


def test_cuda_graph_forward_replays_like_eager():
    (q, k, v, qb, kb), _ = _graph_inputs(False)

    def f():
        return flashbias.flash_bias_func(q, k, v, qb, kb, causal=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        f()  # warm-up: the kernel is built before capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = f()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, f())
    # New inputs in the same buffers: the replay sees them.
    for t in (q, k, v, qb, kb):
        t.copy_(torch.randn_like(t.float()).to(t.dtype))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, f())


def test_cuda_graph_forward_and_backward_replay_like_eager(backward):
    leaves, dout = _graph_inputs(True)

    def step():
        out = flashbias.flash_bias_func(*leaves, causal=True)
        return (out,) + torch.autograd.grad(out, leaves, dout)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for name, a, b in zip(("o", "dq", "dk", "dv", "dqb", "dkb"), static, eager):
        assert torch.equal(a, b), f"{name}: graph replay differs from eager (the backward is deterministic)"


def test_torch_compile_fullgraph_forward():
    (q, k, v, qb, kb), _ = _graph_inputs(False)

    def f(q, k, v, qb, kb):
        return flashbias.flash_bias_func(torch.relu(q), k, v, qb, kb, causal=True) * 2
    compiled = torch.compile(f, fullgraph=True)
    assert torch.equal(compiled(q, k, v, qb, kb), f(q, k, v, qb, kb))


def test_torch_compile_fullgraph_backward(backward):
    leaves, dout = _graph_inputs(True)

    def loss(q, k, v, qb, kb):
        return (flashbias.flash_bias_func(q, k, v, qb, kb, causal=True).float() * dout.float()).sum()
    compiled = torch.compile(loss, fullgraph=True)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(loss(*leaves), leaves)
    for name, a, b in zip(("dq", "dk", "dv", "dqb", "dkb"), got, want):
        assert rel_l2(a, b) < 1e-3, name  # dO may be formed by a fused kernel: equal up to rounding


def test_opcheck_forward():
    (q, k, v, qb, kb), _ = _graph_inputs(False)
    torch.library.opcheck(torch.ops.flashbias.attention_forward.default, (q, k, v, qb, kb, True, None),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_forward_with_autograd(backward):
    leaves, _ = _graph_inputs(True)
    torch.library.opcheck(torch.ops.flashbias.attention_forward.default, (*leaves, True, 0.2))


def test_library_errors_surface_with_the_library_message():
    q, k, v, _, _, _ = make_inputs(1, 1, 17, 17, 100, 0, torch.float16)  # head dim 100: not a multiple of 8
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.flash_bias_func(q, k, v)
    assert e.value.status_name == "unsupported" and "head_dim = 100" in str(e.value)


def test_tune_then_run_under_cache_only(lib):
    """Tune one small problem from Python (stored in the cache), then run it with the cache-only
    policy: the winner's kernel comes from the store, NVRTC is not needed."""
    if "tuning" not in lib.features:
        pytest.skip("this libflashbias.so has no tuning ABI")
    q, k, v, qb, kb, _ = make_inputs(2, 2, 256, 256, 64, 8, torch.float16)
    problem = flashbias.problem_string(q, k, v, qb, kb, causal=True)
    report = flashbias.tune(problem, device=q.device.index, budget_seconds=30)
    _report(case="tune", problem=problem, winner=report["winner"], seconds=report["seconds"],
            stored=report["stored"], counts=report["counts"])
    assert report["winner"] and report["counts"]["passed"] >= 1
    if not report["stored"]:
        pytest.skip(f"the tuning run was not stored ({report['store_warning']}): cache-only cannot be checked")
    old = flashbias.set_policy("cache-only")
    try:
        out = flashbias.flash_bias_func(q, k, v, qb, kb, causal=True)
    finally:
        flashbias.set_policy(old)
    ref = run_reference(q, k, v, qb, kb, q, True, None, torch.float64, grads=False)
    assert rel_l2(out, ref["o"]) < FP16_BOUND
