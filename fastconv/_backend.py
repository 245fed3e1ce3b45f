"""The backend switch: which implementation of an op runs.

Names: "auto" (default), "cuda", "triton", "cpu", "reference" (plain ATen composition: cuDNN/oneDNN).
Set with ``fastconv.set_backend(name)``, ``with fastconv.backend(name):`` or the environment variable
``FASTCONV_BACKEND`` (read at import). A named backend that cannot run for the given tensors raises;
"auto" picks, per op, device and shape class, the fastest backend that can run, and raises when none can.

How "auto" chooses. A measured table (``fastconv/auto_table.json``, or the file named by ``FASTCONV_AUTO_TABLE``)
maps (device, op, shape class) to the backend that was fastest there, "reference" included: ATen wins some
shapes and then "auto" runs ATen. ``python -m fastconv bench --write-auto-table`` measures and rewrites the
device's section; ``python -m fastconv info`` shows the table in use. The device is "cpu" or "cuda:sm_XY"; the
shape class is "<dtype>/<layout>/<size>" of the op's main input, size "small" (< 2^16 elements), "medium"
(< 2^22) or "large". Without an entry, or when the measured backend cannot run here, the fallback heuristic is
the device's hand-written kernels in the order of AUTO_ORDER: the CUDA kernel, then Triton, on a GPU; the C++
kernel on the CPU.

Everything read while resolving is a plain module-level value, so the choice is traceable by
``torch.compile(fullgraph=True)`` (dynamo guards on it; switching backends recompiles).
"""
import contextlib
import importlib.util
import json
import os
import pathlib

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")

# Facts fixed for the life of the process. Triton's interpreter (CPU tensors) must be chosen before any
# kernel is defined, so TRITON_INTERPRET is read once, at import, like Triton itself does.
CUDA_KERNELS_BUILT = False  # set by fastconv/__init__.py from what the binary reports
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Preference order of "auto" per device type, used when the measured table (if any) has no entry.
AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}

DEFAULT_AUTO_TABLE = pathlib.Path(__file__).with_name("auto_table.json")
SIZE_CLASSES = ((1 << 16, "small"), (1 << 22, "medium"))  # (elements below, name); the rest are "large"


def shape_class(tensor) -> str:
    """The key an op's main input is looked up by in the auto table: dtype, layout and size bucket."""
    size = next((name for limit, name in SIZE_CLASSES if tensor.numel() < limit), "large")
    channels_last = (tensor.dim() == 4 and not tensor.is_contiguous()
                     and tensor.is_contiguous(memory_format=torch.channels_last))
    return f"{str(tensor.dtype).replace('torch.', '')}/{'channels_last' if channels_last else 'contiguous'}/{size}"


def device_key(device) -> str:
    """"cpu" or "cuda:sm_XY": measurements transfer between GPUs of one architecture, not across them."""
    if device.type != "cuda":
        return device.type
    properties = torch.cuda.get_device_properties(device)  # constant-folded by dynamo
    return f"cuda:sm_{properties.major}{properties.minor}"


def load_auto_table(path=None) -> dict:
    """Read the measured table: {device key: {op: {shape class: backend}}}. A missing file is an empty table."""
    path = pathlib.Path(path or os.environ.get("FASTCONV_AUTO_TABLE") or DEFAULT_AUTO_TABLE)
    if not path.exists():
        return {}
    table = json.loads(path.read_text())
    for device, ops in table.get("choices", {}).items():
        for op, classes in ops.items():
            for klass, name in classes.items():
                if name not in BACKENDS[1:]:
                    raise ValueError(f"fastconv: auto table {path}: {device}/{op}/{klass} names unknown backend {name!r}")
    return table


AUTO_TABLE = load_auto_table()
_AUTO_CHOICES = AUTO_TABLE.get("choices", {})


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


def auto_choices() -> dict:
    """The measured table's choices in force (what "auto" consults; callers that cache a resolved backend key on
    it with get_backend())."""
    return _AUTO_CHOICES


def measured_choice(op: str, tensor):
    """The auto table's backend for `op` on `tensor` (its device and shape class), or None."""
    per_op = _AUTO_CHOICES.get(device_key(tensor.device), {}).get(op) if _AUTO_CHOICES else None
    return per_op.get(shape_class(tensor)) if per_op else None


def resolve(op: str, implemented: tuple, device_type: str, tensor=None) -> str:
    """The concrete backend that runs `op` (implemented by `implemented`) on `device_type` tensors now;
    with the op's main input `tensor`, "auto" consults the measured table first."""
    name = _current
    if name == "auto":
        measured = measured_choice(op, tensor) if tensor is not None else None
        if measured in implemented and why_not(measured, device_type) is None:
            return measured
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
