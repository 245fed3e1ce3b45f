"""Compile Triton kernels for sm_90 on a machine without a GPU, and report their registers and spills.

The interpreter (TRITON_INTERPRET=1, the tests' mode here) checks what kernels compute, not whether they
compile for a GPU nor how heavy they are there. This script runs Triton's real compiler (TTIR -> PTX -> cubin
with the bundled ptxas) for a given target and reads each cubin's resource usage with cuobjdump: REG
(registers per thread, 255 at most) and STACK (bytes per thread, mostly register spills; 0 is the goal).
Usage (repository root, TRITON_INTERPRET unset): python scripts/triton_sm90_check.py
Currently: the deform_conv2d kernels, in the configurations the launchers use on a GPU.
"""
import os
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: the interpreter replaces the compiler this script runs")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from fastconv.triton_kernels import deform_conv2d as deform  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_kernel(kernel, constexprs, pointers, num_warps):
    """Compile `kernel` with its constexprs fixed, `pointers` {argument: "*fp16"...}, every other argument i32.
    Returns cuobjdump's resource-usage line."""
    signature = {name: "constexpr" if name in constexprs else pointers.get(name, "i32") for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=TARGET,
                              options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    line = next(line for line in usage.splitlines() if "REG:" in line).split()
    return f"{line[0]} {line[1]} shared={compiled.metadata.shared}"


def deform_conv2d_kernels():
    for dtype, ieee in (("fp32", True), ("fp16", False), ("bf16", False)):
        for index_64 in (False, True):
            def pointers(*names, grad_input_fp32=False):
                types = {name: "*" + dtype for name in names}
                if grad_input_fp32:
                    types["gi_ptr"] = "*fp32"
                return types

            tiles = dict(KH=3, KW=3, ACC=tl.float32, DOT_IEEE=ieee, BLOCK_P=deform.BLOCK_PIXELS,
                         BLOCK_O=deform.BLOCK_OUT, INDEX_64=index_64)
            backward = dict(tiles, BLOCK_C=deform.BACKWARD_BLOCK_CHANNELS, HAS_MASK=True)
            label = f"deform_conv2d {dtype}{' int64' if index_64 else ''}"
            yield (f"{label} forward", deform._forward_kernel,
                   dict(tiles, BLOCK_C=deform.BLOCK_CHANNELS, HAS_MASK=True, HAS_BIAS=True),
                   pointers("x_ptr", "off_ptr", "mask_ptr", "w_ptr", "b_ptr", "out_ptr"), 4)
            yield (f"{label} grad_weight", deform._grad_weight_kernel, backward,
                   pointers("go_ptr", "x_ptr", "off_ptr", "mask_ptr", "gw_ptr"), deform.BACKWARD_WARPS)
            yield (f"{label} columns grad", deform._columns_grad_kernel,
                   dict(backward, WANT_INPUT=True, WANT_OFFSET=True, WANT_MASK=True),
                   pointers("go_ptr", "w_ptr", "x_ptr", "off_ptr", "mask_ptr", "goff_ptr", "gm_ptr",
                            grad_input_fp32=True), deform.BACKWARD_WARPS)


if __name__ == "__main__":
    for name, kernel, constexprs, pointers, num_warps in deform_conv2d_kernels():
        print(f"{name:<44} {compile_kernel(kernel, constexprs, pointers, num_warps)}", flush=True)
