"""The ctypes mirror of the C ABI (python/flashbias/_library.py) against the headers themselves:
a C program compiled at test time prints sizeof, alignment and every field's offset and size of
flashbias_strides / flashbias_forward_args / flashbias_backward_args, and the enum values, and
names every function the package declares. A field added, removed, reordered or resized in
include/flashbias/flashbias.h without the same change in Python fails here."""
import ctypes
import shutil
import subprocess

import pytest

from flashbias import _library
from conftest import REPO

CC = shutil.which("gcc") or shutil.which("cc")

ENUMS = {
    "FLASHBIAS_F16": _library.F16,
    "FLASHBIAS_BF16": _library.BF16,
    "FLASHBIAS_MASK_NONE": _library.MASK_NONE,
    "FLASHBIAS_MASK_CAUSAL": _library.MASK_CAUSAL,
    "FLASHBIAS_POLICY_HEURISTIC": _library.POLICIES["heuristic"],
    "FLASHBIAS_POLICY_TUNE": _library.POLICIES["tune"],
    "FLASHBIAS_POLICY_CACHE_ONLY": _library.POLICIES["cache-only"],
    "FLASHBIAS_BACKWARD_DETERMINISTIC": _library.BACKWARD_DETERMINISTIC,
}
STATUS_ENUMS = {
    "FLASHBIAS_OK": 0, "FLASHBIAS_INVALID_ARGUMENT": 1, "FLASHBIAS_UNSUPPORTED": 2, "FLASHBIAS_NO_GPU": 3,
    "FLASHBIAS_DRIVER_ERROR": 4, "FLASHBIAS_NVRTC_UNAVAILABLE": 5, "FLASHBIAS_COMPILE_FAILED": 6,
    "FLASHBIAS_LAUNCH_FAILED": 7, "FLASHBIAS_CACHE_ERROR": 8, "FLASHBIAS_NOT_FOUND": 9, "FLASHBIAS_INTERNAL": 10,
}


def _ctypes_rows(structs=None):
    """(struct, field or '', offset, size, alignment) from ctypes."""
    rows = []
    for cname, ct in (structs or _library.C_STRUCTS).items():
        rows.append((cname, "", 0, ctypes.sizeof(ct), ctypes.alignment(ct)))
        for fname, ftype in ct._fields_:
            f = getattr(ct, fname)
            rows.append((cname, fname, f.offset, f.size, ctypes.alignment(ftype)))
    return rows


def _program(rows):
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "flashbias/flashbias.h"',
             '#include "flashbias/tuning.h"', "int main(void) {"]
    for cname, fname, _, _, _ in rows:
        if fname:
            lines.append(f'  {{ {cname} x; printf("{cname} {fname} %zu %zu %zu\\n", offsetof({cname}, {fname}), '
                         f"sizeof(x.{fname}), (size_t)_Alignof(__typeof__(x.{fname}))); }}")
        else:
            lines.append(f'  printf("{cname} - 0 %zu %zu\\n", sizeof({cname}), (size_t)_Alignof({cname}));')
    for name in list(ENUMS) + list(STATUS_ENUMS):
        lines.append(f'  printf("enum {name} %d\\n", (int){name});')
    # Every function the package declares must be declared by the headers (a rename fails to compile).
    names = list(_library._CORE) + [n for group in _library._OPTIONAL.values() for n in group]
    for n in names:
        lines.append(f"  (void)&{n};")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_output(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler (gcc/cc) on PATH to compile the layout probe")
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "probe.c", d / "probe"
    src.write_text(_program(_ctypes_rows()))
    r = subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-I", str(REPO / "include"), str(src), "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"the layout probe does not compile against the headers:\n{r.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines()]


def _mismatches(c_output, structs=None):
    c = {(r[0], r[1]): tuple(int(x) for x in r[2:]) for r in c_output if r[0] != "enum"}
    out = []
    for cname, fname, off, size, align in _ctypes_rows(structs):
        key = (cname, fname or "-")
        want = (off, size, align)
        if c.get(key) != want:
            out.append(f"{cname}.{fname or '(struct)'}: C (offset, size, align) = {c.get(key)}, ctypes = {want}")
    return out


def test_struct_sizes_offsets_and_alignment_match_the_header(c_output):
    bad = _mismatches(c_output)
    assert not bad, "\n".join(bad)


def test_every_c_field_is_mirrored(c_output):
    """The header's struct has no field that ctypes lacks: same size, and the last field ends where
    the C struct's padding allows (a field appended in C grows sizeof)."""
    for cname, ct in _library.C_STRUCTS.items():
        c_size = next(int(r[3]) for r in c_output if r[0] == cname and r[1] == "-")
        assert c_size == ctypes.sizeof(ct), f"sizeof({cname}) is {c_size} in C, {ctypes.sizeof(ct)} in ctypes"


def test_enum_values_match_the_header(c_output):
    c = {r[1]: int(r[2]) for r in c_output if r[0] == "enum"}
    for name, value in ENUMS.items():
        assert c[name] == value, f"{name} is {c[name]} in C, {value} in Python"
    for name, value in STATUS_ENUMS.items():
        assert c[name] == value, f"{name} is {c[name]} in C, {value} in Python"
        assert _library.STATUS_NAMES[value] == name[len("FLASHBIAS_"):].lower(), name


def test_the_comparison_catches_a_drift(c_output):
    """The check is not vacuous: mirrors with a field moved or resized are reported against the
    same compiled header."""
    class Moved(ctypes.Structure):
        _fields_ = [(n, t) for n, t in _library.ForwardArgs._fields_ if n != "lse"] + [("lse", ctypes.c_void_p)]

    class Resized(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int64 if n == "mode" else t) for n, t in _library.BackwardArgs._fields_]
    assert _mismatches(c_output, {"flashbias_forward_args": Moved})
    assert _mismatches(c_output, {"flashbias_backward_args": Resized})
