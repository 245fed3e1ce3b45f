"""shuffle_cat in Triton: the 2-way interleave of channel rows (see csrc/shuffle_cat.h), one pass over the
interleaved tensor; the backward is the same kernel with the copy direction reversed (SPLIT).

In NCHW or channels_last a (N, C, *) tensor is `outer` blocks of C rows of `inner` elements (NCHW: N blocks
of C planes; channels_last: N*H*W pixels of C one-element rows). Interleaved row 2j (2j + 1) of a block is
row j of a (b). The halves are read/written at any block stride, so channel slices of a bigger tensor (the
ShuffleNet split) need no copy; the interleaved tensor is always dense.
"""
import math

import torch
import triton
import triton.language as tl

from fastconv.triton_kernels._common import ELEMENTWISE_BLOCK, as_bits

_INT32_MAX = 2**31 - 1


@triton.jit
def _interleave_kernel(
    interleaved_ptr, first_ptr, second_ptr, total, inner, channels, first_block, second_block,
    SPLIT: tl.constexpr, BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    if INDEX_64:
        offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    row = offsets // inner  # interleaved row = 2 * (o * channels + j) + half
    col = offsets - row * inner
    half_row = row // 2
    o = half_row // channels
    within = (half_row - o * channels) * inner + col
    first_offsets = o * first_block + within
    second_offsets = o * second_block + within
    first_mask = mask & (row % 2 == 0)
    second_mask = mask & (row % 2 == 1)
    if SPLIT:
        values = tl.load(interleaved_ptr + offsets, mask=mask)
        tl.store(first_ptr + first_offsets, values, mask=first_mask)
        tl.store(second_ptr + second_offsets, values, mask=second_mask)
    else:
        from_first = tl.load(first_ptr + first_offsets, mask=first_mask)
        from_second = tl.load(second_ptr + second_offsets, mask=second_mask)
        tl.store(interleaved_ptr + offsets, tl.where(row % 2 == 1, from_second, from_first), mask=mask)


def _block_stride(half, channels_last):
    """Elements between consecutive blocks of `half`, or None when its rows are not dense within a block or
    its blocks are not evenly spaced (mirrors block_stride in csrc/shuffle_cat.h)."""
    sizes, strides = half.shape, half.stride()
    dense_elements = 1
    row_and_channel_dims = [1] if channels_last else list(range(half.dim() - 1, 1, -1)) + [1]
    for d in row_and_channel_dims:
        if sizes[d] != 1 and strides[d] != dense_elements:
            return None
        dense_elements *= sizes[d]
    stride, span = None, 1
    for d in (3, 2, 0) if channels_last else (0,):
        if sizes[d] == 1:
            continue
        if stride is None:
            stride = strides[d]
        elif strides[d] != stride * span:
            return None
        span *= sizes[d]
    return dense_elements if stride is None else stride


def _blocked_half(half, memory_format):
    """(`half` or a dense copy when its layout cannot be indexed in place, its block stride)."""
    channels_last = memory_format == torch.channels_last
    stride = _block_stride(half, channels_last)
    if stride is not None:
        return half, stride
    dense = half.contiguous(memory_format=memory_format)  # the only copy: e.g. spatial crops, mixed formats
    return dense, _block_stride(dense, channels_last)


def _interleave(interleaved, first, second, memory_format, split):
    """interleaved <- (first, second), or the reverse when `split`; `interleaved` is dense in memory_format."""
    first, first_block = _blocked_half(first, memory_format)
    second, second_block = _blocked_half(second, memory_format)
    channels = first.shape[1]
    inner = 1 if memory_format == torch.channels_last else math.prod(first.shape[2:])
    total = interleaved.numel()
    outer = first.numel() // (channels * inner)
    largest = max(total + ELEMENTWISE_BLOCK, (outer - 1) * max(first_block, second_block) + channels * inner)
    _interleave_kernel[(triton.cdiv(total, ELEMENTWISE_BLOCK),)](
        as_bits(interleaved), as_bits(first), as_bits(second), total, inner, channels, first_block, second_block,
        SPLIT=split, BLOCK=ELEMENTWISE_BLOCK, INDEX_64=largest > _INT32_MAX,
    )


def shuffle_cat(a: torch.Tensor, b: torch.Tensor, memory_format) -> torch.Tensor:
    """Arguments already checked by the caller; the output is dense in `memory_format`."""
    shape = list(a.shape)
    shape[1] *= 2
    output = torch.empty(shape, dtype=a.dtype, device=a.device, memory_format=memory_format)
    if output.numel() > 0:
        _interleave(output, a, b, memory_format, split=False)
    return output


def shuffle_cat_backward(grad_output: torch.Tensor, memory_format):
    """(grad_output[:, 0::2], grad_output[:, 1::2]), each dense in `memory_format`."""
    shape = list(grad_output.shape)
    shape[1] //= 2
    grads = [torch.empty(shape, dtype=grad_output.dtype, device=grad_output.device, memory_format=memory_format)
             for _ in range(2)]
    if grad_output.numel() > 0:
        # The kernel reads the interleaved tensor densely; autograd's gradients already are (no copy then).
        _interleave(grad_output.contiguous(memory_format=memory_format), *grads, memory_format, split=True)
    return grads[0], grads[1]
