"""The Python op table: for every public op, its implementation per backend.

The C++ schemas live in csrc/fastconv.cpp; this table is what the backend switch, `python -m fastconv info`,
the tests and the benches iterate over, so a new op is covered everywhere by registering it here.
"""
from typing import Callable, Dict

from fastconv import _backend


class OpEntry:
    def __init__(self, name: str, implementations: Dict[str, Callable]):
        unknown = set(implementations) - set(_backend.BACKENDS[1:])
        if unknown:
            raise ValueError(f"fastconv: {name} registers unknown backends {sorted(unknown)}")
        if "reference" not in implementations:
            raise ValueError(f"fastconv: {name} must register its 'reference' implementation")
        self.name = name
        self.implementations = implementations
        self.backends = tuple(b for b in _backend.BACKENDS[1:] if b in implementations)

    def select(self, input) -> Callable:
        """The implementation to run for the op's main input `input` (a tensor; or a device type string,
        which skips the measured auto table)."""
        if isinstance(input, str):
            return self.implementations[_backend.resolve(self.name, self.backends, input)]
        return self.implementations[_backend.resolve(self.name, self.backends, input.device.type, input)]


OPS: Dict[str, OpEntry] = {}


def register_op(name: str, **implementations: Callable) -> OpEntry:
    if name in OPS:
        raise ValueError(f"fastconv: op {name!r} is already registered")
    OPS[name] = OpEntry(name, implementations)
    return OPS[name]
