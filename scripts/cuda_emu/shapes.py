"""The emulated CUDA kernels on the real networks' shapes: every case of the main job's op suite at batch 1.

Run inside a tree made by build.py (there the "cpu" backend is the CUDA kernels' code):

    cd /tmp/fastconv-emu && python scripts/cuda_emu/shapes.py [--ops depthwise_conv2d,conv2d_act] [--dtypes ...]

The tests' shapes are small; these are the ones the kernels meet in MobileNetV2, ShuffleNetV2, ResNet-50,
SE-ResNet-50, RepLKNet and DCN-ResNet-50, where other tilings, vector widths and launch plans apply. Each
output (forward, or the forward + backward step's output for batch_norm_act training) is compared with the
float64 reference computed from the same rounded inputs, with the tolerance table of tests/tolerances.py
applied after `scaled_to_output` (gradients: see `allowed` below). Exit status 1 when any case misses it.
"""
import argparse
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this tree's fastconv, not an installed one
import fastconv  # noqa: E402
from fastconv import __main__ as cli  # noqa: E402
from tolerances import scaled_to_output, tolerance  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _float64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().double().requires_grad_(value.requires_grad)
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="all")
    parser.add_argument("--dtypes", default="float32,float16,bfloat16")
    args = parser.parse_args()
    if not fastconv.BUILD_INFO.get("cuda_emulation"):
        sys.exit("shapes.py: run it in a tree built by scripts/cuda_emu/build.py (its fastconv._C emulates CUDA)")
    suite = cli._op_suite(torch.device("cpu"), quick=False)
    wanted = set(DTYPES[name] for name in args.dtypes.split(","))
    failures = 0
    for op, (cases, public, reference) in suite.items():
        if args.ops != "all" and op not in args.ops.split(","):
            continue
        for case in cases:
            if not any(mark in case.label for mark in ("[1, ", " b1 ", "[1] ")):  # batch 1: emulation is slow
                continue
            inputs = case.make_inputs()
            dtype = next(t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
            if dtype not in wanted:
                continue
            start = time.perf_counter()
            with fastconv.backend("cpu"):
                out = public(*inputs)
            seconds = time.perf_counter() - start
            with fastconv.backend("reference"):
                expected = reference(*[_float64(t) for t in inputs])
            exact = op in ("channel_shuffle", "shuffle_cat")
            if exact:
                got, want, (rtol, atol) = out.double(), expected.double(), tolerance(dtype, exact=True)
            else:
                got, want = scaled_to_output(out.detach().double(), expected.detach().double())
                rtol, atol = tolerance(dtype)
            error = (got - want).abs().max().item() if out.numel() else 0.0
            missed = int((~torch.isclose(got, want, rtol=rtol, atol=atol)).sum()) if out.shape == expected.shape else -1
            # A gradient through relu/relu6 is discontinuous at the kinks: an element whose float64 pre-activation
            # lies within float32 rounding of 0 (or 6) takes the other branch in a float32 kernel. Seen once in 25
            # draws of MobileNetV2's 96@56x56 BN-ReLU6 training step (pre-activation -3.3e-8): one element of
            # 301056. So a gradient may miss at one element in 1e5; an indexing bug misses rows, not one element.
            allowed = out.numel() // 100_000 if "fwd+bwd" in case.label else 0
            ok = 0 <= missed <= allowed
            failures += not ok
            mark = "ok  " if missed == 0 else ("ok* " if ok else "FAIL")
            print(f"{mark} {op:24s} {case.label:70s} max err {error:.2e}, {missed} element(s) out of tolerance "
                  f"({seconds:.1f} s)", flush=True)
    print(f"{failures} case(s) out of tolerance")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
