"""The library-facing calls that need no GPU: tuning-request errors (found before any GPU work),
bundle loading, the cache path, context creation without a GPU, and the detection of optional
exports (the backward, the tuning ABI) with the message a missing one gives."""
import os
import shutil
import subprocess
import sys
import types

import pytest

import flashbias
from flashbias import _library
from conftest import REPO, cuda_available


def test_tune_rejects_a_bad_problem_string_before_touching_the_gpu(library):
    if "tuning" not in library.features:
        pytest.skip("this libflashbias.so has no tuning ABI")
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.tune("b=2,d=64")
    assert e.value.status_name == "invalid_argument"
    assert "missing required sequence length" in str(e.value) and "b=2,d=64" in str(e.value)
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.tune("n=128,d=100")
    assert "d=100" in str(e.value) and "multiple of 8" in str(e.value)


def test_tune_rejects_a_bad_strategy_or_budget(library):
    if "tuning" not in library.features:
        pytest.skip("this libflashbias.so has no tuning ABI")
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.tune("n=128,d=64", strategy="annealing")
    assert e.value.status_name == "invalid_argument" and "exhaustive, halving" in str(e.value)
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.tune("n=128,d=64", budget_seconds=1e9)
    assert "budget_seconds" in str(e.value)


@pytest.mark.skipif(cuda_available(), reason="checks the error without a GPU")
def test_without_a_gpu_contexts_and_tuning_say_so(library):
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.get_context(0)
    assert e.value.status_name in ("no_gpu", "driver_error"), str(e.value)
    assert "CUDA device 0" in str(e.value)
    if "tuning" in library.features:
        with pytest.raises(flashbias.FlashBiasError) as e:
            flashbias.tune("n=128,d=64,r=4")
        assert e.value.status_name in ("no_gpu", "driver_error"), str(e.value)


def test_load_bundle_verifies_the_file_now(library, tmp_path):
    if "tuning" not in library.features:
        pytest.skip("this libflashbias.so has no tuning ABI")
    before = flashbias.loaded_bundle_count()
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.load_bundle(tmp_path / "absent.fbbundle")
    assert e.value.status_name == "invalid_argument" and "absent.fbbundle" in str(e.value)
    junk = tmp_path / "junk.fbbundle"
    junk.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(flashbias.FlashBiasError) as e:
        flashbias.load_bundle(junk)
    assert e.value.status_name == "cache_error" and "junk.fbbundle" in str(e.value)
    assert flashbias.loaded_bundle_count() == before  # a bad bundle is never added


def _run(code, **env):
    e = dict(os.environ, PYTHONPATH=str(REPO / "python"), **env)
    r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_cache_path_follows_the_environment(library, tmp_path):
    if "tuning" not in library.features:
        pytest.skip("this libflashbias.so has no tuning ABI")
    code = "import flashbias; print(flashbias.cache_path())"
    env = {"FLASHBIAS_LIB": library.path}
    assert _run(code, FLASHBIAS_CACHE="off", **env) == "None"
    path = _run(code, FLASHBIAS_CACHE_DIR=str(tmp_path / "c"), **env)
    assert path.startswith(str(tmp_path / "c")) and os.path.exists(path)


def test_status_strings_come_from_the_library(library):
    assert library.status_string(3) == b"no GPU"
    assert library.status_string(9) == b"kernel not found"


def test_optional_exports_are_detected_as_the_library_has_them(library):
    """features says "backward" exactly when the shared object exports both backward calls."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", library.path], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    for feature, functions in _library._OPTIONAL.items():
        assert (feature in library.features) == all(f in exported for f in functions), feature


class _FakeFunction:
    def __init__(self, result=0):
        self.result = result
        self.restype = self.argtypes = None

    def __call__(self, *a):
        return self.result


def _fake_cdll(names):
    ns = types.SimpleNamespace()
    for n in names:
        setattr(ns, n, _FakeFunction(b"9.9" if n == "flashbias_version" else 0))
    return ns


def test_a_library_without_the_backward_says_what_is_missing():
    lib = _library.Library("/opt/old/libflashbias.so", _fake_cdll(_library._CORE))
    assert lib.features == set()
    with pytest.raises(flashbias.MissingSymbolError) as e:
        lib.require("backward")
    msg = str(e.value)
    assert "/opt/old/libflashbias.so" in msg and "version 9.9" in msg
    assert "flashbias_backward" in msg and "flashbias_backward_workspace_size" in msg and "FLASHBIAS_LIB" in msg
    # Half a feature is no feature: both backward calls are needed.
    lib = _library.Library("x.so", _fake_cdll(list(_library._CORE) + ["flashbias_backward"]))
    assert "backward" not in lib.features
    full = list(_library._CORE) + list(_library._OPTIONAL["backward"])
    assert "backward" in _library.Library("y.so", _fake_cdll(full)).features


def test_a_library_without_the_core_calls_is_refused():
    with pytest.raises(flashbias.LibraryNotFoundError) as e:
        _library.Library("/tmp/libother.so", _fake_cdll(["flashbias_version"]))
    assert "flashbias_forward" in str(e.value) and "/tmp/libother.so" in str(e.value)


def test_backward_of_the_real_library_reports_a_missing_export_clearly(library):
    if "backward" in library.features:
        library.require("backward")  # present: no error
    else:
        with pytest.raises(flashbias.MissingSymbolError, match="flashbias_backward"):
            library.require("backward")
