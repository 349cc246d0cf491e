"""Library discovery (python/flashbias/_library.py): the order of the places searched, an explicit
FLASHBIAS_LIB never silently replaced, and a failure message that lists every place tried. No GPU,
no PyTorch, no built library needed (a fake loader stands in for dlopen where noted)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashbias import _library
from conftest import REPO


class FakeLoader:
    """Records what would be dlopen'ed; 'loads' any existing file whose name is in `good`."""

    def __init__(self, good=None):
        self.calls = []
        self.good = good

    def __call__(self, path):
        self.calls.append(path)
        p = Path(path)
        if p.is_absolute() and p.exists() and (self.good is None or p.name in self.good):
            return ("loaded", path)
        raise OSError(f"{path}: cannot open shared object file")


def make_repo(tmp_path, builds=()):
    """A repository layout: python/flashbias, include/flashbias/flashbias.h, and a libflashbias.so
    under each of `builds` (e.g. "build", "build-rt")."""
    root = tmp_path / "repo"
    pkg = root / "python" / "flashbias"
    pkg.mkdir(parents=True)
    (root / "include" / "flashbias").mkdir(parents=True)
    (root / "include" / "flashbias" / "flashbias.h").write_text("/* header */\n")
    libs = {}
    for b in builds:
        lib = root / b / "runtime" / "libflashbias.so"
        lib.parent.mkdir(parents=True)
        lib.write_bytes(b"\x7fELF")
        libs[b] = lib
    return root, pkg, libs


def test_explicit_env_that_does_not_exist_is_an_error_naming_it(tmp_path):
    root, pkg, _ = make_repo(tmp_path, ["build"])
    missing = tmp_path / "nowhere" / "libflashbias.so"
    with pytest.raises(_library.LibraryNotFoundError) as e:
        _library.find_library({"FLASHBIAS_LIB": str(missing)}, pkg, (None, None), FakeLoader())
    msg = str(e.value)
    assert "FLASHBIAS_LIB" in msg and str(missing) in msg and "no such file" in msg


def test_explicit_env_that_does_not_load_is_an_error_not_a_fallback(tmp_path):
    root, pkg, _ = make_repo(tmp_path, ["build"])
    bogus = tmp_path / "libflashbias.so"
    bogus.write_text("not a shared object")
    with pytest.raises(_library.LibraryNotFoundError) as e:
        _library.find_library({"FLASHBIAS_LIB": str(bogus)}, pkg, (None, None))  # the real dlopen
    assert "cannot be loaded" in str(e.value) and str(bogus) in str(e.value)


def test_explicit_env_may_name_a_directory(tmp_path):
    root, pkg, libs = make_repo(tmp_path, ["build-a"])
    loader = FakeLoader()
    path, _ = _library.find_library({"FLASHBIAS_LIB": str(libs["build-a"].parent)}, pkg, (None, None), loader)
    assert path == str(libs["build-a"])


def test_env_comes_before_install_record_and_build_folders(tmp_path):
    root, pkg, libs = make_repo(tmp_path, ["build", "build-x"])
    loader = FakeLoader()
    path, _ = _library.find_library({"FLASHBIAS_LIB": str(libs["build-x"])}, pkg, (str(libs["build"]), None), loader)
    assert path == str(libs["build-x"])


def test_install_record_comes_before_build_folders(tmp_path):
    root, pkg, libs = make_repo(tmp_path, ["build"])
    recorded = tmp_path / "elsewhere" / "libflashbias.so"
    recorded.parent.mkdir()
    recorded.write_bytes(b"\x7fELF")
    path, _ = _library.find_library({}, pkg, (str(recorded), None), FakeLoader())
    assert path == str(recorded)


def test_next_to_package_comes_before_build_folders(tmp_path):
    root, pkg, libs = make_repo(tmp_path, ["build"])
    (pkg / "libflashbias.so").write_bytes(b"\x7fELF")
    path, _ = _library.find_library({}, pkg, (None, None), FakeLoader())
    assert path == str(pkg / "libflashbias.so")


def test_build_comes_first_then_the_newest_build_star(tmp_path):
    root, pkg, libs = make_repo(tmp_path, ["build-old", "build-new"])
    now = time.time()
    os.utime(libs["build-old"], (now - 100, now - 100))
    os.utime(libs["build-new"], (now, now))
    path, _ = _library.find_library({}, pkg, (None, None), FakeLoader())
    assert path == str(libs["build-new"])
    (root / "build" / "runtime").mkdir(parents=True)
    (root / "build" / "runtime" / "libflashbias.so").write_bytes(b"\x7fELF")
    path, _ = _library.find_library({}, pkg, (None, None), FakeLoader())
    assert path == str(root / "build" / "runtime" / "libflashbias.so")


def test_a_build_that_does_not_load_falls_through_to_the_next(tmp_path):
    root, pkg, libs = make_repo(tmp_path, ["build", "build-b"])
    loader = FakeLoader(good=set())  # nothing loads by path...
    with pytest.raises(_library.LibraryNotFoundError) as e:
        _library.find_library({}, pkg, (None, None), loader)
    msg = str(e.value)
    # ...and every place tried is listed, with why it failed.
    assert str(libs["build"]) in msg and str(libs["build-b"]) in msg and "cannot be loaded" in msg


def test_the_loader_path_is_tried_last(tmp_path):
    root, pkg, _ = make_repo(tmp_path, [])
    calls = []

    def loader(path):
        calls.append(path)
        if path == "libflashbias.so":
            return ("loaded", path)
        raise OSError("nope")
    path, _ = _library.find_library({}, pkg, (None, None), loader)
    assert path == "libflashbias.so" and calls == ["libflashbias.so"]


def test_failure_message_lists_every_place_in_order(tmp_path):
    root, pkg, _ = make_repo(tmp_path, [])
    recorded = tmp_path / "gone" / "libflashbias.so"
    with pytest.raises(_library.LibraryNotFoundError) as e:
        _library.find_library({}, pkg, (str(recorded), None), FakeLoader())
    msg = str(e.value)
    places = ["the path recorded at install time", "next to the package", "build/runtime/libflashbias.so",
              "the dynamic loader's search path"]
    positions = [msg.find(p) for p in places]
    assert all(p >= 0 for p in positions), msg
    assert positions == sorted(positions), msg
    assert "FLASHBIAS_LIB" in msg  # says how to fix it


def test_outside_a_repository_no_build_folder_is_searched(tmp_path):
    pkg = tmp_path / "site-packages" / "flashbias"
    pkg.mkdir(parents=True)
    where = [str(p) for _, p, _ in _library.library_candidates({}, pkg, (None, None))]
    assert not any("build" in w for w in where)


def test_import_needs_no_library_and_the_first_use_says_where_it_looked(tmp_path):
    """A subprocess, so that this process's loaded library does not answer."""
    env = dict(os.environ, FLASHBIAS_LIB=str(tmp_path / "missing.so"), PYTHONPATH=str(REPO / "python"))
    code = ("import flashbias\n"
            "try:\n"
            "    flashbias.library_path()\n"
            "except flashbias.LibraryNotFoundError as e:\n"
            "    print('ERROR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ERROR" in r.stdout and "missing.so" in r.stdout and "FLASHBIAS_LIB" in r.stdout


def test_this_tree_finds_its_own_build(library):
    """With the library built (tools/test.sh builds it), the package finds a real one."""
    assert Path(library.path).exists()
    assert library.version_text()
    if not os.environ.get("FLASHBIAS_LIB"):
        assert Path(library.path).resolve().is_relative_to(REPO.resolve())
