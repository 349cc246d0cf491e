"""Forward (and, with --bwd, forward + backward) benchmark of FlashBias JIT against the peers of shared/BENCH.md, in one process, on the
same inputs: sdpa_concat (the paper's PyTorch route), sdpa_dense, flex_dense, sdpa_nobias (the floor).

    python3 bench/peers.py [--cases seed_n4k,alibi_gpt2] [--json out.json] [--skip-flex] [--portable]

Our kernels run through the Python package (python/flashbias, over libflashbias.so; FLASHBIAS_LIB
or the repository's build folders): flashbias_ms times a prepared call (flashbias.ForwardCall: the
argument block built once, so the time is the launch and the kernel, as the peers' are);
flashbias_func_ms times flash_bias_func itself (checks, the eager entry point, argument block).
Time = median of triton.testing.do_bench (which clears L2 between runs), after its warm-up; every
contender of a case is timed in --rounds alternating rounds (default 3) and reported as the median
of its rounds (each round's time is kept in the JSON), so clock drift over a case hits all alike.
Error = relative L2 of our output against an fp32 SDPA of the dense-bias problem."""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

try:
    import flashbias  # installed (pip install ./python)
except ImportError:  # run from the repository without installing
    sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "python"))
    import flashbias  # noqa: E402

CASES = {
    # name: (B, H, N, D, R, causal)
    "seed_n4k": (2, 4, 4096, 32, 8, False),
    "seed_n16k": (2, 4, 16384, 32, 8, False),
    "alibi_gpt2": (1, 50, 8192, 32, 2, True),
    "llm_d64": (4, 16, 4096, 64, 16, False),
    "llm_d128": (2, 16, 8192, 128, 16, False),
    "llm_d128_causal": (2, 16, 8192, 128, 16, True),
    "af3_tri": (256, 4, 384, 32, 16, False),
}


def do_bench(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


ROUNDS = 3  # --rounds


def time_contenders(res, contenders, rounds):
    """Times every contender (name -> fn) in `rounds` alternating rounds (ours, peer, peer, ...,
    then again), so that a drift of the GPU's clocks over the case lands on all of them alike.
    res[name + "_ms"] = the median over the rounds, res[name + "_rounds_ms"] = every round's
    median. A contender that raises is reported in res[name + "_error"] and dropped."""
    samples = {name: [] for name in contenders}
    starts = {name: [] for name in contenders}
    live = dict(contenders)
    for _ in range(rounds):
        for name, fn in list(live.items()):
            try:
                starts[name].append(round(time.time(), 2))
                samples[name].append(do_bench(fn))
            except Exception as e:  # report, never hide
                res[name + "_error"] = str(e).splitlines()[0][:200]
                del live[name]
    for name, times in samples.items():
        if name in live and times:
            res[name + "_ms"] = statistics.median(times)
            res[name + "_rounds_ms"] = times
            res[name + "_rounds_start"] = starts[name]  # Unix time of each round (to match clock logs)


def make_inputs(B, H, N, D, R, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, N, H, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, N, H, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, N, H, D, device="cuda", dtype=dtype, generator=g)
    qb = (torch.randn(B, N, H, R, device="cuda", dtype=torch.float32, generator=g) / math.sqrt(R)).to(dtype)
    kb = torch.randn(B, N, H, R, device="cuda", dtype=dtype, generator=g)
    return q, k, v, qb, kb


def dense_bias(qb, kb, causal, dtype):
    # [B, H, Nq, Nk]
    bias = torch.einsum("bqhr,bkhr->bhqk", qb.float(), kb.float())
    if causal:
        N, M = bias.shape[-2], bias.shape[-1]
        keep = torch.ones(N, M, device=bias.device, dtype=torch.bool).tril(diagonal=M - N)
        bias = bias.masked_fill(~keep, float("-inf"))
    return bias.to(dtype)


def run_case(name, dtype, skip_flex, check, rounds=ROUNDS):
    B, H, N, D, R, causal = CASES[name]
    scale = 1.0 / math.sqrt(D)
    q, k, v, qb, kb = make_inputs(B, H, N, D, R, dtype, seed=int(time.time()) & 0xFFFF)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # BHSD views for SDPA
    res = {"case": name, "B": B, "H": H, "N": N, "D": D, "R": R, "causal": causal, "dtype": str(dtype)}
    flops = 4 * B * H * N * N * D * (0.5 if causal else 1.0)

    call = flashbias.ForwardCall(q, k, v, qb, kb, causal=causal, softmax_scale=scale)
    out = call.run()
    torch.cuda.synchronize()

    if check:
        # fp32 reference on the dense-bias problem (memory-efficient SDPA does not materialise S).
        heads = slice(0, min(H, 4))
        bias32 = dense_bias(qb[:, :, heads], kb[:, :, heads], causal, torch.float32)
        ref = F.scaled_dot_product_attention(qt[:, heads].float(), kt[:, heads].float(), vt[:, heads].float(),
                                             attn_mask=bias32, scale=scale)
        got = out.transpose(1, 2)[:, heads].float()
        res["rel_l2"] = ((got - ref).norm() / ref.norm()).item()
        del bias32, ref

    qc = torch.cat([q * scale, qb], dim=-1).transpose(1, 2)
    kc = torch.cat([k, kb], dim=-1).transpose(1, 2)
    bias = dense_bias(qb, kb, causal, dtype)
    contenders = {
        "flashbias": call.run,
        "flashbias_func": lambda: flashbias.flash_bias_func(q, k, v, qb, kb, causal=causal, softmax_scale=scale),
        "sdpa_nobias": lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale),
        "sdpa_concat": lambda: F.scaled_dot_product_attention(qc, kc, vt, is_causal=causal, scale=1.0),
        "sdpa_dense": lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=scale),
    }

    if not skip_flex and B * H * N * N >= 2**31:
        # The captured [B, H, N, N] bias has more elements than int32 indexing reaches; the
        # compiled score_mod then reads out of bounds (seen: illegal address on seed_n16k).
        res["flex_dense_error"] = "skipped: dense bias over 2^31 elements"
    elif not skip_flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b, h, q_idx, kv_idx]
        block_mask = None
        if causal:
            def causal_mask(b, h, q_idx, kv_idx):
                return q_idx >= kv_idx
            block_mask = create_block_mask(causal_mask, None, None, N, N)
        try:
            flex(qt, kt, vt, score_mod=score_mod, block_mask=block_mask, scale=scale)
            contenders["flex_dense"] = lambda: flex(qt, kt, vt, score_mod=score_mod, block_mask=block_mask,
                                                    scale=scale)
        except Exception as e:  # report, never hide
            res["flex_dense_error"] = str(e).splitlines()[0][:200]
    time_contenders(res, contenders, rounds)
    res["flashbias_tflops"] = flops / (res["flashbias_ms"] * 1e-3) / 1e12
    del bias, qc, kc
    torch.cuda.empty_cache()
    return res




def run_case_bwd(name, dtype, rounds=ROUNDS):
    """fwd+bwd (BENCH.md's second table): one forward and the gradients of every input that carries
    them, from a fixed dO, through torch.autograd.grad (no .grad accumulation in the timing).
    Ours: dq, dk, dv, dq_bias, dk_bias (deterministic mode). sdpa_concat: grads of the concatenated
    q', k' and v (so of q, k, v, Qb, Kb). sdpa_dense: grads of q, k, v and the dense bias.
    sdpa_nobias: q, k, v."""
    B, H, N, D, R, causal = CASES[name]
    scale = 1.0 / math.sqrt(D)
    q, k, v, qb, kb = make_inputs(B, H, N, D, R, dtype, seed=int(time.time()) & 0xFFFF)
    for t in (q, k, v, qb, kb):
        t.requires_grad_(True)
    do = torch.randn(B, N, H, D, device="cuda", dtype=dtype)
    res = {"case": name + " fwd+bwd", "B": B, "H": H, "N": N, "D": D, "R": R, "causal": causal, "dtype": str(dtype)}
    # FlashAttention's convention: the backward does 2.5x the forward's matmul work (five N^2 D
    # products against two), so fwd+bwd counts 3.5 forwards. For orientation; the ratios count.
    flops = 3.5 * 4 * B * H * N * N * D * (0.5 if causal else 1.0)

    def ours():
        o = flashbias.flash_bias_func(q, k, v, qb, kb, causal=causal, softmax_scale=scale)
        return torch.autograd.grad(o, (q, k, v, qb, kb), do)
    ours()
    torch.cuda.synchronize()

    qt, kt, vt, dot_ = (x.transpose(1, 2) for x in (q, k, v, do))

    def sdpa_nobias():
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale)
        return torch.autograd.grad(o, (q, k, v), dot_)

    def sdpa_concat():
        qc = torch.cat([q * scale, qb], dim=-1).transpose(1, 2)
        kc = torch.cat([k, kb], dim=-1).transpose(1, 2)
        o = F.scaled_dot_product_attention(qc, kc, vt, is_causal=causal, scale=1.0)
        return torch.autograd.grad(o, (q, k, v, qb, kb), dot_)

    bias = dense_bias(qb.detach(), kb.detach(), causal, dtype).requires_grad_(True)

    def sdpa_dense():
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=bias, scale=scale)
        return torch.autograd.grad(o, (q, k, v, bias), dot_)
    time_contenders(res, {"flashbias": ours, "sdpa_nobias": sdpa_nobias, "sdpa_concat": sdpa_concat,
                          "sdpa_dense": sdpa_dense}, rounds)
    res["flashbias_tflops"] = flops / (res["flashbias_ms"] * 1e-3) / 1e12
    del bias
    torch.cuda.empty_cache()
    return res


BWD_CASES = ["seed_n16k", "llm_d64", "llm_d128", "llm_d128_causal", "af3_tri"]  # BENCH.md's fwd+bwd rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--dtype", default="f16", choices=["f16", "bf16"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-flex", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--in-process", action="store_true", help="run all cases in this process")
    ap.add_argument("--bwd", action="store_true", help="fwd+bwd rows (cases default to BENCH.md's fwd+bwd rows)")
    ap.add_argument("--portable", action="store_true",
                    help="our kernels from the portable family (mma.sync), even where a faster one exists")
    ap.add_argument("--rounds", type=int, default=ROUNDS,
                    help=f"alternating rounds over the contenders per case; each time is their median (default {ROUNDS})")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {a.rounds}")
    if a.bwd and a.cases == ",".join(CASES):
        a.cases = ",".join(BWD_CASES)
    dtype = torch.float16 if a.dtype == "f16" else torch.bfloat16
    if "," in a.cases and not a.in_process:
        # One process per case: a fault in one peer (a CUDA error poisons the context) cannot
        # take the other cases down.
        import subprocess, tempfile, os
        rows = []
        for name in a.cases.split(","):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
                tmp = tf.name
            cmd = [sys.executable, __file__, "--cases", name, "--dtype", a.dtype, "--json", tmp]
            cmd += ["--skip-flex"] if a.skip_flex else []
            cmd += ["--no-check"] if a.no_check else []
            cmd += ["--bwd"] if a.bwd else []
            cmd += ["--portable"] if a.portable else []
            cmd += ["--rounds", str(a.rounds)]
            rc = subprocess.call(cmd)
            if rc == 0:
                rows += json.load(open(tmp))["rows"]
            else:
                print(f"{name}: failed with exit code {rc}", flush=True)
                rows.append({"case": name, "error": f"exit code {rc}"})
            os.unlink(tmp)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "portable": a.portable,
                           "rows": rows}, f, indent=1)
        return
    if a.portable:
        flashbias.set_context_options(portable=True)
    rows = []
    print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"libflashbias {flashbias.library_version()} ({flashbias.library_path()})"
          f"{'  portable family' if a.portable else ''}", flush=True)
    for name in a.cases.split(","):
        if a.bwd:
            r = run_case_bwd(name, dtype, a.rounds)
            rows.append(r)
            peers = [r.get(p) for p in ("sdpa_concat_ms", "sdpa_dense_ms") if r.get(p)]
            best = min(peers) if peers else float("nan")
            print(f"{r['case']:<24} ours {r['flashbias_ms']:8.3f} ms  concat {r.get('sdpa_concat_ms', float('nan')):8.3f} "
                  f"dense {r.get('sdpa_dense_ms', float('nan')):8.3f} nobias {r['sdpa_nobias_ms']:8.3f} | "
                  f"best peer/ours {best / r['flashbias_ms']:5.2f}x  ours/nobias "
                  f"{r['flashbias_ms'] / r['sdpa_nobias_ms']:5.2f}x", flush=True)
            continue
        r = run_case(name, dtype, a.skip_flex, not a.no_check, a.rounds)
        rows.append(r)
        peers = [r.get(p) for p in ("sdpa_concat_ms", "sdpa_dense_ms", "flex_dense_ms") if r.get(p)]
        best = min(peers) if peers else float("nan")
        print(f"{name:<16} ours {r['flashbias_ms']:8.3f} ms ({r['flashbias_tflops']:6.1f} TF/s, "
              f"flash_bias_func {r['flashbias_func_ms']:8.3f}) "
              f"concat {r.get('sdpa_concat_ms', float('nan')):8.3f} dense {r.get('sdpa_dense_ms', float('nan')):8.3f} "
              f"flex {r.get('flex_dense_ms', float('nan')):8.3f} nobias {r['sdpa_nobias_ms']:8.3f} | "
              f"best peer/ours {best / r['flashbias_ms']:5.2f}x  ours/nobias {r['flashbias_ms'] / r['sdpa_nobias_ms']:5.2f}x"
              f"  relL2 {r.get('rel_l2', float('nan')):.2e}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "portable": a.portable,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
