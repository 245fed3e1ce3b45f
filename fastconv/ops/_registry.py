"""The Python op table: for every public op, its implementation per backend.

The C++ schemas live in csrc/fastconv.cpp; this table is what the backend switch, `python -m fastconv info`,
the tests and the benches iterate over, so a new op is covered everywhere by registering it here.
"""
from typing import Callable, Dict, Optional

import torch

from fastconv import _backend
from fastconv.ops import _autocast


def _is_mutating(op) -> bool:
    """Whether a custom op (torch.ops packet or torch.library.custom_op) writes one of its arguments."""
    overload = op if isinstance(op, torch._ops.OpOverload) else (getattr(op, "default", None)
                                                                  or getattr(op, "_opoverload", None))
    schema = getattr(overload, "_schema", None)
    return schema is None or schema.is_mutable


def _call(impl: Callable, no_autograd_fast_path: bool, *args):
    """impl(*args). Without grad mode, a Triton custom op's autograd kernel (Python, from register_autograd) only
    re-dispatches below autograd, and that costs ~15 us a call (conv2d_act on a tiny input: 22 us against
    F.conv2d's 6); go below autograd directly then. Not while dynamo traces (it traces the op itself), and not for
    ops that write an argument (batch_norm_act's running statistics: their version counters must move). The C++
    ops' autograd kernels (csrc/autograd.cpp) skip themselves in C++ when nothing records a graph, cheaper than
    this context manager (~1 us), so the cpu and cuda backends call them directly."""
    if no_autograd_fast_path and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        with torch._C._AutoDispatchBelowAutograd():
            return impl(*args)
    return impl(*args)


# Backends without a Python autograd kernel: the C++ ops of "cpu" and "cuda" (their autograd is C++,
# csrc/autograd.cpp) and plain ATen ("reference").
_NO_PYTHON_AUTOGRAD_BACKENDS = ("cpu", "cuda", "reference")


class OpEntry:
    def __init__(self, name: str, implementations: Dict[str, Callable]):
        unknown = set(implementations) - set(_backend.BACKENDS[1:])
        if unknown:
            raise ValueError(f"fastconv: {name} registers unknown backends {sorted(unknown)}")
        if "reference" not in implementations:
            raise ValueError(f"fastconv: {name} must register its 'reference' implementation")
        self.name = name
        # A torch.ops packet runs its default overload: calling that directly skips the packet's own Python
        # __call__ (every op here has the one overload).
        self.implementations = {b: getattr(impl, "default", impl) if isinstance(impl, torch._ops.OpOverloadPacket)
                                else impl for b, impl in implementations.items()}
        self.backends = tuple(b for b in _backend.BACKENDS[1:] if b in implementations)
        self.autocast = None  # the op's rule under torch.autocast (fastconv.ops._autocast.RULES), set by register_op
        # Custom ops with Python autograd (the Triton ops: not the plain-ATen reference, not the C++ ops of the cpu
        # and cuda backends) that write no argument take _call's fast path.
        self._fast_path = {b: b not in _NO_PYTHON_AUTOGRAD_BACKENDS and not _is_mutating(impl)
                           for b, impl in implementations.items()}

    def select(self, input) -> Callable:
        """The implementation to run for the op's main input `input` (a tensor; or a device type string,
        which skips the measured auto table)."""
        if isinstance(input, str):
            return self.implementations[_backend.resolve(self.name, self.backends, input)]
        return self.implementations[_backend.resolve(self.name, self.backends, input.device.type, input)]

    def run(self, input, *args):
        """Run the implementation `select(input)` picks on (input, *args) (see _call), the arguments cast by the
        op's autocast rule first when autocast is on."""
        if self.autocast is not None and _autocast.any_enabled():
            input, *args = _autocast.cast(self.autocast, (input, *args))
        backend = _backend.resolve(self.name, self.backends, input.device.type, input)
        if self._fast_path[backend]:
            return _call(self.implementations[backend], True, input, *args)
        return self.implementations[backend](input, *args)  # (one Python frame less: ~0.2 us of a 5 us call)

    def run_backend(self, backend: str, *args):
        if self.autocast is not None and _autocast.any_enabled():
            args = _autocast.cast(self.autocast, args)
        return _call(self.implementations[backend], self._fast_path[backend], *args)

    def runner(self, backend: str, *args) -> Callable:
        """A function of the main input: what run_backend(backend, input, *args) does without grad mode, with its
        choice made once (for callers that hold the other arguments constant and run without grad mode, and not
        under autocast: it casts nothing)."""
        implementation = self.implementations[backend]
        if not self._fast_path[backend]:
            return lambda input: implementation(input, *args)

        def below_autograd(input):
            with torch._C._AutoDispatchBelowAutograd():
                return implementation(input, *args)
        return below_autograd


OPS: Dict[str, OpEntry] = {}


def register_op(name: str, autocast: Optional[str] = None, **implementations: Callable) -> OpEntry:
    """Add op `name` to the table with its implementation per backend. `autocast` names the op's rule under
    torch.autocast (fastconv.ops._autocast.RULES), given to its custom ops (not to the reference, whose ATen ops
    have their own); None leaves the op without one."""
    if name in OPS:
        raise ValueError(f"fastconv: op {name!r} is already registered")
    OPS[name] = entry = OpEntry(name, implementations)
    if autocast is not None:
        entry.autocast = _autocast.RULES[autocast]
        custom_ops = {b: entry.implementations[b] for b in entry.backends if b != "reference"}
        for op in {id(op): op for op in custom_ops.values()}.values():  # cpu and cuda share one C++ op
            _autocast.register(op, autocast)
    return entry
