"""Records where libflashbias.so is at install time (flashbias/_install_info.py in the installed
package), so that an installed package finds the library built in this repository without
FLASHBIAS_LIB. The library is looked up the way the package does at run time (FLASHBIAS_LIB, then
the repository's build folders); if none is built yet, only the repository root is recorded, and
the package searches its build folders when it is first used."""
import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent


def _find_built_library():
    # Load _library.py by path: importing the package would import torch.
    spec = importlib.util.spec_from_file_location("_flashbias_library", HERE / "flashbias" / "_library.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for _, path, _ in mod.library_candidates(package_dir=HERE / "flashbias", install_info=(None, None)):
        if isinstance(path, Path) and path.exists():
            return str(path.absolute())
    return None


class BuildPyRecordingLibrary(build_py):
    def run(self):
        super().run()
        lib = _find_built_library()
        target = Path(self.build_lib) / "flashbias" / "_install_info.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            "# Written by python/setup.py at install time.\n"
            f"LIBRARY_PATH = {lib!r}\n"
            f"REPO_ROOT = {str(REPO_ROOT) if (REPO_ROOT / 'include' / 'flashbias').is_dir() else None!r}\n")
        if lib is None:
            print("flashbias: libflashbias.so is not built yet; the package will search "
                  f"{REPO_ROOT}/build*/runtime/ when first used (or set FLASHBIAS_LIB)")


setup(cmdclass={"build_py": BuildPyRecordingLibrary})
