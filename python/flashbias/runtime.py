"""Contexts, the tile-selection policy, tuning, bundles and the kernel cache, from Python.

A Context is the library's handle on one GPU: it holds the kernels compiled (or loaded from the
cache or a bundle) for that device. This module keeps one per (device, policy, portable,
check_pointers), created on first use and kept for the life of the process: kernels captured into CUDA graphs, and work already
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
_options = {"portable": False, "check_pointers": True}  # set_context_options(); replaced, never mutated
_contexts = {}       # (device, policy, portable, check_pointers) -> Context
_retired = []        # Contexts replaced after tune()/load_bundle(): never destroyed (see above)


def _flag(name, value):
    """A bool option: True/False (or 1/0); anything else is a TypeError naming the option."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


class Context:
    """A flashbias_context on one CUDA device. Made by get_context(); not destroyed while the
    process runs (kernels it launched may sit in captured CUDA graphs).

    device: CUDA ordinal (-1: the current CUDA context's device). policy: "heuristic", "tune" or
    "cache-only" (see set_policy). portable: run the portable kernel family (mma.sync, sm_80 and
    newer) even where a faster family exists (the wgmma/TMA kernels on sm_90a), for comparison and
    testing; its kernels are compiled for the plain arch (sm_90, not sm_90a), so their cache and
    bundle entries stay apart. check_pointers: verify that every pointer is device memory (one
    driver query per pointer); False skips that (e.g. system-allocated memory on HMM/ATS systems).
    The two options need a library with flashbias_context_create_with_options ("context_options"
    in library_features()); with an older one, asking for a non-default value raises
    MissingSymbolError. Creation raises FlashBiasError (e.g. status no_gpu without a GPU)."""

    def __init__(self, device, policy, *, portable=False, check_pointers=True):
        portable = _flag("portable", portable)
        check_pointers = _flag("check_pointers", check_pointers)
        lib = _library.load()
        ctypes = _library.ctypes
        handle = ctypes.c_void_p()
        what = (f"creating a FlashBias context on CUDA device {device} (policy {policy}"
                + (", portable kernels" if portable else "") + ("" if check_pointers else ", no pointer checks") + ")")
        if "context_options" in lib.features:
            opts = _library.ContextOptions()
            lib.context_options_init(ctypes.byref(opts))
            opts.device = int(device)
            opts.policy = _library.POLICIES[policy]
            opts.check_pointers = int(check_pointers)
            opts.portable = int(portable)
            status = lib.context_create_with_options(ctypes.byref(opts), ctypes.byref(handle))
        else:
            if portable:
                lib.require("context_options", "Context(portable=True)")
            if not check_pointers:
                lib.require("context_options", "Context(check_pointers=False)")
            status = lib.context_create(int(device), _library.POLICIES[policy], ctypes.byref(handle))
        lib.check(status, what)
        self.handle = handle
        self.device = int(device)
        self.policy = policy
        self.portable = portable
        self.check_pointers = check_pointers
        self.lib = lib

    def __repr__(self):
        return (f"<flashbias.Context device={self.device} policy={self.policy} portable={self.portable} "
                f"check_pointers={self.check_pointers}>")


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


def set_context_options(*, portable=None, check_pointers=None):
    """The Context options that get_context() (and so flash_bias_func and ForwardCall) uses from
    now on; None leaves an option as it is. portable=True runs the portable kernel family even
    where a faster one exists (for comparison and testing); check_pointers=False skips the check
    that every pointer is device memory. See Context. Returns the previous settings as a dict, so
    that set_context_options(**old) restores them. Contexts are cached per setting: switching back
    reuses the earlier ones."""
    global _options
    changes = {}
    if portable is not None:
        changes["portable"] = _flag("portable", portable)
    if check_pointers is not None:
        changes["check_pointers"] = _flag("check_pointers", check_pointers)
    with _lock:
        old = _options
        _options = dict(old, **changes)
    return dict(old)


def get_context_options():
    """The Context options get_context() uses now: {"portable": ..., "check_pointers": ...}."""
    return dict(_options)


def get_context(device, *, portable=None, check_pointers=None):
    """The cached Context for CUDA device ordinal `device` under the current policy and Context
    options (set_context_options; portable/check_pointers given here override them for this
    call). Created on first use; creation raises FlashBiasError, e.g. status no_gpu without a GPU,
    or MissingSymbolError for a non-default option with a library that lacks them."""
    options = _options
    portable = options["portable"] if portable is None else _flag("portable", portable)
    check_pointers = options["check_pointers"] if check_pointers is None else _flag("check_pointers", check_pointers)
    key = (int(device), _policy, portable, check_pointers)
    ctx = _contexts.get(key)
    if ctx is None:
        with _lock:
            ctx = _contexts.get(key)
            if ctx is None:
                ctx = Context(key[0], key[1], portable=portable, check_pointers=check_pointers)
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
