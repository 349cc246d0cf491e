"""Shared set-up of the Python tests: the package from this tree's python/ (ahead of any installed
copy), and fixtures for the built library and for a GPU."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))


def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


@pytest.fixture(scope="session")
def library():
    """The libflashbias.so the package finds (FLASHBIAS_LIB or this tree's build folders); the
    test is skipped, saying so, when none is built."""
    from flashbias import _library
    try:
        return _library.load()
    except _library.LibraryNotFoundError as e:
        pytest.skip(f"libflashbias.so is not built here: {str(e).splitlines()[0]}")


@pytest.fixture(scope="session")
def torch_module():
    torch = _torch()
    if torch is None:
        pytest.skip("PyTorch is not installed (tools/test.sh installs it; pip install torch)")
    return torch


def cuda_available():
    torch = _torch()
    return torch is not None and torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not cuda_available(),
                                   reason="no CUDA GPU visible to PyTorch: the GPU tests run on the GPU machine "
                                          "(tools/python_gpu_check.sh)")
