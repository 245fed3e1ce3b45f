"""The backend switch: which implementation of an op runs.

Names: "auto" (default), "cuda", "triton", "cpu", "reference" (plain ATen composition: cuDNN/oneDNN).
Set with ``fastconv.set_backend(name)``, ``with fastconv.backend(name):`` or the environment variable
``FASTCONV_BACKEND`` (read at import). A named backend that cannot run for the given tensors raises;
"auto" picks, per op and device, the fastest backend that can run, and raises when none can.

Everything read while resolving is a plain module-level value, so the choice is traceable by
``torch.compile(fullgraph=True)`` (dynamo guards on it; switching backends recompiles).
"""
import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")

# Facts fixed for the life of the process. Triton's interpreter (CPU tensors) must be chosen before any
# kernel is defined, so TRITON_INTERPRET is read once, at import, like Triton itself does.
CUDA_KERNELS_BUILT = False  # set by fastconv/__init__.py from what the binary reports
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Preference order of "auto" per device type, used when the measured table (if any) has no entry.
AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


def _validate(name, source="backend"):
    if name not in BACKENDS:
        raise ValueError(f"fastconv: unknown {source} {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


_current = _validate(os.environ.get("FASTCONV_BACKEND", "auto"), source="FASTCONV_BACKEND")


def set_backend(name: str) -> None:
    """Select the backend every fastconv op uses from now on (see the module docstring)."""
    global _current
    _current = _validate(name)


def get_backend() -> str:
    return _current


@contextlib.contextmanager
def backend(name: str):
    """``with fastconv.backend("triton"): ...`` runs the block on that backend, then restores the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def why_not(name: str, device_type: str):
    """None if backend `name` can run on tensors of `device_type`, else the reason it cannot."""
    if name == "reference":
        return None
    if name == "cpu":
        return None if device_type == "cpu" else f"the cpu backend runs on cpu tensors, got {device_type} tensors"
    if name == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs on cuda tensors, got {device_type} tensors"
        if not CUDA_KERNELS_BUILT:
            return "fastconv._C was built without CUDA kernels (rebuild with nvcc present, or FASTCONV_CUDA=1)"
        return None
    if name == "triton":
        if not TRITON_AVAILABLE:
            return "triton is not installed"
        if device_type == "cuda" or (device_type == "cpu" and TRITON_INTERPRET):
            return None
        return (f"triton runs on cuda tensors, or on cpu tensors only with TRITON_INTERPRET=1 set before "
                f"fastconv is imported; got {device_type} tensors")
    return f"unknown backend {name!r}"


def resolve(op: str, implemented: tuple, device_type: str) -> str:
    """The concrete backend that runs `op` (implemented by `implemented`) on `device_type` tensors now."""
    name = _current
    if name == "auto":
        for candidate in AUTO_ORDER.get(device_type, ()):
            if candidate in implemented and why_not(candidate, device_type) is None:
                return candidate
        raise RuntimeError(
            f"fastconv: no fastconv kernel for {op} can run on {device_type} tensors here "
            f"(implemented: {', '.join(implemented)}). Use fastconv.set_backend('reference') to run plain ATen."
        )
    if name not in implemented:
        raise RuntimeError(f"fastconv: {op} has no {name!r} backend (implemented: {', '.join(implemented)})")
    reason = why_not(name, device_type)
    if reason is not None:
        raise RuntimeError(f"fastconv: backend {name!r} cannot run {op}: {reason}")
    return name


def available(implemented: tuple, device_type: str) -> list:
    """The backends of `implemented` that can run on `device_type` tensors here."""
    return [name for name in implemented if why_not(name, device_type) is None]
