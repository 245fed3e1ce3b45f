"""The CUDA kernels' code, run on the CPU: csrc/cuda/*.cu through scripts/cuda_emu (see its README.md).

scripts/cuda_emu/build.py makes a copy of the tree whose fastconv._C registers the CUDA kernels for the CPU, and
the ops tests of the "cpu" backend then run in that copy: every forward, backward, opcheck, compile, batch-0,
layout and bad-input test that has `cpu-cpu` in its id checks the CUDA code against the float64 references.
That is the only run those kernels get on a machine without a GPU (CI's). A failure here is a failing ops test
in the copy; its output is shown. The build takes ~1.5 minutes on 2 cores (later ones rebuild what changed),
each run ~3 minutes; FASTCONV_SKIP_CUDA_EMULATION=1 skips it while iterating on something else.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "cuda_emu"
ASAN_TREE = ROOT / "build" / "cuda_emu_asan"

# What the copy does not run, and why:
DESELECT = [
    # gradcheck and the gradient-subset tests recompute the op hundreds of times in float64: ~6 minutes
    # emulated. test_backward already compares every backward kernel with the float64 reference.
    "gradcheck",
    "grad_subsets",
    # The conv2d_act ops' float16/bfloat16 backward calls ATen's convolution_backward, which is cuDNN on a GPU
    # but ATen's CPU kernel in the copy, and that one rounds partial sums to the reduced type (csrc/cpu/
    # conv2d_act.cpp runs it in float for that reason): a CPU artefact, not the CUDA code's. The autocast tests
    # run the same backward in those dtypes (seen: a bias gradient 3.4% off on grouped-hardswish, on some draws).
    "((test_backward or test_autocast) and conv2d_act and (float16 or bfloat16))",
]


def _run(args, cwd, timeout, **env_overrides):
    # PYTHONPATH = the copy: its fastconv, not the repository's (an editable install would otherwise win for
    # scripts, whose sys.path[0] is their own folder).
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", "2"), "PYTHONPATH": str(cwd), **env_overrides}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build(tree, *flags):
    if os.environ.get("FASTCONV_SKIP_CUDA_EMULATION") == "1":  # local iteration only; CI never sets it
        pytest.skip("FASTCONV_SKIP_CUDA_EMULATION=1")
    built = _run([sys.executable, str(ROOT / "scripts" / "cuda_emu" / "build.py"), str(tree), *flags], ROOT, 2400)
    assert built.returncode == 0, f"building the emulated CUDA kernels failed:\n{built.stdout[-4000:]}\n{built.stderr[-8000:]}"
    return tree


@pytest.fixture(scope="module")
def emulated_tree():
    _build(TREE)
    probe = _run([sys.executable, "-c", "import fastconv; print(fastconv.BUILD_INFO.get('cuda_emulation'))"], TREE, 300)
    assert probe.stdout.strip() == "True", f"the copy does not import its emulated build:\n{probe.stdout}\n{probe.stderr}"
    return TREE


# Between barriers a block's threads run first-to-last, then (second run) last-to-first: a thread reading shared
# memory that another writes with no __syncthreads between them reads stale or poisoned bytes in one of the two
# orders. A barrier deleted from batch_norm_act's reduction failed 46 tests in both orders.
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_cuda_kernels_pass_the_ops_tests_emulated(emulated_tree, order, monkeypatch):
    monkeypatch.setenv("FASTCONV_EMU_ORDER", order)
    selection = "cpu-cpu and not " + " and not ".join(DESELECT)
    result = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/ops", "-k", selection],
        emulated_tree,
        3000,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    print(f"emulated CUDA kernels ({order} thread order), tests/ops -k {selection!r}: {summary}")
    assert result.returncode == 0, f"ops tests on the emulated CUDA kernels failed:\n{result.stdout[-20000:]}\n{result.stderr[-4000:]}"
    assert " passed" in summary and "failed" not in summary


def test_cuda_kernels_stay_in_bounds_under_asan():
    """scripts/sanitizer_cases.py (compute-sanitizer's cases) on the emulated kernels built with AddressSanitizer:
    every tensor is a heap allocation with red zones, so a global read or write out of bounds is reported, as
    memcheck would on a GPU. A planted `u <= total_units` in channel_shuffle.cu was reported (heap-buffer-overflow,
    WRITE of size 4, 0 bytes right of the output)."""
    # Loaded by path under its own name: a plain `import build` would take whatever module named `build` comes
    # first on sys.path (a stray build/ namespace package, or setuptools' own), and would stay cached as `build`.
    spec = importlib.util.spec_from_file_location("fastconv_cuda_emu_build", ROOT / "scripts" / "cuda_emu" / "build.py")
    emu_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu_build)
    tree = _build(ASAN_TREE, "--asan")
    result = _run([sys.executable, "scripts/sanitizer_cases.py", "cpu"], tree, 1800, **emu_build.asan_environment())
    report = result.stdout + result.stderr
    assert result.returncode == 0 and "ERROR: AddressSanitizer" not in report, (
        f"sanitizer cases under ASan failed:\n{report[-12000:]}")
    assert report.count("\nran ") + report.startswith("ran ") >= 30, f"the cases did not run:\n{report[-4000:]}"
