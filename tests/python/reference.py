"""The PyTorch reference the GPU tests compare with (and its inputs), checked on the CPU by
test_reference.py: O = softmax(scale q k^T + qb kb^T, causal bottom-right) v, materialising the
dense bias, in any dtype (float64 for the reference, bfloat16 for the "plain" implementation whose
error sets the bf16 bound)."""
import math

import torch


def reference(q, k, v, qb, kb, causal, scale):
    """Differentiable, in the inputs' dtype, BSHD. Factors broadcast by expand. Causal: query i sees
    key j iff j <= i + Nk - Nq; a row that sees no key gives O = 0, LSE = -inf, zero gradients."""
    B, Nq, H, D = q.shape
    Nk = k.shape[1]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if qb is not None:
        R = qb.shape[3]
        s = s + torch.einsum("bqhr,bkhr->bhqk", qb.expand(B, Nq, H, R), kb.expand(B, Nk, H, R))
    if causal:
        i = torch.arange(Nq, device=q.device)[:, None]
        j = torch.arange(Nk, device=q.device)[None, :]
        keep = j <= i + (Nk - Nq)
        seen = keep.any(dim=1)[:, None]
        s = torch.where(keep, s, torch.tensor(-math.inf, dtype=s.dtype, device=s.device))
        # Blind rows get finite scores for the softmax (then zeroed): no NaN in values or gradients.
        s = torch.where(seen, s, torch.zeros((), dtype=s.dtype, device=s.device))
        p = torch.softmax(s, dim=-1) * seen.to(s.dtype)
        lse = torch.logsumexp(s, dim=-1).masked_fill(~seen[:, 0], -math.inf)
    else:
        p = torch.softmax(s, dim=-1)
        lse = torch.logsumexp(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v), lse


def rel_l2(got, want):
    """||got - want|| / ||want|| in float64 (the plain difference norm when want is 0)."""
    got, want = got.double(), want.double()
    denom = want.norm().item()
    diff = (got - want).norm().item()
    return diff / denom if denom > 0 else diff


def make_inputs(B, H, Nq, Nk, D, R, dtype, qb_shape=None, kb_shape=None, seed=0, device="cuda"):
    """q, k, v ~ N(0, 1); qb ~ N(0, 1/R) and kb ~ N(0, 1) (a bias of order 1); dO ~ N(0, 1)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=g) * scale).to(dtype)
    q, k, v = rnd(B, Nq, H, D), rnd(B, Nk, H, D), rnd(B, Nk, H, D)
    qb = kb = None
    if R:
        qb = rnd(*(qb_shape or (B, Nq, H, R)), scale=1 / math.sqrt(R))
        kb = rnd(*(kb_shape or (B, Nk, H, R)))
    dout = rnd(B, Nq, H, D)
    return q, k, v, qb, kb, dout
