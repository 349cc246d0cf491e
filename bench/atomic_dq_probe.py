"""What a fast (atomic dQ) backward would pay for its dQ traffic alone, on the GPU machine.

In such a mode every (key block, query step) pair of the dkdv pass adds a STEP x D fp32 tile of
dQ (and a STEP x R tile of dQb) into a workspace with reductions, instead of the dq pass
recomputing S and dP. This times exactly that traffic with no other work: one Triton program per
(key block, head) adds tiles of ones into the workspace, with `atomic_add` (relaxed) and, for
comparison, with plain stores of the same bytes. Rows are the benchmark shapes of
shared/BENCH.md at block_n 64 (our d <= 64 tiles) and 128.

    python3 bench/atomic_dq_probe.py
"""
import torch
import triton
import triton.language as tl

STEP = 64


@triton.jit
def _accumulate(acc_ptr, seqlen_q, steps, D: tl.constexpr, STEP: tl.constexpr, ATOMIC: tl.constexpr):
    head = tl.program_id(1)
    rows = tl.arange(0, STEP)
    cols = tl.arange(0, D)
    ones = tl.full((STEP, D), 1.0, tl.float32)
    base = acc_ptr + head.to(tl.int64) * seqlen_q * D
    for s in range(steps):
        ptrs = base + (s * STEP + rows)[:, None] * D + cols[None, :]
        if ATOMIC:
            tl.atomic_add(ptrs, ones, sem="relaxed")
        else:
            tl.store(ptrs, ones)


def probe(name, heads, n, d, block_n):
    acc = torch.zeros(heads * n * d, device="cuda", dtype=torch.float32)
    blocks, steps = n // block_n, n // STEP
    gb = heads * blocks * n * d * 4 / 1e9
    out = []
    for atomic in (True, False):
        def launch():
            _accumulate[(blocks, heads)](acc, n, steps, D=d, STEP=STEP, ATOMIC=atomic, num_warps=4)
        ms = triton.testing.do_bench(launch, warmup=5, rep=50)
        out.append(ms)
    print(f"{name:16s} block_n {block_n:3d}  D {d:3d}  {gb:5.2f} GB  atomic {out[0]:6.3f} ms ({gb / out[0]:4.2f} TB/s)"
          f"  store {out[1]:6.3f} ms ({gb / out[1]:4.2f} TB/s)")


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    # (name, B*H, N, columns): dQ's D columns and dQb's R columns, as separate rows.
    for name, heads, n, d in [("llm_d64 dQ", 64, 4096, 64), ("llm_d64 dQb", 64, 4096, 16),
                              ("seed_n16k dQ", 8, 16384, 32), ("seed_n16k dQb", 8, 16384, 8),
                              ("llm_d128 dQ", 32, 8192, 128)]:
        for block_n in (64, 128):
            probe(name, heads, n, d, block_n)
