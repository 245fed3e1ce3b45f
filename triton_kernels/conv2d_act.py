"""conv2d_act in Triton: a tiled implicit GEMM with tl.dot and the bias + activation epilogue.

GEMM view (as the CUDA kernel, csrc/cuda/conv2d_act.cu): M = N * H_out * W_out output pixels (BLOCK_M),
N = C_out / groups output channels of one group (BLOCK_N), K = (C_in / groups) * kh * kw ordered (kernel row,
kernel column, channel), walked in BLOCK_K slices; the group is program axis 2. The A tile is gathered from
the input on the fly (zero padding by masks); every tensor is addressed through its strides, so one kernel
serves NCHW, channels_last and strided views, and the output takes the input's memory format. Accumulation
in float32 (float64 for float64 under the interpreter); float32 inputs multiply in IEEE float32, not TF32, to
match F.conv2d's default on the CPU and the tolerance table.

Backward: grad_preact = grad_output * activation'(...) in one Triton pass, then ATen's convolution_backward
(cuDNN), the same split as the C++ ops (csrc/conv2d_act.h).
"""
import torch
import triton
import triton.language as tl
from torch._prims_common import make_channels_last_strides_for, make_contiguous_strides_for

from fastconv.triton_kernels._common import ACTIVATION_CODES, INTERPRET, activate, activation_derivative

# Under the interpreter each program is slow Python: few, large tiles. On a GPU, tensor-core-sized tiles.
BLOCK_M = 256 if INTERPRET else 64
BLOCK_N = 32 if INTERPRET else 64
BLOCK_K = 32
ELEMENTWISE_BLOCK = 1 << 14 if INTERPRET else 1024
INT32_MAX = 2**31 - 1


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, pass_ptr, pass_out_ptr,
    N, C_PER_GROUP, H, W, OC_PER_GROUP, OH, OW, K,
    sxn, sxc, sxh, sxw, swo, swc, swh, sww, son, soc, soh, sow, spn, spc, sph, spw,
    KW, SH, SW, PT, PL, DH, DW,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, HAS_PASS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INDEX_64: tl.constexpr,
):
    """out = act(conv(x) + b). With HAS_PASS (shuffle_cat_conv2d_act), also pass_out = pass for the same tile:
    out and pass_out are the odd and even channels of one interleaved tensor (same strides)."""
    p = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    oc_in_group = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    group = tl.program_id(2)
    if INDEX_64:
        p = p.to(tl.int64)
        oc_in_group = oc_in_group.to(tl.int64)
        group = group.to(tl.int64)
    p_mask = p < N * OH * OW
    n_mask = oc_in_group < OC_PER_GROUP
    ow = p % OW
    rest = p // OW
    oh = rest % OH
    n = rest // OH
    oc = group * OC_PER_GROUP + oc_in_group
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    x_base = n * sxn + group * C_PER_GROUP * sxc
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k_start in range(0, K, BLOCK_K):
        k = k_start + tl.arange(0, BLOCK_K)
        k_mask = k < K
        tap = k // C_PER_GROUP
        c = k % C_PER_GROUP
        i = tap // KW
        j = tap % KW
        ih = ih0[:, None] + (i * DH)[None, :]
        iw = iw0[:, None] + (j * DW)[None, :]
        a_mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + x_base[:, None] + (c * sxc)[None, :] + ih * sxh + iw * sxw, mask=a_mask, other=0.0)
        b = tl.load(w_ptr + (c * swc + i * swh + j * sww)[:, None] + (oc * swo)[None, :],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc, mask=n_mask, other=0.0).to(ACC)[None, :]
    acc = activate(acc, ACT)
    out_offset = (n * son + oh * soh + ow * sow)[:, None] + (oc * soc)[None, :]
    out_mask = p_mask[:, None] & n_mask[None, :]
    tl.store(out_ptr + out_offset, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    if HAS_PASS:
        pass_offset = (n * spn + oh * sph + ow * spw)[:, None] + (oc * spc)[None, :]
        tl.store(pass_out_ptr + out_offset, tl.load(pass_ptr + pass_offset, mask=out_mask), mask=out_mask)


@triton.jit
def _preactivation_grad_kernel(g_ptr, v_ptr, out_ptr, total, ACT: tl.constexpr, BLOCK: tl.constexpr,
                               INDEX_64: tl.constexpr):
    """out = g * activation'(v) over dense tensors with equal strides; float32 math, stored in out's dtype."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if INDEX_64:
        offsets = offsets.to(tl.int64)
    mask = offsets < total
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (g * activation_derivative(v, ACT)).to(out_ptr.dtype.element_ty), mask=mask)


def _memory_format(tensor):
    from torch._prims_common import suggest_memory_format

    return torch.channels_last if suggest_memory_format(tensor) == torch.channels_last else torch.contiguous_format


def _with_layout(tensor, memory_format):
    """`tensor` with exactly the strides of torch.empty(..., memory_format=memory_format) (what the fake kernels
    return); ATen's convolution_backward may pick others (it follows the weight's layout too)."""
    strides = (make_channels_last_strides_for(tensor.shape) if memory_format == torch.channels_last
               else make_contiguous_strides_for(tensor.shape))
    if tensor.stride() == tuple(strides):
        return tensor
    return torch.empty_strided(tensor.shape, strides, dtype=tensor.dtype, device=tensor.device).copy_(tensor)


def _needs_int64(*tensors):
    largest = max(sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride())) + 1 for t in tensors)
    return largest + BLOCK_M * BLOCK_N > INT32_MAX


def _output_size(input, weight, stride, padding, dilation):
    n, _, h, w = input.shape
    oc, _, kh, kw = weight.shape
    out_h = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return n, oc, out_h, out_w


def _launch_forward(input, weight, bias, stride, padding, dilation, groups, activation, output, passthrough=None):
    """output = act(conv(input) + bias), written through output's strides (any view); with passthrough =
    (source, destination), also destination = source, tile by tile (destination has output's strides)."""
    n, c_per_group, kh, kw = input.shape[0], weight.shape[1], weight.shape[2], weight.shape[3]
    _, oc, out_h, out_w = output.shape
    oc_per_group = oc // groups
    source, destination = passthrough if passthrough is not None else (output, output)
    grid = (triton.cdiv(n * out_h * out_w, BLOCK_M), triton.cdiv(oc_per_group, BLOCK_N), groups)
    _forward_kernel[grid](
        input, weight, bias if bias is not None else weight, output, source, destination,
        n, c_per_group, input.shape[2], input.shape[3], oc_per_group, out_h, out_w, c_per_group * kh * kw,
        *input.stride(), *weight.stride(), *output.stride(), *source.stride(),
        kw, stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
        HAS_BIAS=bias is not None, ACT=ACTIVATION_CODES[activation],
        ACC=tl.float64 if input.dtype == torch.float64 else tl.float32,
        PRECISION="ieee" if input.dtype in (torch.float32, torch.float64) else "tf32", HAS_PASS=passthrough is not None,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, INDEX_64=_needs_int64(input, weight, output, source),
    )


def conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation, out_dtype=None):
    """Arguments already checked and resolved (padding = (top, bottom, left, right))."""
    output = torch.empty(_output_size(input, weight, stride, padding, dilation), dtype=out_dtype or input.dtype,
                         device=input.device, memory_format=_memory_format(input))
    if output.numel() > 0:
        _launch_forward(input, weight, bias, stride, padding, dilation, groups, activation, output)
    return output


def shuffle_cat_conv2d_act(a, input, weight, bias, stride, padding, dilation, groups, activation, memory_format):
    """shuffle_cat(a, conv2d_act(input, ...)) in one kernel: each program writes its tile of the convolution into
    the odd channels of the interleaved output and copies the same tile of `a` into the even ones. Arguments
    already checked; memory_format is shuffle_cat's rule on `a`."""
    n, oc, out_h, out_w = a.shape
    output = torch.empty((n, 2 * oc, out_h, out_w), dtype=a.dtype, device=a.device, memory_format=memory_format)
    if output.numel() > 0:
        _launch_forward(input, weight, bias, stride, padding, dilation, groups, activation, output[:, 1::2],
                        passthrough=(a, output[:, 0::2]))
    return output


def _preactivation_grad(grad_output, input, weight, bias, output, stride, padding, dilation, groups, activation,
                        layout, compute):
    """grad_output * activation'(...) in `compute` dtype (convolution_backward's), dense in `layout`."""
    grad = _with_layout(grad_output.contiguous(memory_format=layout), layout)
    if activation is None:
        return grad.to(compute)
    if activation in ("hardswish", "silu"):
        # Recompute the pre-activation (see fastconv/ops/conv2d_act.py) unrounded, in float32: hardswish' jumps
        # by 0.5 at +-3, and one rounded to float16/bfloat16 can land on the wrong side of the jump
        # (tests/ops/test_conv2d_act.py::test_hardswish_backward_uses_the_unrounded_preactivation).
        value = conv2d_act(input, weight, bias, stride, padding, dilation, groups, None,
                           out_dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32)
    else:
        value = output
    value = _with_layout(value.contiguous(memory_format=layout), layout)
    result = torch.empty_like(grad, dtype=compute)
    total = result.numel()
    _preactivation_grad_kernel[(triton.cdiv(total, ELEMENTWISE_BLOCK),)](
        grad, value, result, total, ACT=ACTIVATION_CODES[activation], BLOCK=ELEMENTWISE_BLOCK,
        INDEX_64=total + ELEMENTWISE_BLOCK > INT32_MAX,
    )
    return result


def conv2d_act_backward(grad_output, input, weight, bias, output, input_size, stride, padding, dilation, groups,
                        activation, output_mask):
    """(grad_input, grad_weight, grad_bias), None where output_mask is False. Arguments already checked."""
    layout = _memory_format(input if input is not None else grad_output)
    oc = weight.shape[0]
    if grad_output.numel() == 0:
        return (torch.empty(input_size, dtype=weight.dtype, device=weight.device, memory_format=layout)
                if output_mask[0] else None,
                torch.zeros_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None,
                weight.new_zeros((oc,)) if output_mask[2] else None)
    # float16/bfloat16 on CPU tensors (the interpreter): ATen's CPU convolution backward rounds partial sums to
    # the reduced type, so it runs in float32 there (as csrc/cpu/conv2d_act.cpp); cuDNN accumulates in float.
    dtype = weight.dtype
    compute = torch.float32 if weight.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16) else dtype
    grad_pre = _preactivation_grad(grad_output, input, weight, bias, output, stride, padding, dilation, groups,
                                   activation, layout, compute)
    # convolution_backward reads the input only for grad_weight; otherwise its shape and layout suffice.
    x = input.to(compute) if input is not None else torch.empty(input_size, dtype=compute, device=weight.device,
                                                                memory_format=layout)
    top, bottom, left, right = padding
    symmetric = top == bottom and left == right
    if not symmetric:
        x = torch.nn.functional.pad(x, (left, right, top, bottom))
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_pre, x, weight.to(compute).contiguous(memory_format=layout), [oc], list(stride),
        [top, left] if symmetric else [0, 0], list(dilation), False, [0, 0], groups, list(output_mask),
    )
    if grad_input is not None:
        if not symmetric:
            grad_input = grad_input[:, :, top:top + input_size[2], left:left + input_size[3]]
        grad_input = _with_layout(grad_input.to(dtype), layout)
    if grad_weight is not None:
        grad_weight = _with_layout(grad_weight.to(dtype), torch.contiguous_format)
    if grad_bias is not None:
        grad_bias = grad_bias.to(dtype)
    return grad_input, grad_weight, grad_bias
