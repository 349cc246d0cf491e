"""Host (CPU) time per call of the Python entry points, on a problem so small that the GPU is never
the limit: the issue rate of a loop of calls, synchronised once at the end, is the CPU cost of one
call (checks, autograd, dispatch, argument block, ctypes, the library's launch path).

    python3 bench/call_overhead.py [--calls 300] [--json out.json]

Rows: ForwardCall.run (the argument block built once); the argument checks and the forward launch
that flash_bias_func runs, alone; flash_bias_func without gradients;
flash_bias_func + torch.autograd.grad of all five inputs; each of the last two through the eager
path (the default) and through the custom ops (attention.eager_fast_path = False, what
torch.compile traces); PyTorch SDPA's forward and forward + backward on the same shapes for scale.
Median of five rounds."""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

try:
    import flashbias
except ImportError:  # run from the repository without installing
    sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "python"))
    import flashbias  # noqa: E402
from flashbias import attention  # noqa: E402


def per_call_us(fn, calls, rounds=5):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the eager forward + backward")
    args = ap.parse_args()
    if args.calls < 1:
        ap.error(f"--calls must be at least 1, got {args.calls}")
    if not torch.cuda.is_available():
        print("call_overhead: no CUDA GPU; nothing to measure", file=sys.stderr)
        return 1
    B, H, N, D, R = 1, 1, 128, 32, 16
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, qb, kb = (torch.randn(B, N, H, x, device="cuda", dtype=torch.float16, generator=g)
                       for x in (D, D, D, R, R))
    do = torch.randn(B, N, H, D, device="cuda", dtype=torch.float16, generator=g)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, qb, kb)]
    call = flashbias.ForwardCall(q, k, v, qb, kb)
    rows = {"ForwardCall.run": per_call_us(call.run, args.calls),
            "  of which: argument checks (_check_inputs)": per_call_us(
                lambda: attention._check_inputs(q, k, v, qb, kb, None, False, None), args.calls),
            "  of which: forward launch (_forward_impl)": per_call_us(
                lambda: attention._forward_impl(q, k, v, qb, kb, False, None), args.calls)}

    def fwd_bwd():
        o = flashbias.flash_bias_func(*leaves)
        return torch.autograd.grad(o, leaves, do)
    for fast in (True, False):
        attention.eager_fast_path = fast
        path = "eager path" if fast else "custom ops"
        rows[f"flash_bias_func, no grad ({path})"] = per_call_us(
            lambda: flashbias.flash_bias_func(q, k, v, qb, kb), args.calls)
        rows[f"flash_bias_func + autograd.grad ({path})"] = per_call_us(fwd_bwd, args.calls)
    attention.eager_fast_path = True
    with torch.no_grad():
        out, lse = attention._forward_impl(q, k, v, qb, kb, False, None)
    rows["  of which: backward launch (_backward_impl)"] = per_call_us(
        lambda: attention._backward_impl(do, q, k, v, qb, kb, out, lse, False, None), args.calls)
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.calls):
            fwd_bwd()  # the eager path (eager_fast_path is True again here)
        torch.cuda.synchronize()
        prof.disable()
        print(f"# cProfile of {args.calls} eager forward + backward calls (sorted by own time)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    qt, kt, vt, dot_ = (x.transpose(1, 2) for x in (leaves[0], leaves[1], leaves[2], do))
    with torch.no_grad():
        rows["sdpa forward, no grad"] = per_call_us(lambda: F.scaled_dot_product_attention(qt, kt, vt), args.calls)

    def sdpa_fwd_bwd():
        o = F.scaled_dot_product_attention(qt, kt, vt)
        return torch.autograd.grad(o, leaves[:3], dot_)
    rows["sdpa forward + autograd.grad"] = per_call_us(sdpa_fwd_bwd, args.calls)

    name = torch.cuda.get_device_name()
    print(f"# host time per call (us), b{B} h{H} n{N} d{D} r{R} fp16, {name}, torch {torch.__version__}")
    for k_, t in rows.items():
        print(f"{k_:50s} {t:8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "shape": [B, H, N, D, R], "calls": args.calls,
                       "per_call_us": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
