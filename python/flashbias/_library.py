"""libflashbias.so through ctypes: finding it, loading it, and the C ABI's structs and functions
(include/flashbias/flashbias.h and include/flashbias/tuning.h).

Nothing here imports torch: the tuner, bundle and cache calls work without it, and the tests of
discovery and of the struct layout run anywhere.
"""
import ctypes
import ctypes.util
import os
import threading
from pathlib import Path

LIBRARY_NAME = "libflashbias.so"
ENV_LIBRARY = "FLASHBIAS_LIB"

# flashbias_status, value for value (flashbias.h).
STATUS_NAMES = {
    0: "ok",
    1: "invalid_argument",
    2: "unsupported",
    3: "no_gpu",
    4: "driver_error",
    5: "nvrtc_unavailable",
    6: "compile_failed",
    7: "launch_failed",
    8: "cache_error",
    9: "not_found",
    10: "internal",
}
OK, INVALID_ARGUMENT, UNSUPPORTED, NO_GPU, NOT_FOUND = 0, 1, 2, 3, 9

F16, BF16 = 0, 1                      # flashbias_dtype
MASK_NONE, MASK_CAUSAL = 0, 1         # flashbias_mask
BACKWARD_DETERMINISTIC = 0            # flashbias_backward_mode
POLICIES = {"heuristic": 0, "tune": 1, "cache-only": 2}  # flashbias_policy


class FlashBiasError(RuntimeError):
    """A call into libflashbias.so failed. `status` is the flashbias_status value, `status_name`
    its name ("invalid_argument", "unsupported", "no_gpu", ...); the message is the library's,
    which names the argument and the limit."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status
        self.status_name = STATUS_NAMES.get(status) if status is not None else None


class LibraryNotFoundError(FlashBiasError):
    """libflashbias.so could not be found or loaded; the message lists every place tried."""


class MissingSymbolError(FlashBiasError):
    """The loaded libflashbias.so predates a call this package needs (e.g. the backward pass)."""


class Strides(ctypes.Structure):
    """flashbias_strides: element strides of [batch, seq, heads, dim]; the last dim is contiguous."""
    _fields_ = [("batch", ctypes.c_int64), ("seq", ctypes.c_int64), ("head", ctypes.c_int64)]


class ForwardArgs(ctypes.Structure):
    """flashbias_forward_args."""
    _fields_ = [
        ("dtype", ctypes.c_int32), ("mask", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("heads", ctypes.c_int64), ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("rank", ctypes.c_int64),
        ("q", ctypes.c_void_p), ("q_stride", Strides),
        ("k", ctypes.c_void_p), ("k_stride", Strides),
        ("v", ctypes.c_void_p), ("v_stride", Strides),
        ("qb", ctypes.c_void_p), ("qb_stride", Strides),
        ("kb", ctypes.c_void_p), ("kb_stride", Strides),
        ("o", ctypes.c_void_p), ("o_stride", Strides),
        ("lse", ctypes.c_void_p),
        ("softmax_scale", ctypes.c_float), ("has_softmax_scale", ctypes.c_int32),
    ]


class BackwardArgs(ctypes.Structure):
    """flashbias_backward_args."""
    _fields_ = [
        ("dtype", ctypes.c_int32), ("mask", ctypes.c_int32),
        ("batch", ctypes.c_int64), ("heads", ctypes.c_int64), ("seqlen_q", ctypes.c_int64),
        ("seqlen_k", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("rank", ctypes.c_int64),
        ("q", ctypes.c_void_p), ("q_stride", Strides),
        ("k", ctypes.c_void_p), ("k_stride", Strides),
        ("v", ctypes.c_void_p), ("v_stride", Strides),
        ("qb", ctypes.c_void_p), ("qb_stride", Strides),
        ("kb", ctypes.c_void_p), ("kb_stride", Strides),
        ("o", ctypes.c_void_p), ("o_stride", Strides),
        ("dout", ctypes.c_void_p), ("dout_stride", Strides),
        ("lse", ctypes.c_void_p),
        ("dq", ctypes.c_void_p), ("dq_stride", Strides),
        ("dk", ctypes.c_void_p), ("dk_stride", Strides),
        ("dv", ctypes.c_void_p), ("dv_stride", Strides),
        ("dqb", ctypes.c_void_p), ("dqb_stride", Strides),
        ("dkb", ctypes.c_void_p), ("dkb_stride", Strides),
        ("softmax_scale", ctypes.c_float), ("has_softmax_scale", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("workspace", ctypes.c_void_p), ("workspace_bytes", ctypes.c_uint64),
    ]


class ContextOptions(ctypes.Structure):
    """flashbias_context_options (flashbias::ContextOptions): device (-1: the current context's
    device), policy (POLICIES), check_pointers (1: verify that every pointer is device memory),
    portable (1: the portable kernel family even where a faster one exists). The defaults are
    flashbias_context_options_init()'s; CONTEXT_OPTION_DEFAULTS has them for libraries without it."""
    _fields_ = [("device", ctypes.c_int32), ("policy", ctypes.c_int32),
                ("check_pointers", ctypes.c_int32), ("portable", ctypes.c_int32)]


CONTEXT_OPTION_DEFAULTS = {"device": -1, "policy": 0, "check_pointers": 1, "portable": 0}


# The C structs checked against the header by tests/python/test_layout.py: name -> ctypes type.
C_STRUCTS = {
    "flashbias_strides": Strides,
    "flashbias_forward_args": ForwardArgs,
    "flashbias_backward_args": BackwardArgs,
    "flashbias_context_options": ContextOptions,
}

_c_int, _c_void_p, _c_char_p = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p
_ptr_void = ctypes.POINTER(ctypes.c_void_p)
_ptr_char = ctypes.POINTER(ctypes.c_char)

# Required exports: name -> (restype, argtypes). A library without one of these is refused.
_CORE = {
    "flashbias_context_create": (_c_int, [_c_int, _c_int, _ptr_void]),
    "flashbias_context_destroy": (None, [_c_void_p]),
    "flashbias_forward": (_c_int, [_c_void_p, ctypes.POINTER(ForwardArgs), _c_void_p]),
    "flashbias_last_error": (_c_char_p, []),
    "flashbias_status_string": (_c_char_p, [_c_int]),
    "flashbias_version": (_c_char_p, []),
}
# Optional exports, by feature: a library built before the feature lacks them. Using the feature
# then raises MissingSymbolError; everything else works.
_OPTIONAL = {
    "backward": {
        "flashbias_backward": (_c_int, [_c_void_p, ctypes.POINTER(BackwardArgs), _c_void_p]),
        "flashbias_backward_workspace_size": (
            _c_int, [_c_void_p, ctypes.POINTER(BackwardArgs), ctypes.POINTER(ctypes.c_uint64)]),
    },
    "context_options": {
        "flashbias_context_options_init": (None, [ctypes.POINTER(ContextOptions)]),
        "flashbias_context_create_with_options": (_c_int, [ctypes.POINTER(ContextOptions), _ptr_void]),
    },
    "tuning": {
        "flashbias_tune": (_c_int, [_c_int, _c_char_p, _c_char_p, ctypes.c_double, ctypes.POINTER(_ptr_char)]),
        "flashbias_load_bundle": (_c_int, [_c_char_p]),
        "flashbias_loaded_bundle_count": (_c_int, []),
        "flashbias_cache_path": (_c_int, [ctypes.POINTER(_ptr_char)]),
        "flashbias_string_free": (None, [_ptr_char]),
        "flashbias_tuning_last_error": (_c_char_p, []),
    },
}
_FEATURE_HELP = {
    "backward": "the backward pass (issue 6: flashbias_backward, flashbias_backward_workspace_size)",
    "context_options": "context options beyond device and policy (portable, check_pointers: "
                       "flashbias_context_create_with_options, flashbias_context_options_init)",
    "tuning": "the tuning C ABI (include/flashbias/tuning.h: flashbias_tune, flashbias_load_bundle)",
}

PACKAGE_DIR = Path(__file__).resolve().parent


def _install_info():
    """(library path, repository root) recorded by setup.py at install time, or (None, None)."""
    try:
        from . import _install_info as info  # written by python/setup.py into the installed package
    except ImportError:
        return None, None
    return getattr(info, "LIBRARY_PATH", None), getattr(info, "REPO_ROOT", None)


def _repo_root_of(package_dir):
    """The repository that holds this package when it runs from the source tree (python/flashbias)."""
    root = Path(package_dir).resolve().parent.parent
    if (root / "include" / "flashbias" / "flashbias.h").is_file():
        return root
    return None


def _build_dir_candidates(root):
    """libflashbias.so under the repository's build folders: build/ first, then build-*/ newest first."""
    root = Path(root)
    out = [root / "build" / "runtime" / LIBRARY_NAME]
    others = [p for p in root.glob("build-*/runtime/" + LIBRARY_NAME)]
    others.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0, reverse=True)
    return out + others


def library_candidates(environ=None, package_dir=None, install_info=None):
    """Where the library is looked for, in order, as (description, path or loader name, explicit):
    FLASHBIAS_LIB, the path recorded at install time, a library next to the package, the
    repository's build folders (build/runtime, build-*/runtime), the dynamic loader's path."""
    environ = os.environ if environ is None else environ
    package_dir = PACKAGE_DIR if package_dir is None else Path(package_dir)
    recorded, recorded_root = _install_info() if install_info is None else install_info
    out = []
    env = environ.get(ENV_LIBRARY, "")
    if env:
        p = Path(env)
        out.append((f"{ENV_LIBRARY}={env}", p / LIBRARY_NAME if p.is_dir() else p, True))
    if recorded:
        out.append(("the path recorded at install time", Path(recorded), False))
    out.append(("next to the package", package_dir / LIBRARY_NAME, False))
    roots = []
    for r in (_repo_root_of(package_dir), Path(recorded_root) if recorded_root else None):
        if r is not None and r.resolve() not in roots:
            roots.append(r.resolve())
    for r in roots:
        for p in _build_dir_candidates(r):
            out.append((f"the repository's build folder {p.parent.parent.name}/", p, False))
    out.append(("the dynamic loader's search path (LD_LIBRARY_PATH, ldconfig)", LIBRARY_NAME, False))
    return out


def find_library(environ=None, package_dir=None, install_info=None, loader=None):
    """Load the first library that exists among library_candidates(); return (path, CDLL).
    An explicit FLASHBIAS_LIB that is missing or does not load is an error of its own (never
    silently replaced by another copy). Raises LibraryNotFoundError listing every place tried."""
    loader = ctypes.CDLL if loader is None else loader
    tried = []
    for what, path, explicit in library_candidates(environ, package_dir, install_info):
        is_file_path = isinstance(path, Path)
        if is_file_path and not path.exists():
            if explicit:
                raise LibraryNotFoundError(
                    f"{what}: no such file ({path}). Point {ENV_LIBRARY} at libflashbias.so "
                    f"(built by `cmake --build build --target flashbias_shared` into build/runtime/), "
                    f"or unset it to search the usual places.")
            tried.append(f"  {what}: {path} (not there)")
            continue
        try:
            return str(path), loader(str(path))
        except OSError as e:
            if explicit:
                raise LibraryNotFoundError(f"{what}: {path} exists but cannot be loaded: {e}") from e
            tried.append(f"  {what}: {path} ({'cannot be loaded: ' + str(e) if is_file_path else 'not found'})")
    raise LibraryNotFoundError(
        "libflashbias.so was not found. Looked in, in order:\n" + "\n".join(tried) +
        f"\nBuild it (cmake -S . -B build -G Ninja && cmake --build build --target flashbias_shared) "
        f"or set {ENV_LIBRARY}=/path/to/libflashbias.so.")


class Library:
    """The loaded libflashbias.so with its functions typed. `features` lists the optional groups
    the library exports ("backward", "context_options", "tuning")."""

    def __init__(self, path, cdll):
        self.path = path
        self.cdll = cdll
        missing = [name for name in _CORE if not hasattr(cdll, name)]
        if missing:
            raise LibraryNotFoundError(
                f"{path} is not a usable libflashbias.so: it does not export {', '.join(missing)}")
        for name, (restype, argtypes) in _CORE.items():
            self._declare(name, restype, argtypes)
        self.features = set()
        for feature, functions in _OPTIONAL.items():
            if all(hasattr(cdll, name) for name in functions):
                for name, (restype, argtypes) in functions.items():
                    self._declare(name, restype, argtypes)
                self.features.add(feature)

    def _declare(self, name, restype, argtypes):
        f = getattr(self.cdll, name)
        f.restype = restype
        f.argtypes = argtypes
        setattr(self, name[len("flashbias_"):], f)

    def version_text(self):
        return self.cdll.flashbias_version().decode()

    def require(self, feature, what=""):
        """Raise MissingSymbolError unless the library exports `feature`'s functions; `what` (e.g.
        "Context(portable=True)") names the request that needs them at the start of the message."""
        if feature not in self.features:
            names = ", ".join(_OPTIONAL[feature])
            prefix = f"{what} needs a newer libflashbias.so: " if what else ""
            raise MissingSymbolError(
                f"{prefix}the loaded library {self.path} (version {self.version_text()}) does not provide "
                f"{_FEATURE_HELP[feature]}: it exports none or only some of {names}. Rebuild "
                f"libflashbias.so from a tree that has it, or point {ENV_LIBRARY} at one that does.")

    def check(self, status, what=""):
        """Raise FlashBiasError for a failed flashbias.h call, with the library's message."""
        if status != OK:
            msg = self.cdll.flashbias_last_error().decode(errors="replace")
            raise FlashBiasError(_format(status, what, msg), status)

    def check_tuning(self, status, what=""):
        """As check(), for the calls of tuning.h (which keep their own message)."""
        if status != OK:
            msg = self.cdll.flashbias_tuning_last_error().decode(errors="replace")
            raise FlashBiasError(_format(status, what, msg), status)

    def take_string(self, ptr):
        """A malloc'd C string from tuning.h as str (None for NULL), freed."""
        if not ptr:
            return None
        try:
            return ctypes.cast(ptr, ctypes.c_char_p).value.decode(errors="replace")
        finally:
            self.cdll.flashbias_string_free(ptr)


def _format(status, what, msg):
    name = STATUS_NAMES.get(status, f"status {status}")
    prefix = f"{what}: " if what else ""
    return f"{prefix}{msg} [{name}]" if msg else f"{prefix}failed with {name}"


_lock = threading.Lock()
_library = None


def load():
    """The process's Library, found and loaded on first use (then cached)."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                path, cdll = find_library()
                _library = Library(path, cdll)
    return _library
