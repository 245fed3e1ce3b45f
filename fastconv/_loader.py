"""Load fastconv._C safely: a missing or mismatched build gives an ImportError that names the fix.

The build record (_build_info.py, written by setup.py) is read *before* the shared library is loaded, so a
binary compiled against another torch is never dlopen'ed (that can crash instead of raising).
"""
import json
import pathlib

import torch

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
REBUILD = (
    "Rebuild it against the torch you run: at the repository root `pip install --no-build-isolation -e .` "
    "(or `pip install --no-build-isolation .` to install a copy)"
)


def _not_built(detail):
    return ImportError(f"fastconv: the compiled extension fastconv._C is not usable ({detail}). {REBUILD}.")


def load_extension():
    """Import fastconv._C (registering every op). Returns the build record of setup.py, with what the binary
    itself reports (torch version, CUDA kernels and their archs) under "binary"."""
    try:
        from fastconv._build_info import BUILD
    except ImportError:
        raise _not_built(f"it was never built in {PACKAGE_DIR}") from None
    if BUILD["torch_version"] != torch.__version__:
        raise _not_built(f"built against torch {BUILD['torch_version']}, running torch {torch.__version__}")
    try:
        from fastconv import _C  # noqa: F401  (registers torch.ops.fastconv.*)
    except (ImportError, OSError) as error:
        raise _not_built(f"{type(error).__name__}: {error}") from error
    compiled = json.loads(torch.ops.fastconv._build_info())
    running = torch.__version__.split("+")[0]
    if compiled["torch_version"] != running:
        raise _not_built(f"the binary reports torch {compiled['torch_version']}, running torch {running}")
    return {**BUILD, "binary": compiled}
