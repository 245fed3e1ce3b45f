"""deform_conv2d in Triton: forward and backward as implicit GEMMs on bilinear samples (tl.dot), no column buffer.

Notation: the columns are col[(c, k), (n, p)] = mask[n, g(c), k, p] * bilinear(input[n, c], y, x), one row per
(input channel c, tap k), one column per output pixel of the batch; y, x are the tap's position plus the
offset of c's offset group g(c) (csrc/deform_conv2d.h has the full formula). The forward is out = W @ col per
weight group. No program ever holds more than its own tile of col: every kernel samples its tile straight from
the input, in float32 (float64 for float64), and multiplies it with tl.dot, accumulating in float32.

Forward: one program computes a (BLOCK_P output pixels) x (BLOCK_O output channels of one weight group) tile,
walking the reduction tap by tap and BLOCK_C input channels at a time.

Backward (five gradients, each only when asked for):
  grad_weight[o, c, k] = sum over (n, p) of grad_out[n, o, p] * col[(c, k), (n, p)]: one program owns a
    (BLOCK_O output channels) x (BLOCK_C channels of one tap) tile of grad_weight and walks every output pixel
    of the batch in a fixed order, recomputing its (pixels x channels) tile of col and accumulating
    grad_out^T @ col with tl.dot: deterministic, stored once in the weight's dtype.
  grad_columns = W^T @ grad_out, formed per tile and consumed at once: one program owns BLOCK_P output pixels
    of one (tap, offset group) and loops over the channels of that offset group (BLOCK_C at a time, tl.dot
    over the output channels of each channel's weight group). For each tile it
      - scatters grad_columns * mask * the interpolation weights into the four bilinear corners of
        grad_input with tl.atomic_add (float32 accumulator; not deterministic: under
        torch.use_deterministic_algorithms(True) the op raises, see fastconv/ops/deform_conv2d.py),
      - sums over its channels grad_columns * the derivatives of the bilinear sample by y and x (torchvision's
        get_coordinate_weight: corner validity only, no range test) for grad_offset, and grad_columns * the
        unmodulated sample for grad_mask; the sums stay in the program (it owns every channel of its offset
        group), so grad_offset and grad_mask are deterministic and written once.
  grad_bias: grad_out summed over (N, H, W) in float32 (ATen's reduction, as the C++ ops).
Every tensor is addressed through its strides (NCHW, channels_last, views); outputs take their input's
memory format (the C++ op's rule: grad_input the input's, grad_offset the offset's, grad_mask the mask's).
float16/bfloat16 feed tl.dot in the input dtype (tensor cores) with float32 accumulation; float32 and float64
use IEEE products (float64 only runs under the interpreter, for gradcheck).
Workspace: none beyond the gradients, except grad_input's float32 accumulator for float16/bfloat16 inputs.
scripts/triton_sm90_check.py compiles these kernels for sm_90 without a GPU and reports their register use.
"""
import torch
import triton
import triton.language as tl

from fastconv.triton_kernels._common import INTERPRET

# Under the interpreter each program is slow Python: few, large tiles. tl.dot needs every side >= 16.
BLOCK_PIXELS = 256 if INTERPRET else 64
BLOCK_CHANNELS = 32
BLOCK_OUT = 32 if INTERPRET else 64
# The backward kernels on a GPU (not yet timed on one): 8 warps and 16-channel tiles. Compiled for sm_90 with
# triton.compile and read back with cuobjdump, 4 warps and 32 channels spill 2.4-3.2 KB of stack per thread in
# the columns kernel (its four corner pointer tiles, loads and atomics) and up to 1.9 KB in the weight kernel;
# this choice: float16 none (8 B), float32 128-280 B. 16 channels also doubles the weight kernel's programs
# (few for C = 128: one per output tile).
BACKWARD_WARPS = 8
BACKWARD_BLOCK_CHANNELS = BLOCK_CHANNELS if INTERPRET else 16
INT32_MAX = 2**31 - 1


@triton.jit
def _bilinear_corners(y, x, H, W):
    """The bilinear point (y, x) of an H x W plane (any shape of y, x): the forward's (-1, H) x (-1, W) range
    test, the low corner, the fractional parts and each corner's validity (inside the image)."""
    inside = (y > -1.0) & (y < H) & (x > -1.0) & (x < W)
    # Clamped before the integer conversion; beyond [-2, H + 1] every corner is outside anyway.
    y0f = tl.floor(tl.minimum(tl.maximum(y, -2.0), H + 1.0))
    x0f = tl.floor(tl.minimum(tl.maximum(x, -2.0), W + 1.0))
    ly = y - y0f
    lx = x - x0f
    y0 = y0f.to(tl.int32)
    x0 = x0f.to(tl.int32)
    vy0 = (y0 >= 0) & (y0 < H)
    vy1 = (y0 + 1 >= 0) & (y0 + 1 < H)
    vx0 = (x0 >= 0) & (x0 < W)
    vx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
    return inside, y0, x0, ly, lx, vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1


@triton.jit
def _corner(plane, y, x, sh, sw, ok, ACC: tl.constexpr):
    """plane[y, x] where `ok`, else 0, in ACC."""
    return tl.load(plane + tl.where(ok, y * sh + x * sw, 0), mask=ok, other=0.0).to(ACC)


@triton.jit
def _sample_tile(
    x_ptr, off_ptr, mask_ptr, n, oh, ow, c, k, ok,
    H, W, sxn, sxc, sxh, sxw, son_, soc_, soh_, sow_, smn, smc, smh, smw, CPOG,
    KH: tl.constexpr, KW: tl.constexpr, SH, SW, PH, PW, DH, DW,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, INDEX_64: tl.constexpr,
):
    """The (pixels x channels) tile of col for tap k: pixels (n, oh, ow) as [P] vectors, channels c as a [C]
    vector (each picks its offset group's offsets and mask), `ok` the [P, C] validity. Zero where not ok."""
    i = k // KW
    j = k % KW
    g = c // CPOG
    base_y = (oh * SH - PH + i * DH).to(ACC)
    base_x = (ow * SW - PW + j * DW).to(ACC)
    at_pixel = (n * son_ + oh * soh_ + ow * sow_)[:, None]
    dy = tl.load(off_ptr + at_pixel + ((g * 2 * KH * KW + 2 * k) * soc_)[None, :], mask=ok, other=0.0)
    dx = tl.load(off_ptr + at_pixel + ((g * 2 * KH * KW + 2 * k + 1) * soc_)[None, :], mask=ok, other=0.0)
    inside, y0, x0, ly, lx, m00, m01, m10, m11 = _bilinear_corners(base_y[:, None] + dy.to(ACC),
                                                                   base_x[:, None] + dx.to(ACC), H, W)
    if INDEX_64:
        y0 = y0.to(tl.int64)
        x0 = x0.to(tl.int64)
    inside = inside & ok
    plane = x_ptr + (n * sxn)[:, None] + (c * sxc)[None, :]
    v00 = _corner(plane, y0, x0, sxh, sxw, inside & m00, ACC)
    v01 = _corner(plane, y0, x0 + 1, sxh, sxw, inside & m01, ACC)
    v10 = _corner(plane, y0 + 1, x0, sxh, sxw, inside & m10, ACC)
    v11 = _corner(plane, y0 + 1, x0 + 1, sxh, sxw, inside & m11, ACC)
    val = (1.0 - ly) * (1.0 - lx) * v00 + (1.0 - ly) * lx * v01 + ly * (1.0 - lx) * v10 + ly * lx * v11
    if HAS_MASK:
        modulation = tl.load(mask_ptr + (n * smn + oh * smh + ow * smw)[:, None]
                             + ((g * KH * KW + k) * smc)[None, :], mask=ok, other=0.0)
        val = val * modulation.to(ACC)
    return val


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
        for c0 in range(0, CG, BLOCK_C):
            cl = c0 + cl_base
            c_ok = cl < CG
            val = _sample_tile(x_ptr, off_ptr, mask_ptr, n, oh, ow, group * CG + cl, k, p_ok[:, None] & c_ok[None, :],
                               H, W, sxn, sxc, sxh, sxw, son_, soc_, soh_, sow_, smn, smc, smh, smw, CPOG,
                               KH, KW, SH, SW, PH, PW, DH, DW, HAS_MASK, ACC, INDEX_64)
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


@triton.jit
def _grad_weight_kernel(
    go_ptr, x_ptr, off_ptr, mask_ptr, gw_ptr,
    N, H, W, OH, OW, CG, OG_OUT, CPOG,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, son_, soc_, soh_, sow_, smn, smc, smh, smw,
    KH: tl.constexpr, KW: tl.constexpr, SH, SW, PH, PW, DH, DW,
    HAS_MASK: tl.constexpr, ACC: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, INDEX_64: tl.constexpr,
):
    """grid (groups * cdiv(C_out/groups, BLOCK_O), kh*kw * cdiv(C/groups, BLOCK_C)): one program owns
    grad_weight[o tile, c tile, k] and reduces over every output pixel of the batch in order."""
    pid_o = tl.program_id(0)
    out_blocks = tl.cdiv(OG_OUT, BLOCK_O)
    group = pid_o // out_blocks
    channel_blocks = tl.cdiv(CG, BLOCK_C)
    k = tl.program_id(1) // channel_blocks
    ol = (pid_o % out_blocks) * BLOCK_O + tl.arange(0, BLOCK_O)
    cl = (tl.program_id(1) % channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_base = tl.arange(0, BLOCK_P)
    if INDEX_64:
        ol = ol.to(tl.int64)
        cl = cl.to(tl.int64)
        p_base = p_base.to(tl.int64)
    o_ok = ol < OG_OUT
    c_ok = cl < CG
    o = group * OG_OUT + ol
    c = group * CG + cl
    acc = tl.zeros([BLOCK_O, BLOCK_C], dtype=ACC)
    for p0 in range(0, N * OH * OW, BLOCK_P):
        p = p0 + p_base
        p_ok = p < N * OH * OW
        ow = p % OW
        oh = (p // OW) % OH
        n = p // (OW * OH)
        val = _sample_tile(x_ptr, off_ptr, mask_ptr, n, oh, ow, c, k, p_ok[:, None] & c_ok[None, :],
                           H, W, sxn, sxc, sxh, sxw, son_, soc_, soh_, sow_, smn, smc, smh, smw, CPOG,
                           KH, KW, SH, SW, PH, PW, DH, DW, HAS_MASK, ACC, INDEX_64)
        # grad_out as an (outputs x pixels) tile.
        go = tl.load(go_ptr + (o * sgc)[:, None] + (n * sgn + oh * sgh + ow * sgw)[None, :],
                     mask=o_ok[:, None] & p_ok[None, :], other=0.0)
        if DOT_IEEE:
            acc += tl.dot(go.to(ACC), val, input_precision="ieee", out_dtype=ACC)
        else:  # float16/bfloat16: tensor-core operands in the input dtype, float32 accumulation
            acc += tl.dot(go, val.to(go.dtype), out_dtype=ACC)
    # A contiguous (C_out, C/groups, kh, kw) grad_weight.
    gw_offset = (o * (CG * KH * KW))[:, None] + (cl * (KH * KW) + k)[None, :]
    tl.store(gw_ptr + gw_offset, acc.to(gw_ptr.dtype.element_ty), mask=o_ok[:, None] & c_ok[None, :])


@triton.jit
def _columns_grad_kernel(
    go_ptr, w_ptr, x_ptr, off_ptr, mask_ptr, gi_ptr, goff_ptr, gm_ptr,
    N, C, H, W, OH, OW, CG, OG_OUT, CPOG,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, son_, soc_, soh_, sow_, smn, smc, smh, smw,
    sgin, sgic, sgih, sgiw, sgon, sgoc, sgoh, sgow, sgmn, sgmc, sgmh, sgmw,
    KH: tl.constexpr, KW: tl.constexpr, SH, SW, PH, PW, DH, DW,
    HAS_MASK: tl.constexpr, WANT_INPUT: tl.constexpr, WANT_OFFSET: tl.constexpr, WANT_MASK: tl.constexpr,
    ACC: tl.constexpr, DOT_IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, INDEX_64: tl.constexpr,
):
    """grid (cdiv(N*H_out*W_out, BLOCK_P), kh*kw, offset_groups): grad_columns for BLOCK_P pixels of one
    (tap, offset group), every channel of the group, consumed at once (grad_input, grad_offset, grad_mask)."""
    k = tl.program_id(1)
    og = tl.program_id(2)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c_base = tl.arange(0, BLOCK_C)
    o_base = tl.arange(0, BLOCK_O)
    if INDEX_64:
        p = p.to(tl.int64)
        c_base = c_base.to(tl.int64)
        o_base = o_base.to(tl.int64)
    p_ok = p < N * OH * OW
    ow = p % OW
    oh = (p // OW) % OH
    n = p // (OW * OH)
    i = k // KW
    j = k % KW
    # One sampling point per pixel: every channel of the offset group shares it.
    at_offset = n * son_ + oh * soh_ + ow * sow_
    dy = tl.load(off_ptr + at_offset + (og * 2 * KH * KW + 2 * k) * soc_, mask=p_ok, other=0.0).to(ACC)
    dx = tl.load(off_ptr + at_offset + (og * 2 * KH * KW + 2 * k + 1) * soc_, mask=p_ok, other=0.0).to(ACC)
    inside, y0, x0, ly, lx, ok00, ok01, ok10, ok11 = _bilinear_corners(
        (oh * SH - PH + i * DH).to(ACC) + dy, (ow * SW - PW + j * DW).to(ACC) + dx, H, W)
    if INDEX_64:
        y0 = y0.to(tl.int64)
        x0 = x0.to(tl.int64)
    ok00 = ok00 & p_ok
    ok01 = ok01 & p_ok
    ok10 = ok10 & p_ok
    ok11 = ok11 & p_ok
    inside = inside & p_ok
    if HAS_MASK:
        modulation = tl.load(mask_ptr + n * smn + oh * smh + ow * smw + (og * KH * KW + k) * smc,
                             mask=p_ok, other=0.0).to(ACC)
    else:
        modulation = tl.full([BLOCK_P], 1.0, ACC)
    # Interpolation weights (zero outside the forward's range or for a corner outside the image).
    w00 = tl.where(inside & ok00, (1.0 - ly) * (1.0 - lx), 0.0)
    w01 = tl.where(inside & ok01, (1.0 - ly) * lx, 0.0)
    w10 = tl.where(inside & ok10, ly * (1.0 - lx), 0.0)
    w11 = tl.where(inside & ok11, ly * lx, 0.0)
    # Per-pixel sums over the group's channels, one channel tile after the other (a fixed order).
    grad_y = tl.zeros([BLOCK_P], dtype=ACC)
    grad_x = tl.zeros([BLOCK_P], dtype=ACC)
    grad_m = tl.zeros([BLOCK_P], dtype=ACC)
    c_begin = og * CPOG
    c_end = c_begin + CPOG
    # The offset group's channels, weight group by weight group (each channel tile lies in one weight group).
    for group in range(c_begin // CG, (c_end - 1) // CG + 1):
        group_end = tl.minimum(c_end, (group + 1) * CG)
        for c0 in range(tl.maximum(c_begin, group * CG), group_end, BLOCK_C):
            c = c0 + c_base
            c_ok = c < group_end
            cl = c - group * CG
            # grad_columns[(c, k), p] = sum over the group's outputs o of weight[o, cl, k] * grad_out[n, o, p].
            grad_col = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
            for o0 in range(0, OG_OUT, BLOCK_O):
                ol = o0 + o_base
                o_ok = ol < OG_OUT
                o = group * OG_OUT + ol
                go = tl.load(go_ptr + (n * sgn + oh * sgh + ow * sgw)[:, None] + (o * sgc)[None, :],
                             mask=p_ok[:, None] & o_ok[None, :], other=0.0)
                w = tl.load(w_ptr + (o * (CG * KH * KW))[:, None] + (cl * (KH * KW) + k)[None, :],
                            mask=o_ok[:, None] & c_ok[None, :], other=0.0)
                if DOT_IEEE:
                    grad_col += tl.dot(go.to(ACC), w.to(ACC), input_precision="ieee", out_dtype=ACC)
                else:  # float16/bfloat16: tensor-core operands in the input dtype, float32 accumulation
                    grad_col += tl.dot(go, w, out_dtype=ACC)
            pc_ok = p_ok[:, None] & c_ok[None, :]
            if WANT_INPUT:
                # Scatter through the interpolation weights times the mask (float32 atomics: several pixels,
                # taps and programs reach the same input element).
                grad_sample = grad_col * modulation[:, None]
                gi_plane = gi_ptr + (n * sgin)[:, None] + (c * sgic)[None, :]
                m00 = pc_ok & (inside & ok00)[:, None]
                m01 = pc_ok & (inside & ok01)[:, None]
                m10 = pc_ok & (inside & ok10)[:, None]
                m11 = pc_ok & (inside & ok11)[:, None]
                tl.atomic_add(gi_plane + tl.where(m00, (y0 * sgih + x0 * sgiw)[:, None], 0),
                              grad_sample * w00[:, None], mask=m00, sem="relaxed")
                tl.atomic_add(gi_plane + tl.where(m01, (y0 * sgih + (x0 + 1) * sgiw)[:, None], 0),
                              grad_sample * w01[:, None], mask=m01, sem="relaxed")
                tl.atomic_add(gi_plane + tl.where(m10, ((y0 + 1) * sgih + x0 * sgiw)[:, None], 0),
                              grad_sample * w10[:, None], mask=m10, sem="relaxed")
                tl.atomic_add(gi_plane + tl.where(m11, ((y0 + 1) * sgih + (x0 + 1) * sgiw)[:, None], 0),
                              grad_sample * w11[:, None], mask=m11, sem="relaxed")
            if WANT_OFFSET or WANT_MASK:
                # The four corners, each zero outside the image (no range test: get_coordinate_weight).
                plane = x_ptr + (n * sxn)[:, None] + (c * sxc)[None, :]
                v00 = _corner(plane, y0[:, None], x0[:, None], sxh, sxw, pc_ok & ok00[:, None], ACC)
                v01 = _corner(plane, y0[:, None], x0[:, None] + 1, sxh, sxw, pc_ok & ok01[:, None], ACC)
                v10 = _corner(plane, y0[:, None] + 1, x0[:, None], sxh, sxw, pc_ok & ok10[:, None], ACC)
                v11 = _corner(plane, y0[:, None] + 1, x0[:, None] + 1, sxh, sxw, pc_ok & ok11[:, None], ACC)
                if WANT_OFFSET:
                    lyc = ly[:, None]
                    lxc = lx[:, None]
                    grad_y += tl.sum(grad_col * (lxc * (v11 - v01) + (1.0 - lxc) * (v10 - v00)), axis=1)
                    grad_x += tl.sum(grad_col * (lyc * (v11 - v10) + (1.0 - lyc) * (v01 - v00)), axis=1)
                if WANT_MASK:
                    # d out / d mask: the unmodulated sample (zero outside the forward's range).
                    grad_m += tl.sum(grad_col * (w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10
                                                 + w11[:, None] * v11), axis=1)
    if WANT_OFFSET:
        at_grad = goff_ptr + n * sgon + oh * sgoh + ow * sgow + (og * 2 * KH * KW + 2 * k) * sgoc
        tl.store(at_grad, (grad_y * modulation).to(goff_ptr.dtype.element_ty), mask=p_ok)
        tl.store(at_grad + sgoc, (grad_x * modulation).to(goff_ptr.dtype.element_ty), mask=p_ok)
    if WANT_MASK:
        at_grad = gm_ptr + n * sgmn + oh * sgmh + ow * sgmw + (og * KH * KW + k) * sgmc
        tl.store(at_grad, grad_m.to(gm_ptr.dtype.element_ty), mask=p_ok)


def _memory_format(tensor):
    from torch._prims_common import suggest_memory_format

    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _max_offset(*tensors):
    """Largest element offset any of `tensors` can be addressed at (for the int32/int64 choice)."""
    return max(sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1 for t in tensors)


def _accumulator(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _geometry(input, offset, weight):
    n, channels, h, w = input.shape
    out_channels, cg, kh, kw = weight.shape
    groups = channels // cg
    offset_groups = offset.shape[1] // (2 * kh * kw)
    return n, channels, h, w, out_channels, cg, kh, kw, groups, offset_groups


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask):
    """Arguments already checked (fastconv/ops/_checks.py)."""
    n, channels, h, w, out_channels, cg, kh, kw, groups, offset_groups = _geometry(input, offset, weight)
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
    _forward_kernel[grid](
        input, offset, modulation, weight, bias if bias is not None else weight, output,
        n, h, w, out_h, out_w, cg, outputs_per_group, channels // offset_groups,
        *input.stride(), *offset.stride(), *modulation.stride(), *output.stride(),
        kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        HAS_MASK=mask is not None, HAS_BIAS=bias is not None, ACC=_accumulator(input.dtype),
        DOT_IEEE=input.dtype in (torch.float32, torch.float64),
        BLOCK_P=BLOCK_PIXELS, BLOCK_C=BLOCK_CHANNELS, BLOCK_O=BLOCK_OUT, INDEX_64=index_64,
    )
    return output


def deform_conv2d_backward(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask):
    """(grad_input, grad_offset, grad_mask, grad_weight, grad_bias), None where output_mask says so (grad_mask
    also without a mask); the C++ op's semantics and layouts. Arguments already checked."""
    n, channels, h, w, out_channels, cg, kh, kw, groups, offset_groups = _geometry(input, offset, weight)
    out_h, out_w = offset.shape[2:]
    want_input, want_offset, want_weight, want_bias = output_mask[0], output_mask[1], output_mask[3], output_mask[4]
    want_mask = output_mask[2] and mask is not None
    # float32 accumulation (float64 for float64): grad_input is a scatter, summed in a float32 buffer in the
    # input's layout (the gradient itself for float32 inputs); every other gradient is written once.
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    grad_input_acc = (torch.zeros_like(input, dtype=acc_dtype, memory_format=_memory_format(input))
                      if want_input else None)
    grad_offset = torch.empty_like(offset, memory_format=_memory_format(offset)) if want_offset else None
    grad_mask = torch.empty_like(mask, memory_format=_memory_format(mask)) if want_mask else None
    grad_weight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if want_weight else None
    grad_bias = grad_output.sum((0, 2, 3), dtype=acc_dtype).to(grad_output.dtype) if want_bias else None
    if grad_output.numel() == 0:
        for grad in (grad_offset, grad_mask, grad_weight):
            if grad is not None:
                grad.zero_()
    else:
        weight_c = weight.contiguous()  # (C_out, C/groups, kh, kw): small
        outputs_per_group = out_channels // groups
        pixels = n * out_h * out_w
        modulation = mask if mask is not None else offset
        written = [t for t in (grad_input_acc, grad_offset, grad_mask) if t is not None]
        index_64 = (_max_offset(grad_output, input, offset, modulation, *written) + BLOCK_PIXELS * BLOCK_OUT
                    > INT32_MAX)
        geometry = (n, h, w, out_h, out_w, cg, outputs_per_group, channels // offset_groups)
        conv = (kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
        strides = (*grad_output.stride(), *input.stride(), *offset.stride(), *modulation.stride())
        options = dict(HAS_MASK=mask is not None, ACC=_accumulator(input.dtype),
                       DOT_IEEE=input.dtype in (torch.float32, torch.float64),
                       BLOCK_P=BLOCK_PIXELS, BLOCK_C=BACKWARD_BLOCK_CHANNELS, BLOCK_O=BLOCK_OUT, INDEX_64=index_64,
                       num_warps=BACKWARD_WARPS)
        if want_weight:
            grid = (groups * triton.cdiv(outputs_per_group, BLOCK_OUT),
                    kh * kw * triton.cdiv(cg, BACKWARD_BLOCK_CHANNELS))
            _grad_weight_kernel[grid](grad_output, input, offset, modulation, grad_weight, *geometry, *strides,
                                      *conv, **options)
        if want_input or want_offset or want_mask:
            def target(grad):  # an unwanted gradient's pointer is never written (its WANT_* flag is off)
                return (grad, *grad.stride()) if grad is not None else (grad_output, 0, 0, 0, 0)

            gi, *gi_strides = target(grad_input_acc)
            goff, *goff_strides = target(grad_offset)
            gm, *gm_strides = target(grad_mask)
            grid = (triton.cdiv(pixels, BLOCK_PIXELS), kh * kw, offset_groups)
            _columns_grad_kernel[grid](
                grad_output, weight_c, input, offset, modulation, gi, goff, gm,
                n, channels, h, w, out_h, out_w, cg, outputs_per_group, channels // offset_groups,
                *strides, *gi_strides, *goff_strides, *gm_strides, *conv,
                WANT_INPUT=want_input, WANT_OFFSET=want_offset, WANT_MASK=want_mask, **options)
    grad_input = None
    if want_input:
        grad_input = grad_input_acc if grad_input_acc.dtype == input.dtype else grad_input_acc.to(input.dtype)
    return grad_input, grad_offset, grad_mask, grad_weight, grad_bias
