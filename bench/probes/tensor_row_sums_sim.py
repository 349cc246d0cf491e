"""fp64 simulation (CPU, numpy) of the dq kernel's two row sums taken on the tensor cores, for the
backward entries without the factor gradients' residual (fp16, 64 or more queries and keys).

The kernel (templates/sm90/bwd_kernel.cuh, dq) forms, per query row, c = sum_j P'_j (the normaliser
that takes the forward's P' to P, and lse_dq = lse + log c for dkdv) and Sigma = sum_j dS'_j (the
correction of Delta, measured from the 16-bit O; sm80/bwd_kernel.cuh "Delta"). As FP32 adds they
sum the fp32 values; as products with a tile of ones they sum the 16-bit values that the products
with K and Kb use. This models both and prints the relative L2 error of dQb and dKb (as the kernels
write them) and the largest |c - 1|, against the exact gradients:

  A: fp32 sums (the entries with the residual, and the library before)
  B: sums of the 16-bit values (the kTensorSums entries)

Inputs as factor_grad_lo_sim.py (the tests' distribution, fp16). Both variants use 16-bit dS alone
in the factor products (no residual), 16-bit P in P Kb, and Delta from the 16-bit O, as the kernels.

    python3 bench/probes/tensor_row_sums_sim.py [seeds]

Written in session 20 (2026-12-07) for a change that was built, measured on an H100 and dropped: the
sums were as accurate as this predicts, and the eight extra 64x8 products per step cost more than the
FP32 adds they replaced (docs/PERF_NOTES.md, sm90 step 24).
"""
import sys

import numpy as np

from factor_grad_lo_sim import attention, f16


def case(rng, B, H, Nq, Nk, D, R, causal, qb_shared, kb_shared):
    do, v, qbf, kbf, p, o = attention(rng, B, H, Nq, Nk, D, R, causal, qb_shared, kb_shared)
    dp = do @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (do * o).sum(-1, keepdims=True))
    live = p.sum(-1, keepdims=True) > 0  # rows that see a key

    def reduce(x, shared):
        return x.sum((0, 1), keepdims=True) if shared else x

    def rel(a, b):
        return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)

    dkb = reduce(ds.transpose(0, 1, 3, 2) @ qbf, kb_shared)
    dqb = reduce(ds @ kbf, qb_shared)
    delta16 = (do * f16(o)).sum(-1, keepdims=True)  # Delta from the caller's 16-bit O
    ds1 = p * (dp - delta16)                        # dq's dS'
    out = []
    for tensor in (False, True):
        c = (f16(p) if tensor else p).sum(-1, keepdims=True)
        sigma = (f16(ds1) if tensor else ds1).sum(-1, keepdims=True)
        c_safe = np.where(c > 0, c, 1)
        dqb_k = (f16(ds1) @ kbf) / c_safe - (sigma / c_safe) * ((f16(p) @ kbf) / c_safe)
        pk = p / c_safe                                   # dkdv's P from lse_dq
        dsk = pk * (dp - (delta16 + sigma / c_safe))      # dkdv's dS from delta_dq
        dkb_k = f16(dsk).transpose(0, 1, 3, 2) @ qbf
        out += [rel(reduce(dkb_k, kb_shared), dkb), rel(reduce(dqb_k, qb_shared), dqb),
                float(np.abs(np.where(live, c, 1) - 1).max())]
    return out


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    rng = np.random.default_rng(20)
    cases = []
    for n in (64, 65, 128, 1024):
        for causal in (False, True):
            for qs, ks in ((True, True), (False, True), (False, False)):
                for r in (1, 2, 16):
                    if n == 1024 and (r != 16 or causal):
                        continue
                    cases.append((f"n{n}{' causal' if causal else ''} r{r} qb{'1n1r' if qs else ''} kb{'1n1r' if ks else ''}",
                                  (1 if n == 1024 else 2, 2, n, n, 32, r, causal, qs, ks)))
    cases += [("nq64 nk1000 shared", (1, 2, 64, 1000, 64, 2, False, True, True)),
              ("nq1000 nk64 shared", (1, 2, 1000, 64, 64, 2, False, True, True))]
    print(f"{'case':36s} {'A: fp32 sums':>30s}   {'B: 16-bit sums':>30s}")
    for name, args in cases:
        worst = [0.0] * 6
        for _ in range(seeds):
            worst = [max(w, e) for w, e in zip(worst, case(rng, *args))]
        print(f"{name:36s} dKb {worst[0]:.2e} dQb {worst[1]:.2e} c {worst[2]:.1e}   "
              f"dKb {worst[3]:.2e} dQb {worst[4]:.2e} c {worst[5]:.1e}")


if __name__ == "__main__":
    main()
