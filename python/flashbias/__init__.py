"""FlashBias JIT from Python: attention with a low-rank bias,

    O = softmax(softmax_scale * Q K^T + Qb Kb^T) V,

generated, compiled and tuned at run time by libflashbias.so (loaded through ctypes; no build
against PyTorch). The one-line switch from the paper's Triton kernel:

    from flashbias import flash_bias_func      # was: from flash_bias_triton import flash_bias_func

The library is found through FLASHBIAS_LIB, the path recorded at install time, a copy next to this
package, the repository's build folders, then the dynamic loader (see library_path()).
"""
from ._library import FlashBiasError, LibraryNotFoundError, MissingSymbolError
from .runtime import (Context, cache_path, get_context, get_context_options, get_policy, load_bundle,
                      loaded_bundle_count, problem_string, set_context_options, set_policy, tune)

__version__ = "0.1.0"

try:
    import torch as _torch  # noqa: F401
except ImportError:  # the tuner, bundle and cache calls work without PyTorch
    _torch = None

if _torch is not None:
    from .attention import FlashBiasFunc, ForwardCall, flash_bias_func
else:
    def flash_bias_func(*args, **kwargs):
        raise ImportError("flashbias.flash_bias_func needs PyTorch (import torch failed)")


def library_path():
    """The path of the libflashbias.so this process uses (found and loaded on first call)."""
    from . import _library
    return _library.load().path


def library_version():
    """The loaded library's version string (flashbias_version())."""
    from . import _library
    return _library.load().version_text()


def library_features():
    """Optional parts the loaded library provides: "backward", "context_options" (Context's
    portable and check_pointers), "tuning"."""
    from . import _library
    return sorted(_library.load().features)


__all__ = [
    "flash_bias_func", "FlashBiasFunc", "ForwardCall", "FlashBiasError", "LibraryNotFoundError",
    "MissingSymbolError", "Context", "get_context", "set_context_options", "get_context_options", "set_policy",
    "get_policy", "tune", "problem_string",
    "load_bundle", "loaded_bundle_count", "cache_path", "library_path", "library_version", "library_features",
]
