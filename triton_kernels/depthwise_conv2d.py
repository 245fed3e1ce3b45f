"""depthwise_conv2d in Triton: forward and backward on tiles of (output pixels x channels).

Every tensor is addressed through its strides, so one kernel serves NCHW and channels_last (and any
dense or strided view); outputs take the input's memory format, as the C++ kernels (see
csrc/depthwise_conv2d.h). Accumulation is float32 (float64 for float64 inputs, under the interpreter).
Backward: grad_preact = grad_output * activation'(...) once; grad_input is the transposed depthwise conv in
gather form (one program owns its input pixels: no atomics); grad_weight is one program per (channel block,
tap, chunk of pixels) writing a partial sum, then the chunks are added in a fixed order: deterministic. The
chunks depend on the shape only, and are there for parallelism (one program per channel block and tap over
all pixels gave 45 programs for a MobileNetV2 layer at batch 128).
"""
import torch
import triton
import triton.language as tl

from fastconv.triton_kernels._common import ACTIVATION_CODES, INTERPRET, activate, activation_derivative

# Under the interpreter each program is slow Python: few, large tiles. On a GPU, tiles that keep occupancy.
BLOCK_PIXELS = 1024 if INTERPRET else 64
BLOCK_CHANNELS = 32
INT32_MAX = 2**31 - 1
_TARGET_PROGRAMS = 1024
_MAX_PARTIALS = 1 << 24


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr,
    N, C, H, W, OC, OH, OW, M,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH, KW, SH, SW, PT, PL, DH, DW,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    oc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        p = p.to(tl.int64)
        oc = oc.to(tl.int64)
    p_mask = p < N * OH * OW
    c_mask = oc < OC
    ow = p % OW
    rest = p // OW
    oh = rest % OH
    n = rest // OH
    channel_offset = (oc // M) * sxc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for i in range(KH):
        ih = oh * SH - PT + i * DH
        row_ok = p_mask & (ih >= 0) & (ih < H)
        for j in range(KW):
            iw = ow * SW - PL + j * DW
            ok = row_ok & (iw >= 0) & (iw < W)
            x = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + channel_offset[None, :],
                        mask=ok[:, None] & c_mask[None, :], other=0.0)
            w = tl.load(w_ptr + oc * (KH * KW) + i * KW + j, mask=c_mask, other=0.0)
            acc += x.to(ACC) * w.to(ACC)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc, mask=c_mask, other=0.0).to(ACC)[None, :]
    acc = activate(acc, ACT)
    out_offset = (n * son + oh * soh + ow * sow)[:, None] + (oc * soc)[None, :]
    tl.store(out_ptr + out_offset, acc.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


@triton.jit
def _preactivation_grad_kernel(g_ptr, v_ptr, out_ptr, total, ACT: tl.constexpr, ACC: tl.constexpr,
                               BLOCK: tl.constexpr, INDEX_64: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if INDEX_64:
        offsets = offsets.to(tl.int64)
    mask = offsets < total
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(ACC)
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + offsets, g * activation_derivative(v, ACT), mask=mask)


@triton.jit
def _grad_input_kernel(
    g_ptr, w_ptr, gi_ptr,
    N, C, H, W, OH, OW, M,
    sgn, sgc, sgh, sgw, sin, sic, sih, siw,
    KH, KW, SH, SW, PT, PL, DH, DW,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if INDEX_64:
        p = p.to(tl.int64)
        c = c.to(tl.int64)
    p_mask = p < N * H * W
    c_mask = c < C
    iw = p % W
    rest = p // W
    ih = rest % H
    n = rest // H
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for k in range(M):
        oc = c * M + k
        for i in range(KH):
            oh_stride = ih + PT - i * DH  # = oh * SH when this tap reaches (ih, .)
            oh = oh_stride // SH
            row_ok = p_mask & (oh_stride >= 0) & (oh * SH == oh_stride) & (oh < OH)
            for j in range(KW):
                ow_stride = iw + PL - j * DW
                ow = ow_stride // SW
                ok = row_ok & (ow_stride >= 0) & (ow * SW == ow_stride) & (ow < OW)
                g = tl.load(g_ptr + (n * sgn + oh * sgh + ow * sgw)[:, None] + (oc * sgc)[None, :],
                            mask=ok[:, None] & c_mask[None, :], other=0.0)
                w = tl.load(w_ptr + oc * (KH * KW) + i * KW + j, mask=c_mask, other=0.0)
                acc += g.to(ACC) * w.to(ACC)[None, :]
    out_offset = (n * sin + ih * sih + iw * siw)[:, None] + (c * sic)[None, :]
    tl.store(gi_ptr + out_offset, acc.to(gi_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


@triton.jit
def _grad_weight_kernel(
    g_ptr, x_ptr, partial_ptr,
    N, H, W, OC, OH, OW, M, CHUNK_PIXELS,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
    KH, KW, SH, SW, PT, PL, DH, DW,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
):
    """partial[chunk, oc, tap] = sum over the chunk's output pixels of grad_preact * input at the tap."""
    oc = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    chunk = tl.program_id(2)
    i = tap // KW
    j = tap % KW
    if INDEX_64:
        oc = oc.to(tl.int64)
        chunk = chunk.to(tl.int64)
    c_mask = oc < OC
    channel_offset = (oc // M) * sxc
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    total = N * OH * OW
    chunk_start = chunk * CHUNK_PIXELS
    chunk_end = tl.minimum(total, chunk_start + CHUNK_PIXELS)
    for start in range(chunk_start, chunk_end, BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        if INDEX_64:
            p = p.to(tl.int64)
        ow = p % OW
        rest = p // OW
        oh = rest % OH
        n = rest // OH
        ih = oh * SH - PT + i * DH
        iw = ow * SW - PL + j * DW
        ok = (p < chunk_end) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        mask = ok[:, None] & c_mask[None, :]
        g = tl.load(g_ptr + (n * sgn + oh * sgh + ow * sgw)[:, None] + (oc * sgc)[None, :], mask=mask, other=0.0)
        x = tl.load(x_ptr + (n * sxn + ih * sxh + iw * sxw)[:, None] + channel_offset[None, :], mask=mask, other=0.0)
        acc += g.to(ACC) * x.to(ACC)
    tl.store(partial_ptr + (chunk * OC + oc) * (KH * KW) + tap, tl.sum(acc, axis=0), mask=c_mask)


def _weight_grad_chunks(pixels, programs_per_chunk, partials_per_chunk):
    """(pixels per chunk, chunks) for _grad_weight_kernel: whole tiles of pixels, cut until there are about
    _TARGET_PROGRAMS programs, with at most _MAX_PARTIALS partial sums. Shape-only, so the summation order
    never depends on the device."""
    tiles = triton.cdiv(pixels, BLOCK_PIXELS)
    chunks = min(tiles, triton.cdiv(_TARGET_PROGRAMS, programs_per_chunk), _MAX_PARTIALS // partials_per_chunk, 65535)
    chunk_pixels = triton.cdiv(tiles, max(1, chunks)) * BLOCK_PIXELS
    return chunk_pixels, triton.cdiv(pixels, chunk_pixels)


def _memory_format(tensor):
    from torch._prims_common import suggest_memory_format

    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _max_offset(*tensors):
    """Largest element offset any of `tensors` can be addressed at (for the int32/int64 choice)."""
    return max(sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1 for t in tensors)


def _needs_int64(*tensors):
    return _max_offset(*tensors) + BLOCK_PIXELS * BLOCK_CHANNELS > INT32_MAX


def depthwise_conv2d(input, weight, bias, stride, padding, dilation, activation, out_dtype=None):
    """Arguments already checked and resolved (padding = (top, bottom, left, right))."""
    n, c, h, w = input.shape
    oc, _, kh, kw = weight.shape
    out_h = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    output = torch.empty((n, oc, out_h, out_w), dtype=out_dtype or input.dtype, device=input.device,
                         memory_format=_memory_format(input))
    if output.numel() == 0:
        return output
    weight = weight.contiguous()  # (C*m, 1, kh, kw): tiny
    grid = (triton.cdiv(n * out_h * out_w, BLOCK_PIXELS), triton.cdiv(oc, BLOCK_CHANNELS))
    _forward_kernel[grid](
        input, weight, bias if bias is not None else weight, output,
        n, c, h, w, oc, out_h, out_w, oc // c,
        *input.stride(), *output.stride(),
        kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
        HAS_BIAS=bias is not None, ACT=ACTIVATION_CODES[activation], ACC=_acc_dtype(input.dtype),
        BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_CHANNELS, INDEX_64=_needs_int64(input, output),
    )
    return output


def _preactivation_grad(grad_output, input, weight, bias, output, stride, padding, dilation, activation):
    """grad_output * activation'(...) in the accumulation dtype, dense in the output's layout."""
    if activation is None:
        return grad_output
    acc_dtype = torch.float64 if grad_output.dtype == torch.float64 else torch.float32
    if activation in ("hardswish", "silu"):  # recompute the pre-activation (see fastconv/ops/depthwise_conv2d.py)
        value = depthwise_conv2d(input, weight, bias, stride, padding, dilation, None, out_dtype=acc_dtype)
    else:
        value = output
    value = value.contiguous(memory_format=_memory_format(value))
    grad = grad_output.contiguous(memory_format=_memory_format(value))
    if grad.stride() != value.stride():  # ambiguous layouts (size-1 dims): make them agree
        grad = torch.empty_like(value, dtype=grad.dtype).copy_(grad)
    result = torch.empty_like(value, dtype=acc_dtype)
    total = result.numel()
    block = 1 << 14 if INTERPRET else 1024
    _preactivation_grad_kernel[(triton.cdiv(total, block),)](
        grad, value, result, total, ACT=ACTIVATION_CODES[activation], ACC=_acc_dtype(acc_dtype),
        BLOCK=block, INDEX_64=total + block > INT32_MAX,
    )
    return result


def depthwise_conv2d_backward(grad_output, input, weight, bias, output, input_size, stride, padding, dilation,
                              activation, output_mask):
    """(grad_input, grad_weight, grad_bias), None where output_mask is False. Arguments already checked."""
    n, c, h, w = input_size
    oc, _, kh, kw = weight.shape
    _, _, out_h, out_w = grad_output.shape
    layout = _memory_format(input if input is not None else grad_output)
    grad_input = torch.empty(input_size, dtype=weight.dtype, device=weight.device, memory_format=layout) \
        if output_mask[0] else None
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None
    grad_bias = None
    if grad_output.numel() == 0:
        if grad_weight is not None:
            grad_weight.zero_()
        if output_mask[2]:
            grad_bias = weight.new_zeros((oc,))
        return grad_input, grad_weight, grad_bias
    weight_c = weight.contiguous()
    grad_pre = _preactivation_grad(grad_output, input, weight_c, bias, output, stride, padding, dilation, activation)
    acc = _acc_dtype(weight.dtype)
    geometry = (kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1])
    if grad_input is not None:
        grid = (triton.cdiv(n * h * w, BLOCK_PIXELS), triton.cdiv(c, BLOCK_CHANNELS))
        _grad_input_kernel[grid](
            grad_pre, weight_c, grad_input, n, c, h, w, out_h, out_w, oc // c,
            *grad_pre.stride(), *grad_input.stride(), *geometry,
            ACC=acc, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_CHANNELS,
            INDEX_64=_needs_int64(grad_pre, grad_input),
        )
    if grad_weight is not None:
        pixels = n * out_h * out_w
        channel_blocks = triton.cdiv(oc, BLOCK_CHANNELS)
        chunk_pixels, chunks = _weight_grad_chunks(pixels, channel_blocks * kh * kw, oc * kh * kw)
        partial = torch.empty((chunks, oc, kh, kw), device=weight.device,
                              dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32)
        _grad_weight_kernel[(channel_blocks, kh * kw, chunks)](
            grad_pre, input, partial, n, h, w, oc, out_h, out_w, oc // c, chunk_pixels,
            *grad_pre.stride(), *input.stride(), *geometry,
            ACC=acc, BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_CHANNELS,
            INDEX_64=_needs_int64(grad_pre, input),
        )
        grad_weight.copy_(partial.sum(dim=0).view_as(grad_weight))
    if output_mask[2]:
        # A fixed-order reduction in the accumulation dtype: deterministic.
        accumulate = torch.float64 if weight.dtype == torch.float64 else torch.float32
        grad_bias = grad_pre.sum(dim=(0, 2, 3), dtype=accumulate).to(weight.dtype)
    return grad_input, grad_weight, grad_bias
