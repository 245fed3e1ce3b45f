"""channel_shuffle in Triton: one pass over the output, each element gathered from its source channel.

A dense tensor whose channel dimension has stride `inner` is an [outer, C, inner] array in memory, so the
same kernel serves NCHW, channels_last and any other dense layout (see csrc/channel_shuffle.h).
"""
import torch
import triton
import triton.language as tl

from fastconv.triton_kernels._common import ELEMENTWISE_BLOCK, as_bits, dense_like


@triton.jit
def _channel_shuffle_kernel(
    in_ptr, out_ptr, total, inner, channels, groups, per_group,
    BLOCK: tl.constexpr, INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    if INDEX_64:
        offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    row = offsets // inner
    col = offsets - row * inner
    a = row // channels
    c = row - a * channels
    source = (a * channels + (c % groups) * per_group + c // groups) * inner + col
    tl.store(out_ptr + offsets, tl.load(in_ptr + source, mask=mask), mask=mask)


def channel_shuffle(input: torch.Tensor, groups: int) -> torch.Tensor:
    """Arguments already checked by the caller. Output has torch.empty_like(input)'s layout."""
    output = torch.empty_like(input)
    if output.numel() == 0:
        return output
    source = dense_like(input, output)
    channels = source.shape[1]
    inner = source.stride(1) if channels > 1 else source.numel() // source.shape[0]
    total = source.numel()
    grid = (triton.cdiv(total, ELEMENTWISE_BLOCK),)
    _channel_shuffle_kernel[grid](
        as_bits(source), as_bits(output), total, inner, channels, groups, channels // groups,
        BLOCK=ELEMENTWISE_BLOCK, INDEX_64=total + ELEMENTWISE_BLOCK > 2**31 - 1,
    )
    return output
