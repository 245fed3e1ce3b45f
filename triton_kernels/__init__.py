"""Triton kernels of fastconv, installed as ``fastconv.triton_kernels``.

Each module holds @triton.jit kernels and their launchers (tensors in, tensors out); the torch.library
registration lives in fastconv/ops/. Importing this package imports triton, so fastconv imports it lazily.
"""
