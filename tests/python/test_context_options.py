"""Context options beyond device and policy (portable, check_pointers) from C and Python, without a
GPU: flashbias_context_options_init's defaults, the validation of every field of
flashbias_context_create_with_options (a message naming the field), creation without a GPU (no_gpu,
as flashbias_context_create), and the Python side: Context's keyword arguments, which C call it
makes, the clear error of an older library that lacks the call, and set_context_options /
get_context's cache per option."""
import ctypes
import types

import pytest

import flashbias
from flashbias import _library, runtime
from conftest import cuda_available


def _needs_options(library):
    if "context_options" not in library.features:
        pytest.skip(f"this libflashbias.so ({library.path}) has no flashbias_context_create_with_options")


def _last_error(library):
    return library.last_error().decode()


def test_options_init_gives_the_defaults(library):
    _needs_options(library)
    opts = _library.ContextOptions(device=7, policy=9, check_pointers=5, portable=5)
    library.context_options_init(ctypes.byref(opts))
    got = {name: getattr(opts, name) for name, _ in _library.ContextOptions._fields_}
    assert got == _library.CONTEXT_OPTION_DEFAULTS == {"device": -1, "policy": 0, "check_pointers": 1, "portable": 0}
    library.context_options_init(None)  # a no-op, not a crash


def test_create_with_options_rejects_null_arguments(library):
    _needs_options(library)
    opts = _library.ContextOptions()
    library.context_options_init(ctypes.byref(opts))
    assert library.context_create_with_options(ctypes.byref(opts), None) == _library.INVALID_ARGUMENT
    assert _last_error(library) == "out is null"
    handle = ctypes.c_void_p(1)
    assert library.context_create_with_options(None, ctypes.byref(handle)) == _library.INVALID_ARGUMENT
    assert _last_error(library) == "opts is null"
    assert handle.value is None  # *out is cleared on failure


@pytest.mark.parametrize("field, value, message", [
    ("device", -2, "device has the invalid value -2 (a CUDA ordinal >= 0, or -1 for the current context's device)"),
    ("policy", 3, "policy has the invalid value 3 (heuristic = 0, tune = 1, cache_only = 2)"),
    ("policy", -1, "policy has the invalid value -1 (heuristic = 0, tune = 1, cache_only = 2)"),
    ("check_pointers", 2, "check_pointers has the invalid value 2 (0 = off, 1 = on)"),
    ("check_pointers", -1, "check_pointers has the invalid value -1 (0 = off, 1 = on)"),
    ("portable", 2, "portable has the invalid value 2 (0 = off, 1 = on)"),
])
def test_create_with_options_names_the_bad_field(library, field, value, message):
    _needs_options(library)
    opts = _library.ContextOptions()
    library.context_options_init(ctypes.byref(opts))
    setattr(opts, field, value)
    handle = ctypes.c_void_p(1)
    assert library.context_create_with_options(ctypes.byref(opts), ctypes.byref(handle)) == _library.INVALID_ARGUMENT
    assert _last_error(library) == message
    assert handle.value is None


@pytest.mark.skipif(cuda_available(), reason="checks the error without a GPU")
@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("check_pointers", [True, False])
def test_without_a_gpu_every_option_combination_says_no_gpu(library, portable, check_pointers):
    _needs_options(library)
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.Context(0, "heuristic", portable=portable, check_pointers=check_pointers)
    assert e.value.status_name in ("no_gpu", "driver_error"), str(e.value)
    assert "CUDA device 0" in str(e.value)
    assert ("portable kernels" in str(e.value)) == portable
    assert ("no pointer checks" in str(e.value)) == (not check_pointers)
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.get_context(0, portable=portable, check_pointers=check_pointers)
    assert e.value.status_name in ("no_gpu", "driver_error"), str(e.value)


def test_option_values_are_checked_before_the_library_is_used(monkeypatch):
    def no_library():
        raise AssertionError("the library was loaded for a bad argument")
    monkeypatch.setattr(_library, "load", no_library)
    with pytest.raises(TypeError, match="portable must be True or False, got 'yes'"):
        flashbias.Context(0, "heuristic", portable="yes")
    with pytest.raises(TypeError, match="check_pointers must be True or False, got 2"):
        flashbias.Context(0, "heuristic", check_pointers=2)
    with pytest.raises(TypeError, match="portable"):
        flashbias.get_context(0, portable="on")
    with pytest.raises(TypeError, match="check_pointers"):
        flashbias.set_context_options(check_pointers="off")
    with pytest.raises(TypeError):
        flashbias.Context(0, "heuristic", True)  # the options are keyword-only
    assert flashbias.get_context_options() == {"portable": False, "check_pointers": True}


# ---------------------------------------------------------------------------------------------
# A fake library: which C call Context makes, with which options, and an older library's error.

class _Recorder:
    def __init__(self, name, calls, result=0, action=None):
        self.name, self.calls, self.result, self.action = name, calls, result, action
        self.restype = self.argtypes = None

    def __call__(self, *args):
        self.calls.append((self.name, args))
        if self.action is not None:
            self.action(*args)
        return self.result


def _init(ref):
    for name, value in _library.CONTEXT_OPTION_DEFAULTS.items():
        setattr(ref._obj, name, value)


def _fake_library(with_options, calls):
    names = list(_library._CORE) + (list(_library._OPTIONAL["context_options"]) if with_options else [])
    ns = types.SimpleNamespace()
    for n in names:
        result = b"9.9" if n == "flashbias_version" else (b"" if n == "flashbias_last_error" else 0)
        setattr(ns, n, _Recorder(n, calls, result, _init if n == "flashbias_context_options_init" else None))
    return _library.Library("/opt/fake/libflashbias.so", ns)


@pytest.fixture
def fake(monkeypatch):
    """make(with_options) installs a fake library as the process's; returns the list of calls."""
    monkeypatch.setattr(runtime, "_contexts", {})
    monkeypatch.setattr(runtime, "_retired", [])
    monkeypatch.setattr(runtime, "_options", {"portable": False, "check_pointers": True})

    def make(with_options):
        calls = []
        lib = _fake_library(with_options, calls)
        monkeypatch.setattr(_library, "_library", lib)
        return lib, calls
    return make


def _created_options(calls):
    name, args = calls[-1]
    assert name == "flashbias_context_create_with_options"
    opts = args[0]._obj
    return {n: getattr(opts, n) for n, _ in _library.ContextOptions._fields_}


def test_context_passes_every_option_to_the_new_call(fake):
    lib, calls = fake(with_options=True)
    assert "context_options" in lib.features
    ctx = flashbias.Context(3, "tune", portable=True, check_pointers=False)
    assert [c[0] for c in calls] == ["flashbias_context_options_init", "flashbias_context_create_with_options"]
    assert _created_options(calls) == {"device": 3, "policy": 1, "check_pointers": 0, "portable": 1}
    assert (ctx.device, ctx.policy, ctx.portable, ctx.check_pointers) == (3, "tune", True, False)
    assert "portable=True" in repr(ctx) and "check_pointers=False" in repr(ctx)
    calls.clear()
    ctx = flashbias.Context(0, "cache-only")  # the defaults: the new call too, when there is one
    assert _created_options(calls) == {"device": 0, "policy": 2, "check_pointers": 1, "portable": 0}
    assert (ctx.portable, ctx.check_pointers) == (False, True)


def test_an_older_library_still_creates_default_contexts(fake):
    lib, calls = fake(with_options=False)
    assert "context_options" not in lib.features
    ctx = flashbias.Context(1, "heuristic")
    assert [c[0] for c in calls] == ["flashbias_context_create"]
    assert calls[0][1][:2] == (1, 0)
    assert (ctx.portable, ctx.check_pointers) == (False, True)
    assert flashbias.get_context(1).device == 1


@pytest.mark.parametrize("kwargs, what", [({"portable": True}, "Context(portable=True)"),
                                          ({"check_pointers": False}, "Context(check_pointers=False)")])
def test_an_older_library_refuses_the_options_clearly(fake, kwargs, what):
    lib, calls = fake(with_options=False)
    with pytest.raises(flashbias.MissingSymbolError) as e:
        flashbias.Context(0, "heuristic", **kwargs)
    msg = str(e.value)
    assert msg.startswith(what + " needs a newer libflashbias.so")
    assert "/opt/fake/libflashbias.so" in msg and "version 9.9" in msg
    assert "flashbias_context_create_with_options" in msg and "FLASHBIAS_LIB" in msg
    assert not [c for c in calls if c[0].startswith("flashbias_context_create")]  # nothing was created
    with pytest.raises(flashbias.MissingSymbolError):
        flashbias.get_context(0, **kwargs)


def test_get_context_caches_one_context_per_option_setting(fake):
    lib, calls = fake(with_options=True)
    default = flashbias.get_context(0)
    assert flashbias.get_context(0) is default
    portable = flashbias.get_context(0, portable=True)
    assert portable is not default and portable.portable and portable.check_pointers
    old = flashbias.set_context_options(portable=True)
    try:
        assert old == {"portable": False, "check_pointers": True}
        assert flashbias.get_context_options() == {"portable": True, "check_pointers": True}
        assert flashbias.get_context(0) is portable  # the module-level setting picks it
        assert flashbias.get_context(0, portable=False) is default  # a per-call override wins
        unchecked = flashbias.get_context(0, check_pointers=False)
        assert unchecked.portable and not unchecked.check_pointers
        assert flashbias.set_context_options(check_pointers=None) == {"portable": True, "check_pointers": True}
    finally:
        flashbias.set_context_options(**old)
    assert flashbias.get_context(0) is default
    n = len([c for c in calls if c[0] == "flashbias_context_create_with_options"])
    assert n == 3  # default, portable, portable without pointer checks
