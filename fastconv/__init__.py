"""fastconv: hand-written CUDA, Triton and C++ kernels for the memory-bound operations of classic CNNs.

``import fastconv`` loads the compiled extension first (a missing or mismatched build raises an ImportError
that says how to rebuild; the extension registers the C++ ops with their autograd), then registers the fake
kernels of every op, the backward ops' autograd (double backward) and the Triton ops.
"""
from fastconv._loader import load_extension

BUILD_INFO = load_extension()

from fastconv import _backend  # noqa: E402

_backend.CUDA_KERNELS_BUILT = bool(BUILD_INFO["binary"]["with_cuda"])

from fastconv import models, nn, ops  # noqa: E402
from fastconv._backend import backend, get_backend, set_backend  # noqa: E402
from fastconv._optimize import optimize  # noqa: E402

__version__ = "0.1.0"
__all__ = ["BUILD_INFO", "backend", "get_backend", "models", "nn", "ops", "optimize", "set_backend"]
