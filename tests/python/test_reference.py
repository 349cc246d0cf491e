"""The GPU tests' reference (reference.py), checked on the CPU so that a GPU failure is the
kernels' and not the reference's: against PyTorch SDPA with the dense bias and an explicit
bottom-right causal mask, blind rows, and gradcheck in float64."""
import math

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (tools/test.sh installs it)")

from reference import make_inputs, reference, rel_l2  # noqa: E402

F = torch.nn.functional


def sdpa(q, k, v, qb, kb, causal, scale):
    B, Nq, H, D = q.shape
    Nk = k.shape[1]
    bias = torch.zeros(B, H, Nq, Nk, dtype=q.dtype)
    if qb is not None:
        bias = bias + torch.einsum("bqhr,bkhr->bhqk", qb.expand(B, Nq, H, -1), kb.expand(B, Nk, H, -1))
    if causal:
        keep = torch.ones(Nq, Nk, dtype=torch.bool).tril(diagonal=Nk - Nq)
        bias = bias.masked_fill(~keep, -math.inf)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=bias, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 17, 17, 8, 4), (1, 2, 13, 29, 16, 3), (2, 1, 5, 5, 8, 1)])
def test_reference_matches_sdpa_with_the_dense_bias(shape, causal):
    B, H, Nq, Nk, D, R = shape
    q, k, v, qb, kb, _ = make_inputs(B, H, Nq, Nk, D, R, torch.float64, (1, Nq, 1, R), (B, Nk, H, R),
                                     device="cpu")
    got, _ = reference(q, k, v, qb, kb, causal, 0.3)
    want = sdpa(q, k, v, qb, kb, causal, 0.3)
    assert rel_l2(got, want) < 1e-12


def test_rows_that_see_no_key():
    q, k, v, qb, kb, dout = make_inputs(1, 2, 9, 4, 8, 2, torch.float64, device="cpu")
    leaves = [t.requires_grad_() for t in (q, k, v, qb, kb)]
    out, lse = reference(*leaves, True, 0.5)
    out.backward(dout)
    blind = 9 - 4
    assert torch.count_nonzero(out[:, :blind]) == 0
    assert torch.isneginf(lse[:, :, :blind]).all() and torch.isfinite(lse[:, :, blind:]).all()
    for t in leaves:
        assert torch.isfinite(t.grad).all()
    assert torch.count_nonzero(leaves[0].grad[:, :blind]) == 0  # dq of blind rows


def test_lse_matches_logsumexp_of_the_scores():
    q, k, v, qb, kb, _ = make_inputs(2, 2, 7, 7, 8, 2, torch.float64, device="cpu")
    _, lse = reference(q, k, v, qb, kb, False, 0.25)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * 0.25 + torch.einsum("bqhr,bkhr->bhqk", qb, kb)
    assert torch.allclose(lse, torch.logsumexp(s, -1))


def test_gradcheck_in_float64():
    q, k, v, qb, kb, _ = make_inputs(1, 2, 5, 3, 8, 2, torch.float64, (1, 5, 1, 2), (1, 3, 2, 2), device="cpu")
    leaves = tuple(t.requires_grad_() for t in (q, k, v, qb, kb))
    assert torch.autograd.gradcheck(lambda *a: reference(*a, True, 0.7)[0], leaves)
