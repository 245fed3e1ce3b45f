"""Compile every Triton kernel for a GPU target on a machine without one: what the interpreter cannot check.

The tests run the Triton kernels under TRITON_INTERPRET=1, which executes them as NumPy and accepts programs the
compiler rejects (dtype mismatches in tl.where/tl.dot, tile shapes tl.dot does not take, shared memory beyond the
chip's). Here the kernels go through Triton's real compiler down to machine code for sm_90 (Hopper), with a stand-in
driver that reports that target and never launches: the same cases as scripts/sanitizer_cases.py (forward and
backward of every op, float32/float16/bfloat16, NCHW and channels_last), on CPU tensors whose outputs are never
written. A kernel that does not compile, or needs more shared memory than the chip has, fails the run.

Usage: python scripts/triton_compile_check.py [arch, default 90]. Needs triton (its bundled ptxas); no GPU.
"""
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile, don't interpret (read by Triton and fastconv at import)

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.driver import CudaDriver  # noqa: E402
from triton.compiler import compiler  # noqa: E402
from triton.runtime import driver  # noqa: E402

ARCH = int(sys.argv[1]) if len(sys.argv) > 1 else 90
# Opt-in shared memory per block: 227 KiB on sm_90 (H100/H200), 163 KiB on sm_80, 99 KiB on sm_86/89.
MAX_SHARED = {90: 232448, 80: 166912, 86: 101376, 89: 101376}.get(ARCH, 101376)


class CompileOnlyDriver(CudaDriver):
    """Reports the target; device, stream and launches are stand-ins (nothing runs)."""

    def __init__(self):  # no CUDA library is loaded
        pass

    def get_current_target(self):
        return GPUTarget("cuda", ARCH, 32)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def is_active(self):
        return True


compiled = {}  # kernel name -> largest shared memory seen (bytes)
too_big = []


def _load_nothing(self):
    """CompiledKernel._init_handles without loading: check the chip's limits, record, and make launches no-ops."""
    if self.module is not None:
        return
    shared = self.metadata.shared
    fn = getattr(getattr(self, "src", None), "fn", None)
    name = f"{getattr(fn, '__module__', '?').rsplit('.', 1)[-1]}.{self.name}"
    compiled[name] = max(shared, compiled.get(name, 0))
    if shared > MAX_SHARED:
        too_big.append(f"{name}: {shared} bytes of shared memory > {MAX_SHARED}")
    self.module, self.function = "compile-only", 0
    self._run = lambda *args, **kwargs: None


driver.set_active(CompileOnlyDriver())
compiler.CompiledKernel._init_handles = _load_nothing

import fastconv  # noqa: E402
from fastconv import _backend  # noqa: E402

# fastconv runs the triton backend on CPU tensors only under the interpreter; here the kernels are compiled, and
# the tensors only lend their shapes, strides and dtypes (no kernel runs).
_backend.TRITON_INTERPRET = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sanitizer_cases  # noqa: E402

sanitizer_cases.DEVICE = "cpu"


def main():
    failures = []
    names = []
    with fastconv.backend("triton"):
        for name, run in sanitizer_cases.cases():
            names.append(name)
            try:
                run()
            except Exception as error:  # noqa: BLE001 - report every case, then fail
                failures.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
    for name in sorted(compiled):
        print(f"compiled for sm_{ARCH}: {name} (shared memory up to {compiled[name]} bytes)")
    print(f"{len(names)} cases, {len(compiled)} kernels compiled, {len(failures)} failed, {len(too_big)} over the "
          f"chip's shared memory")
    for line in failures + too_big:
        print("FAILED", line)
    if failures or too_big or not compiled:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
