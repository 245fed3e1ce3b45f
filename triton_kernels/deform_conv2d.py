"""deform_conv2d in Triton: the forward as one fused kernel, bilinear sampling feeding tl.dot.

One program computes a (BLOCK_P output pixels) x (BLOCK_O output channels of one weight group) tile. It walks
the reduction dimension tap by tap and BLOCK_C input channels at a time: it samples the (pixels x channels)
tile bilinearly straight from the input (each channel's offset group picks its offsets and mask), in float32,
and multiplies it by the (channels x output channels) weight tile with tl.dot, accumulating in float32
(float64 for float64). No column buffer exists outside the program's registers. Every tensor is addressed
through its strides (NCHW, channels_last, views); the output takes the input's memory format.

The backward is the C++ op's (fastconv/ops/deform_conv2d.py): there is no Triton backward kernel yet.
"""
import torch
import triton
import triton.language as tl

from fastconv.triton_kernels._common import INTERPRET

# Under the interpreter each program is slow Python: few, large tiles. tl.dot needs every side >= 16.
BLOCK_PIXELS = 256 if INTERPRET else 64
BLOCK_CHANNELS = 32
BLOCK_OUT = 32 if INTERPRET else 64
INT32_MAX = 2**31 - 1


@triton.jit
def _forward_kernel(
    x_ptr, off_ptr, mask_ptr, w_ptr, b_ptr, out_ptr,
    N, H, W, OH, OW, CG, OG_OUT, CPOG,
    sxn, sxc, sxh, sxw, son_, soc_, soh_, sow_, smn, smc, smh, smw, syn, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, SH, SW, PH, PW, DH, DW,
    HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, INDEX_64: tl.constexpr,
):
    pid_o = tl.program_id(1)
    blocks_per_group = tl.cdiv(OG_OUT, BLOCK_O)
    group = pid_o // blocks_per_group
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ol = (pid_o % blocks_per_group) * BLOCK_O + tl.arange(0, BLOCK_O)
    cl_base = tl.arange(0, BLOCK_C)
    if INDEX_64:
        p = p.to(tl.int64)
        ol = ol.to(tl.int64)
        cl_base = cl_base.to(tl.int64)
    p_ok = p < N * OH * OW
    o_ok = ol < OG_OUT
    o = group * OG_OUT + ol
    ow = p % OW
    oh = (p // OW) % OH
    n = p // (OW * OH)
    acc = tl.zeros([BLOCK_P, BLOCK_O], dtype=ACC)
    for k in range(KH * KW):
        i = k // KW
        j = k % KW
        base_y = (oh * SH - PH + i * DH).to(ACC)
        base_x = (ow * SW - PW + j * DW).to(ACC)
        for c0 in range(0, CG, BLOCK_C):
            cl = c0 + cl_base
            c_ok = cl < CG
            c = group * CG + cl
            g = c // CPOG
            ok = p_ok[:, None] & c_ok[None, :]
            at_pixel = (n * son_ + oh * soh_ + ow * sow_)[:, None]
            dy = tl.load(off_ptr + at_pixel + ((g * 2 * KH * KW + 2 * k) * soc_)[None, :], mask=ok, other=0.0)
            dx = tl.load(off_ptr + at_pixel + ((g * 2 * KH * KW + 2 * k + 1) * soc_)[None, :], mask=ok, other=0.0)
            y = base_y[:, None] + dy.to(ACC)
            x = base_x[:, None] + dx.to(ACC)
            inside = (y > -1.0) & (y < H) & (x > -1.0) & (x < W) & ok
            # Clamped before the integer conversion; beyond [-2, H + 1] every corner is outside anyway.
            y0f = tl.floor(tl.minimum(tl.maximum(y, -2.0), H + 1.0))
            x0f = tl.floor(tl.minimum(tl.maximum(x, -2.0), W + 1.0))
            ly = y - y0f
            lx = x - x0f
            y0 = y0f.to(tl.int32)
            x0 = x0f.to(tl.int32)
            plane = x_ptr + (n * sxn)[:, None] + (c * sxc)[None, :]
            vy0 = (y0 >= 0) & (y0 < H)
            vy1 = (y0 + 1 >= 0) & (y0 + 1 < H)
            vx0 = (x0 >= 0) & (x0 < W)
            vx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
            m00 = inside & vy0 & vx0
            m01 = inside & vy0 & vx1
            m10 = inside & vy1 & vx0
            m11 = inside & vy1 & vx1
            v00 = tl.load(plane + tl.where(m00, y0 * sxh + x0 * sxw, 0), mask=m00, other=0.0).to(ACC)
            v01 = tl.load(plane + tl.where(m01, y0 * sxh + (x0 + 1) * sxw, 0), mask=m01, other=0.0).to(ACC)
            v10 = tl.load(plane + tl.where(m10, (y0 + 1) * sxh + x0 * sxw, 0), mask=m10, other=0.0).to(ACC)
            v11 = tl.load(plane + tl.where(m11, (y0 + 1) * sxh + (x0 + 1) * sxw, 0), mask=m11, other=0.0).to(ACC)
            val = (1.0 - ly) * (1.0 - lx) * v00 + (1.0 - ly) * lx * v01 + ly * (1.0 - lx) * v10 + ly * lx * v11
            if HAS_MASK:
                modulation = tl.load(mask_ptr + (n * smn + oh * smh + ow * smw)[:, None]
                                     + ((g * KH * KW + k) * smc)[None, :], mask=ok, other=0.0)
                val = val * modulation.to(ACC)
            # weight[o, cl, i, j] of a contiguous (C_out, C/groups, kh, kw) weight, as a (channels x outputs) tile.
            w = tl.load(w_ptr + (o * (CG * KH * KW))[None, :] + (cl * (KH * KW) + k)[:, None],
                        mask=c_ok[:, None] & o_ok[None, :], other=0.0)
            if DOT_IEEE:
                acc += tl.dot(val, w.to(ACC), input_precision="ieee", out_dtype=ACC)
            else:  # float16/bfloat16: tensor-core operands in the input dtype, float32 accumulation
                acc += tl.dot(val.to(w.dtype), w, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(ACC)[None, :]
    out_offset = (n * syn + oh * syh + ow * syw)[:, None] + (o * syc)[None, :]
    tl.store(out_ptr + out_offset, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


def _memory_format(tensor):
    from torch._prims_common import suggest_memory_format

    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _max_offset(*tensors):
    """Largest element offset any of `tensors` can be addressed at (for the int32/int64 choice)."""
    return max(sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1 for t in tensors)


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask):
    """Arguments already checked (fastconv/ops/_checks.py)."""
    n, channels, h, w = input.shape
    out_channels, cg, kh, kw = weight.shape
    groups = channels // cg
    offset_groups = offset.shape[1] // (2 * kh * kw)
    out_h, out_w = offset.shape[2:]
    output = torch.empty((n, out_channels, out_h, out_w), dtype=input.dtype, device=input.device,
                         memory_format=_memory_format(input))
    if output.numel() == 0:
        return output
    weight = weight.contiguous()  # (C_out, C/groups, kh, kw): small
    outputs_per_group = out_channels // groups
    grid = (triton.cdiv(n * out_h * out_w, BLOCK_PIXELS), groups * triton.cdiv(outputs_per_group, BLOCK_OUT))
    modulation = mask if mask is not None else offset
    index_64 = _max_offset(input, offset, modulation, output) + BLOCK_PIXELS * BLOCK_OUT > INT32_MAX
    wide = input.dtype in (torch.float32, torch.float64)
    _forward_kernel[grid](
        input, offset, modulation, weight, bias if bias is not None else weight, output,
        n, h, w, out_h, out_w, cg, outputs_per_group, channels // offset_groups,
        *input.stride(), *offset.stride(), *modulation.stride(), *output.stride(),
        kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
        ACC=tl.float64 if input.dtype == torch.float64 else tl.float32, DOT_IEEE=wide,
        BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_CHANNELS, BLOCK_O=BLOCK_OUT, INDEX_64=index_64,
    )
    return output
