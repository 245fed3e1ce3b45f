"""squeeze_excite in Triton: a pooling kernel and a scaling kernel; the tiny per-sample MLP (two matmuls on
(N, C) / (N, Cr) tensors) runs as torch ops in the launcher, in float32 (float64 for float64 inputs).

The kernels see x as [N, C, HW] (NCHW) or [N, HW, C] (channels_last); CHANNELS_LAST is a compile-time
flag so the unit-stride dimension of each tile is known to the compiler (coalesced, vectorised loads).
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastconv.triton_kernels._common import INTERPRET


@triton.jit
def _tile_offsets(n, c, p, channels, pixels, CHANNELS_LAST: tl.constexpr):
    # c: [BLOCK_C, 1], p: [1, BLOCK_P] -> element offsets of x[n, c, p]
    if CHANNELS_LAST:
        return n * pixels * channels + p * channels + c
    else:
        return n * channels * pixels + c * pixels + p


@triton.jit
def _pool_kernel(
    x_ptr, grad_ptr, sum_x_ptr, sum_gx_ptr, channels, pixels, channel_blocks, pixels_per_program,
    WITH_GRAD: tl.constexpr, CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # program (sample n, channel block, pixel chunk): sums its pixels, then adds into sums[n, c] atomically
    # (one add per channel when a single chunk covers all pixels).
    task = tl.program_id(0)
    chunk = tl.program_id(1)
    n = task // channel_blocks
    if INDEX_64:
        n = n.to(tl.int64)
    channel = (task % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = channel[:, None]
    c_mask = c < channels
    acc_x = tl.zeros((BLOCK_C, BLOCK_P), dtype=sum_x_ptr.dtype.element_ty)
    acc_gx = tl.zeros((BLOCK_C, BLOCK_P), dtype=sum_x_ptr.dtype.element_ty)
    p_begin = chunk * pixels_per_program
    for p0 in range(p_begin, p_begin + pixels_per_program, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[None, :]
        mask = c_mask & (p < pixels)
        offsets = _tile_offsets(n, c, p, channels, pixels, CHANNELS_LAST)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(acc_x.dtype)
        acc_x += x
        if WITH_GRAD:
            acc_gx += tl.load(grad_ptr + offsets, mask=mask, other=0.0).to(acc_x.dtype) * x
    row = n * channels + channel
    tl.atomic_add(sum_x_ptr + row, tl.sum(acc_x, axis=1), mask=channel < channels)
    if WITH_GRAD:
        tl.atomic_add(sum_gx_ptr + row, tl.sum(acc_gx, axis=1), mask=channel < channels)


@triton.jit
def _scale_kernel(
    x_ptr, scale_ptr, shift_ptr, out_ptr, channels, pixels, channel_blocks,
    WITH_SHIFT: tl.constexpr, CHANNELS_LAST: tl.constexpr, INDEX_64: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # out[n, c, p] = x[n, c, p] * scale[n, c] (+ shift[n, c]) on one [BLOCK_C, BLOCK_P] tile.
    task = tl.program_id(0)
    n = task // channel_blocks
    if INDEX_64:
        n = n.to(tl.int64)
    c = (task % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    c_mask = c < channels
    mask = c_mask & (p < pixels)
    offsets = _tile_offsets(n, c, p, channels, pixels, CHANNELS_LAST)
    scale = tl.load(scale_ptr + n * channels + c, mask=c_mask, other=0.0)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    result = x.to(scale.dtype) * scale
    if WITH_SHIFT:
        result += tl.load(shift_ptr + n * channels + c, mask=c_mask, other=0.0)
    tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)


def _tiles(channels, pixels, channels_last):
    """(BLOCK_C, BLOCK_P): the unit-stride dimension gets the long side of the tile."""
    if INTERPRET:  # few, large programs
        block_c = min(triton.next_power_of_2(channels), 256)
        return block_c, min(triton.next_power_of_2(pixels), max(16384 // block_c, 1))
    if channels_last:
        return min(triton.next_power_of_2(channels), 64), 32
    return 8, min(triton.next_power_of_2(pixels), 256)


def _kernel_layout(input):
    if input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last):
        return input
    return input.contiguous()  # other layouts run in NCHW; the result is copied back into the input's layout


def _same_layout(tensor, like):
    return tensor if tensor.stride() == like.stride() else torch.empty_like(like).copy_(tensor)


def _in_input_layout(result, input):
    output = torch.empty_like(input)
    return result if output.stride() == result.stride() else output.copy_(result)


def _pool(x, grad):
    """(sum_hw x, sum_hw grad * x or None) as (N, C) opmath tensors; x (and grad) in kernel layout."""
    n, channels, h, w = x.shape
    pixels = h * w
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    sum_x = torch.zeros(n, channels, dtype=opmath, device=x.device)
    sum_gx = torch.zeros_like(sum_x) if grad is not None else None
    if x.numel() == 0:
        return sum_x, sum_gx
    channels_last = not x.is_contiguous()
    block_c, block_p = _tiles(channels, pixels, channels_last)
    channel_blocks = triton.cdiv(channels, block_c)
    # Split the pixels over several programs only when the (sample, channel block) grid is small.
    pixels_per_program = triton.cdiv(pixels, block_p) * block_p
    if not INTERPRET:
        pixels_per_program = max(block_p * 4, min(pixels_per_program, block_p * 16))
    grid = (n * channel_blocks, triton.cdiv(pixels, pixels_per_program))
    _pool_kernel[grid](
        x, grad if grad is not None else x, sum_x, sum_gx if sum_gx is not None else sum_x,
        channels, pixels, channel_blocks, pixels_per_program,
        WITH_GRAD=grad is not None, CHANNELS_LAST=channels_last, INDEX_64=x.numel() > 2**31 - 1,
        BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return sum_x, sum_gx


def _scale(x, scale, shift):
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    n, channels, h, w = x.shape
    pixels = h * w
    channels_last = not x.is_contiguous()
    block_c, block_p = _tiles(channels, pixels, channels_last)
    channel_blocks = triton.cdiv(channels, block_c)
    grid = (n * channel_blocks, triton.cdiv(pixels, block_p))
    _scale_kernel[grid](
        x, scale, shift if shift is not None else scale, out, channels, pixels, channel_blocks,
        WITH_SHIFT=shift is not None, CHANNELS_LAST=channels_last, INDEX_64=x.numel() > 2**31 - 1,
        BLOCK_C=block_c, BLOCK_P=block_p,
    )
    return out


_ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
_GATES = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid}


def _mlp_forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    opmath = pooled.dtype
    cast = lambda t: None if t is None else t.to(opmath)  # noqa: E731
    z1 = F.linear(pooled, fc1_weight.flatten(1).to(opmath), cast(fc1_bias))
    hidden = _ACTIVATIONS[activation](z1)
    z2 = F.linear(hidden, fc2_weight.flatten(1).to(opmath), cast(fc2_bias))
    return z1, hidden, z2, _GATES[gate](z2)


def squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    """Arguments already checked by the caller. Output has torch.empty_like(input)'s layout."""
    x = _kernel_layout(input)
    sum_x, _ = _pool(x, None)
    pixels = max(x.shape[2] * x.shape[3], 1)
    *_, scale = _mlp_forward(sum_x / pixels, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    return _in_input_layout(_scale(x, scale, None), input)


def squeeze_excite_backward(grad_output, input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate):
    """(grad_input, grad_fc1_weight, grad_fc1_bias or None, grad_fc2_weight, grad_fc2_bias or None)."""
    aten = torch.ops.aten
    x = _kernel_layout(input)
    grad = _same_layout(grad_output, x)
    sum_x, grad_scale = _pool(x, grad)
    pixels = max(x.shape[2] * x.shape[3], 1)
    pooled = sum_x / pixels
    z1, hidden, z2, scale = _mlp_forward(pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, gate)
    opmath = pooled.dtype
    w1 = fc1_weight.flatten(1).to(opmath)
    w2 = fc2_weight.flatten(1).to(opmath)
    dz2 = aten.sigmoid_backward(grad_scale, scale) if gate == "sigmoid" else aten.hardsigmoid_backward(grad_scale, z2)
    dh = dz2 @ w2
    dz1 = aten.threshold_backward(dh, z1, 0) if activation == "relu" else aten.silu_backward(dh, z1)
    grad_pooled = dz1 @ w1
    grad_input = _in_input_layout(_scale(grad, scale, grad_pooled / pixels), input)
    dtype = fc1_weight.dtype
    return (
        grad_input,
        (dz1.t() @ pooled).to(dtype).view(fc1_weight.shape),
        dz1.sum(0).to(dtype) if fc1_bias is not None else None,
        (dz2.t() @ hidden).to(dtype).view(fc2_weight.shape),
        dz2.sum(0).to(dtype) if fc2_bias is not None else None,
    )
