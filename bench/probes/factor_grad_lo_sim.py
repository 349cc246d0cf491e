"""fp64 simulation (CPU, numpy): what the factor gradients lose if the backward multiplies only the
16-bit dS (hi) into them, without the residual lo = (dS - hi) * kLoScale that both backward families
add today (a second product per factor gradient, and a convert, subtract, multiply and pack per score).

Inputs as the tests draw them (tuner/host_tensor.cpp make_inputs): Q, K, V, dO ~ N(0, 1), Qb ~ N(0, 1)
/ sqrt(R), Kb ~ N(0, 1), all rounded to fp16. dS is exact (fp64) and then rounded to fp16 once, so the
figure is the error that dropping lo adds, alone. Relative L2 over the whole gradient, summed over
the broadcast dimensions as the kernels write it. Worst over the seeds of each case.

    python3 bench/probes/factor_grad_lo_sim.py [seeds]

Written in session 19 (2026-12-07); its output is in docs/PERF_NOTES.md (sm90 step 23).
"""
import sys

import numpy as np


def f16(x):
    return x.astype(np.float16).astype(np.float64)


def attention(rng, B, H, Nq, Nk, D, R, causal, qb_shared, kb_shared):
    """Random fp16 inputs as the tests draw them, and the exact forward: (do, v, qbf, kbf, p, o).
    *_shared: the factor is one tensor for every batch and head (layout 1n1r)."""
    q, do = (f16(rng.standard_normal((B, H, Nq, D))) for _ in range(2))
    k, v = (f16(rng.standard_normal((B, H, Nk, D))) for _ in range(2))
    qb = f16(rng.standard_normal((1 if qb_shared else B, 1 if qb_shared else H, Nq, R)) / np.sqrt(R))
    kb = f16(rng.standard_normal((1 if kb_shared else B, 1 if kb_shared else H, Nk, R)))
    qbf, kbf = np.broadcast_to(qb, (B, H, Nq, R)), np.broadcast_to(kb, (B, H, Nk, R))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D) + qbf @ kbf.transpose(0, 1, 3, 2)
    if causal:  # bottom-right aligned, as the kernels
        i, j = np.arange(Nq)[:, None], np.arange(Nk)[None, :]
        s = np.where(j <= i + (Nk - Nq), s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    l = p.sum(-1, keepdims=True)
    p = p / np.where(l > 0, l, 1)
    return do, v, qbf, kbf, p, p @ v


def case(rng, B, H, Nq, Nk, D, R, causal, qb_shared, kb_shared):
    """Relative L2 of dKb and dQb from fp16 dS alone (shared factors: gradients summed over batch
    and heads)."""
    do, v, qbf, kbf, p, o = attention(rng, B, H, Nq, Nk, D, R, causal, qb_shared, kb_shared)
    ds = p * (do @ v.transpose(0, 1, 3, 2) - (do * o).sum(-1, keepdims=True))

    def reduce(x, shared):
        return x.sum((0, 1), keepdims=True) if shared else x

    def rel(a, b):
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)

    dkb = reduce(ds.transpose(0, 1, 3, 2) @ qbf, kb_shared)
    dkb_hi = reduce(f16(ds).transpose(0, 1, 3, 2) @ qbf, kb_shared)
    dqb = reduce(ds @ kbf, qb_shared)
    dqb_hi = reduce(f16(ds) @ kbf, qb_shared)
    return rel(dkb_hi, dkb), rel(dqb_hi, dqb)


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    rng = np.random.default_rng(19)
    cases = []
    # The [delta] test's problems (tests/templates/backward_test.cpp): few queries or few keys, shared factors.
    cases += [("delta: nq1 nk257 causal", (1, 2, 1, 257, 72, 1, True, True, True)),
              ("delta: nq257 nk3", (1, 2, 257, 3, 72, 1, False, True, True)),
              ("delta: nq1 nk3 r2", (1, 2, 1, 3, 64, 2, False, True, True))]
    cases += [("nq500 nk3 shared", (2, 2, 500, 3, 32, 1, False, True, True)),
              ("nq500 nk2 kb shared", (2, 2, 500, 2, 32, 2, False, False, True)),
              ("nq1 nk512 shared", (1, 4, 1, 512, 32, 1, False, True, True)),
              ("nq8 nk64 shared", (1, 4, 8, 64, 32, 1, False, True, True)),
              ("nq64 nk8 shared", (1, 4, 64, 8, 32, 1, False, True, True))]
    for n in (16, 32, 64, 128, 1024):
        for causal in (False, True):
            for qs, ks in ((True, True), (False, True), (True, False), (False, False)):
                for r in (1, 2, 16):
                    if n == 1024 and (r != 16 or causal):
                        continue
                    cases.append((f"n{n}{' causal' if causal else ''} r{r} qb{'1n1r' if qs else ''} kb{'1n1r' if ks else ''}",
                                  (1 if n == 1024 else 2, 2, n, n, 32, r, causal, qs, ks)))
    for name, args in cases:
        worst = [0.0, 0.0]
        for _ in range(seeds):
            worst = [max(w, e) for w, e in zip(worst, case(rng, *args))]
        print(f"{name:36s} dKb {worst[0]:.2e}  dQb {worst[1]:.2e}")


if __name__ == "__main__":
    main()
