"""Contexts, the tile-selection policy, tuning, bundles and the kernel cache, from Python.

A Context is the library's handle on one GPU: it holds the kernels compiled (or loaded from the
cache or a bundle) for that device. This module keeps one per (device, policy), created on first
use and kept for the life of the process: kernels captured into CUDA graphs, and work already
queued, stay valid. tune() and load_bundle() retire the current ones (still kept alive) so that the
next call gets a fresh Context that sees the new winners and bundles.

Torch is not needed here.
"""
import json
import os
import threading

from . import _library

ENV_POLICY = "FLASHBIAS_POLICY"

_lock = threading.Lock()
_policy = "heuristic"
_contexts = {}       # (device, policy) -> Context
_retired = []        # Contexts replaced after tune()/load_bundle(): never destroyed (see above)


class Context:
    """A flashbias_context on one CUDA device. Made by get_context(); not destroyed while the
    process runs (kernels it launched may sit in captured CUDA graphs)."""

    def __init__(self, device, policy):
        lib = _library.load()
        handle = _library.ctypes.c_void_p()
        lib.check(lib.context_create(int(device), _library.POLICIES[policy], _library.ctypes.byref(handle)),
                  f"creating a FlashBias context on CUDA device {device} (policy {policy})")
        self.handle = handle
        self.device = int(device)
        self.policy = policy
        self.lib = lib

    def __repr__(self):
        return f"<flashbias.Context device={self.device} policy={self.policy}>"


def _normalise_policy(policy):
    text = str(policy).strip().lower().replace("_", "-")
    if text not in _library.POLICIES:
        raise ValueError(f"policy {policy!r} is not a policy: use one of {', '.join(_library.POLICIES)}")
    return text


def set_policy(policy):
    """How a Context picks a kernel's tiles on a miss, for Contexts created from now on:
    "heuristic" (a stored tuning winner, else the built-in heuristic; compiles with NVRTC),
    "tune" (tune an untuned problem on the spot, bounded by FLASHBIAS_TUNE_BUDGET seconds, store
    the winner, then run), "cache-only" (stored or bundled kernels only; a miss is an error and
    NVRTC is never loaded). Returns the previous setting. The FLASHBIAS_POLICY environment variable,
    when set, overrides this inside the library (it is the operator's switch)."""
    global _policy
    new = _normalise_policy(policy)
    with _lock:
        old, _policy = _policy, new
    return old


def get_policy():
    """The policy Contexts created now would run with: FLASHBIAS_POLICY if set, else set_policy's."""
    env = os.environ.get(ENV_POLICY, "")
    return _normalise_policy(env) if env else _policy


def get_context(device):
    """The cached Context for CUDA device ordinal `device` under the current policy (created on
    first use; creation raises FlashBiasError, e.g. status no_gpu without a GPU)."""
    key = (int(device), _policy)
    ctx = _contexts.get(key)
    if ctx is None:
        with _lock:
            ctx = _contexts.get(key)
            if ctx is None:
                ctx = Context(key[0], key[1])
                _contexts[key] = ctx
    return ctx


def retire_contexts():
    """Make the next call create fresh Contexts (which see newly stored winners and loaded
    bundles). The old ones stay alive: work they queued and graphs that captured their kernels
    remain valid."""
    with _lock:
        _retired.extend(_contexts.values())
        _contexts.clear()


def load_bundle(path):
    """Add a kernel bundle (`flashbias bundle export`) to those searched by Contexts created from
    now on; verifies it now (raises FlashBiasError, status cache_error, for a damaged file).
    Retires the current Contexts so that the next call uses the bundle. The FLASHBIAS_BUNDLE
    environment variable does the same for files known before the first Context."""
    lib = _library.load()
    lib.require("tuning")
    p = os.fspath(path)
    lib.check_tuning(lib.load_bundle(p.encode()), f"loading bundle {p}")
    retire_contexts()


def loaded_bundle_count():
    lib = _library.load()
    lib.require("tuning")
    return lib.loaded_bundle_count()


def cache_path():
    """The per-user kernel cache file (opened if needed), or None when FLASHBIAS_CACHE=off."""
    lib = _library.load()
    lib.require("tuning")
    out = _library.ctypes.POINTER(_library.ctypes.c_char)()
    lib.check_tuning(lib.cache_path(_library.ctypes.byref(out)), "opening the kernel cache")
    return lib.take_string(out)


def tune(problem, device=0, strategy="halving", budget_seconds=None):
    """Tune one forward problem on CUDA device `device`, like `flashbias tune --problem`: every
    candidate compiled, checked against the fp64 reference and timed; all of it and the winner
    stored in the per-user cache. `problem` is a problem string ("b=2,h=16,n=4096,d=128,r=16,
    mask=causal,dtype=bf16"); problem_string() makes one from tensors. budget_seconds: per key,
    compilation included (None: the CLI's default; 0: unlimited). Returns the report as a dict
    (winner, winner_ms, heuristic, heuristic_ms, speedup, counts, stored, ...). Raises
    FlashBiasError for a bad problem string (before any GPU work) or when no candidate passed
    (status not_found; the report is on the exception as .report). Retires the current Contexts
    so that the next call uses the winner. Blocks (and releases the GIL) while it runs; never call
    it during CUDA graph capture."""
    lib = _library.load()
    lib.require("tuning")
    budget = -1.0 if budget_seconds is None else float(budget_seconds)
    out = _library.ctypes.POINTER(_library.ctypes.c_char)()
    status = lib.tune(int(device), str(problem).encode(), (strategy or "").encode(), budget,
                      _library.ctypes.byref(out))
    text = lib.take_string(out)
    report = json.loads(text) if text else None
    try:
        lib.check_tuning(status, f"tuning {problem!r}")
    except _library.FlashBiasError as e:
        e.report = report
        raise
    retire_contexts()
    return report


_DTYPE_NAMES = {"torch.float16": "f16", "torch.bfloat16": "bf16"}


def factor_broadcast(t, batch, heads):
    """(batch shared, head shared) for a bias factor of shape [B|1, N, H|1, R]: a dimension is
    shared where its extent is 1 while the problem's is larger, or where the tensor is an
    expanded view (stride 0). Where both extents are 1 the factor is not shared, so the key is the
    one that `flashbias tune` with a plain layout tunes."""
    shape, stride = tuple(t.shape), tuple(t.stride())
    b = (shape[0] == 1 and batch > 1) or (shape[0] > 1 and stride[0] == 0)
    h = (shape[2] == 1 and heads > 1) or (shape[2] > 1 and stride[2] == 0)
    return b, h


def problem_string(q, k, v=None, q_bias=None, k_bias=None, causal=False, softmax_scale=None):
    """The problem string (for tune() and the `flashbias` CLI) of flash_bias_func's arguments,
    with the same factor sharing the call passes to the kernels."""
    B, Nq, H, D = (int(x) for x in q.shape)
    Nk = int(k.shape[1])
    dtype = _DTYPE_NAMES.get(str(q.dtype))
    if dtype is None:
        raise TypeError(f"q has dtype {q.dtype}; FlashBias runs float16 and bfloat16")
    parts = [f"b={B}", f"h={H}", f"nq={Nq}", f"nk={Nk}", f"d={D}"]
    if q_bias is not None:
        parts.append(f"r={int(q_bias.shape[3])}")
    if causal:
        parts.append("mask=causal")
    parts.append(f"dtype={dtype}")
    if softmax_scale is not None:
        parts.append(f"scale={float(softmax_scale)!r}")
    if q_bias is not None:
        for name, t in (("qb", q_bias), ("kb", k_bias)):
            b, h = factor_broadcast(t, B, H)
            layout = ("1" if b else "b") + "n" + ("1" if h else "h") + "r"
            if layout != "bnhr":
                parts.append(f"{name}={layout}")
    return ",".join(parts)
