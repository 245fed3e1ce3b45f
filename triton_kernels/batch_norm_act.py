"""batch_norm_act in Triton: statistics kernel + merge + apply kernel; backward reduce + apply.

A dense input is an [outer, C, inner] array (see csrc/batch_norm_act.h). Channel c's j-th element
(j < outer * inner) is at (j // inner) * C * inner + c * inner + j % inner. The reductions work on
[BLOCK_M, BLOCK_C] tiles (elements x channels): channels_last tiles are contiguous along C, NCHW tiles
(BLOCK_C = 1) along the plane. Each program reduces a contiguous range of j for its channels into per-split
partials (count, mean, M2) with Chan's merge, and a second kernel merges the splits in a fixed order, so
the statistics are deterministic and never use E[x^2] - E[x]^2.
"""
import torch
import triton
import triton.language as tl

from fastconv.triton_kernels._common import (
    ACTIVATION_CODES, ELEMENTWISE_BLOCK, INTERPRET, activate, activation_derivative, dense_like,
)

REDUCE_TILE = 1 << 14 if INTERPRET else 4096  # elements of one reduction tile


@triton.jit
def _tile_offsets(j, c, inner, channels):
    # j: [BLOCK_M, 1] element index within a channel; c: [1, BLOCK_C] channel.
    return (j // inner) * channels * inner + c * inner + j % inner


@triton.jit
def _stats_partial_kernel(
    x_ptr, count_ptr, mean_ptr, m2_ptr, per_channel, inner, channels, per_split,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    c_mask = c < channels
    count = tl.zeros([BLOCK_C], dtype=ACC)
    mean = tl.zeros([BLOCK_C], dtype=ACC)
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    start = split.to(tl.int64) * per_split
    end = tl.minimum(start + per_split, per_channel)
    for j0 in range(start, end, BLOCK_M):
        j = j0 + tl.arange(0, BLOCK_M)[:, None].to(tl.int64)
        mask = (j < end) & c_mask
        x = tl.load(x_ptr + _tile_offsets(j, c, inner, channels), mask=mask, other=0.0).to(ACC)
        block_count = tl.minimum(end - j0, BLOCK_M).to(ACC)
        guess = tl.sum(x, axis=0) / block_count
        deviation = tl.where(mask, x - guess[None, :], 0.0)
        # corrected two-pass: exact whatever the rounding of the guess
        sum_d = tl.sum(deviation, axis=0)
        block_mean = guess + sum_d / block_count
        block_m2 = tl.sum(deviation * deviation, axis=0) - sum_d * sum_d / block_count
        total = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / total)
        m2 += block_m2 + delta * delta * (count * block_count / total)
        count = total
    out = split * channels + c.reshape([BLOCK_C])
    store_mask = c_mask.reshape([BLOCK_C])
    tl.store(count_ptr + out, count, mask=store_mask)
    tl.store(mean_ptr + out, mean, mask=store_mask)
    tl.store(m2_ptr + out, m2, mask=store_mask)


@triton.jit
def _stats_merge_kernel(count_ptr, mean_ptr, m2_ptr, mean_out, var_out, channels, splits,
                        BLOCK: tl.constexpr, ACC: tl.constexpr):
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = c < channels
    count = tl.zeros([BLOCK], dtype=ACC)
    mean = tl.zeros([BLOCK], dtype=ACC)
    m2 = tl.zeros([BLOCK], dtype=ACC)
    for s in range(0, splits):
        count_b = tl.load(count_ptr + s * channels + c, mask=mask, other=0.0)
        mean_b = tl.load(mean_ptr + s * channels + c, mask=mask, other=0.0)
        m2_b = tl.load(m2_ptr + s * channels + c, mask=mask, other=0.0)
        total = count + count_b
        safe_total = tl.where(total > 0, total, 1.0)
        delta = mean_b - mean
        mean += delta * (count_b / safe_total)
        m2 += m2_b + delta * delta * (count * count_b / safe_total)
        count = total
    tl.store(mean_out + c, mean, mask=mask)
    tl.store(var_out + c, m2 / tl.where(count > 0, count, 1.0), mask=mask)


@triton.jit
def _apply_kernel(x_ptr, out_ptr, scale_ptr, shift_ptr, total, inner, channels,
                  BLOCK: tl.constexpr, ACT: tl.constexpr, INDEX_64: tl.constexpr):
    pid = tl.program_id(0)
    if INDEX_64:
        offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    c = (offsets // inner) % channels
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
    shift = tl.load(shift_ptr + c, mask=mask, other=0.0)
    y = activate(x.to(scale.dtype) * scale + shift, ACT)
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_partial_kernel(
    dy_ptr, x_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, sum_dy_ptr, sum_dy_xmu_ptr,
    per_channel, inner, channels, per_split,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr, ACT: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    c_mask = c < channels
    mean = tl.load(mean_ptr + c, mask=c_mask, other=0.0)
    invstd = tl.load(invstd_ptr + c, mask=c_mask, other=0.0)
    w = tl.load(w_ptr + c, mask=c_mask, other=0.0)
    b = tl.load(b_ptr + c, mask=c_mask, other=0.0)
    sum_dy = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    sum_dy_xmu = tl.zeros([BLOCK_M, BLOCK_C], dtype=ACC)
    start = split.to(tl.int64) * per_split
    end = tl.minimum(start + per_split, per_channel)
    for j0 in range(start, end, BLOCK_M):
        j = j0 + tl.arange(0, BLOCK_M)[:, None].to(tl.int64)
        mask = (j < end) & c_mask
        offsets = _tile_offsets(j, c, inner, channels)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(ACC)
        xmu = tl.where(mask, x - mean, 0.0)
        if ACT != 0:
            dy = dy * activation_derivative(xmu * invstd * w + b, ACT)
        sum_dy += dy
        sum_dy_xmu += dy * xmu
    out = split * channels + c.reshape([BLOCK_C])
    store_mask = c_mask.reshape([BLOCK_C])
    tl.store(sum_dy_ptr + out, tl.sum(sum_dy, axis=0), mask=store_mask)
    tl.store(sum_dy_xmu_ptr + out, tl.sum(sum_dy_xmu, axis=0), mask=store_mask)


@triton.jit
def _backward_apply_kernel(
    dy_ptr, x_ptr, grad_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, k_ptr, mean_dy_ptr, proj_ptr,
    total, inner, channels, BLOCK: tl.constexpr, ACT: tl.constexpr, INDEX_64: tl.constexpr,
):
    pid = tl.program_id(0)
    if INDEX_64:
        offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < total
    c = (offsets // inner) % channels
    mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(mean.dtype)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(mean.dtype)
    xmu = x - mean
    if ACT != 0:
        invstd = tl.load(invstd_ptr + c, mask=mask, other=0.0)
        w = tl.load(w_ptr + c, mask=mask, other=0.0)
        b = tl.load(b_ptr + c, mask=mask, other=0.0)
        dy = dy * activation_derivative(xmu * invstd * w + b, ACT)
    k = tl.load(k_ptr + c, mask=mask, other=0.0)
    mean_dy = tl.load(mean_dy_ptr + c, mask=mask, other=0.0)
    proj = tl.load(proj_ptr + c, mask=mask, other=0.0)
    grad = k * (dy - mean_dy - xmu * proj)
    tl.store(grad_ptr + offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)


# --- launchers ------------------------------------------------------------------------------------------------
def _geometry(dense):
    channels = dense.shape[1]
    if dense.numel() == 0:
        return 0, channels, 1
    inner = dense.stride(1) if channels > 1 else dense.numel() // dense.shape[0]
    return dense.numel() // (channels * inner), channels, inner


def _acc_dtype(input):
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _tl_acc(acc_dtype):
    return tl.float64 if acc_dtype == torch.float64 else tl.float32


def _reduction_grid(per_channel, channels, inner, device):
    """(BLOCK_M, BLOCK_C, splits, per_split): tiles across channels for channels_last, along planes for NCHW."""
    block_c = min(triton.next_power_of_2(channels), 64) if inner == 1 else 1
    block_m = max(16, min(REDUCE_TILE // block_c, triton.next_power_of_2(per_channel)))
    channel_blocks = triton.cdiv(channels, block_c)
    if INTERPRET or device.type != "cuda":
        wanted_programs = 2
    else:
        wanted_programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    splits = max(1, min(triton.cdiv(per_channel, block_m), triton.cdiv(wanted_programs, channel_blocks)))
    per_split = triton.cdiv(triton.cdiv(per_channel, splits), block_m) * block_m
    splits = triton.cdiv(per_channel, per_split)
    return block_m, block_c, splits, per_split


def _channel_param(param, channels, fill, like):
    if param is None:
        return torch.full((channels,), fill, dtype=like.dtype, device=like.device)
    return param.to(like.dtype).contiguous()


def batch_norm_act_forward(input, weight, bias, running_mean, running_var, training, momentum, eps, activation):
    """Arguments already checked. Returns (output, save_mean, save_invstd)."""
    output = torch.empty_like(input)
    acc = _acc_dtype(input)
    channels = input.shape[1]
    x = dense_like(input, output)  # a copy only for non-dense inputs
    outer, _, inner = _geometry(x)
    per_channel = outer * inner
    if training:
        if input.numel() == 0:
            save_mean = torch.zeros(channels, dtype=acc, device=input.device)
            return output, save_mean, torch.full_like(save_mean, eps ** -0.5)
        block_m, block_c, splits, per_split = _reduction_grid(per_channel, channels, inner, input.device)
        counts = torch.empty(splits, channels, dtype=acc, device=input.device)
        means, m2s = torch.empty_like(counts), torch.empty_like(counts)
        _stats_partial_kernel[(triton.cdiv(channels, block_c), splits)](
            x, counts, means, m2s, per_channel, inner, channels, per_split,
            BLOCK_M=block_m, BLOCK_C=block_c, ACC=_tl_acc(acc),
        )
        save_mean = torch.empty(channels, dtype=acc, device=input.device)
        var = torch.empty_like(save_mean)
        merge_block = min(triton.next_power_of_2(channels), 1024)
        _stats_merge_kernel[(triton.cdiv(channels, merge_block),)](
            counts, means, m2s, save_mean, var, channels, splits, BLOCK=merge_block, ACC=_tl_acc(acc),
        )
        save_invstd = (var + eps).rsqrt()
        if running_mean is not None:
            unbias = per_channel / (per_channel - 1)
            running_mean.copy_(save_mean * momentum + running_mean.to(acc) * (1.0 - momentum))
            running_var.copy_(var * (momentum * unbias) + running_var.to(acc) * (1.0 - momentum))
    else:
        save_mean = running_mean.to(acc, copy=True)
        save_invstd = (running_var.to(acc) + eps).rsqrt()
    if output.numel() == 0:
        return output, save_mean, save_invstd
    scale = _channel_param(weight, channels, 1.0, save_mean) * save_invstd
    shift = _channel_param(bias, channels, 0.0, save_mean) - save_mean * scale
    total = x.numel()
    _apply_kernel[(triton.cdiv(total, ELEMENTWISE_BLOCK),)](
        x, output, scale, shift, total, inner, channels,
        BLOCK=ELEMENTWISE_BLOCK, ACT=ACTIVATION_CODES[activation], INDEX_64=total + ELEMENTWISE_BLOCK > 2**31 - 1,
    )
    return output, save_mean, save_invstd


def batch_norm_act_backward(grad_output, input, weight, bias, save_mean, save_invstd, training, activation):
    """Returns (grad_input, grad_weight, grad_bias), dtypes as the C++ op."""
    grad_input = torch.empty_like(input)
    acc = _acc_dtype(input)
    channels = input.shape[1]
    weight_dtype = weight.dtype if weight is not None else acc
    bias_dtype = bias.dtype if bias is not None else weight_dtype
    if input.numel() == 0:
        return (grad_input, torch.zeros(channels, dtype=weight_dtype, device=input.device),
                torch.zeros(channels, dtype=bias_dtype, device=input.device))
    x = dense_like(input, grad_input)
    dy = dense_like(grad_output, grad_input)
    outer, _, inner = _geometry(x)
    per_channel = outer * inner
    w = _channel_param(weight, channels, 1.0, save_mean)
    b = _channel_param(bias, channels, 0.0, save_mean)
    mean, invstd = save_mean.contiguous(), save_invstd.contiguous()
    act = ACTIVATION_CODES[activation]
    block_m, block_c, splits, per_split = _reduction_grid(per_channel, channels, inner, input.device)
    sums_dy = torch.empty(splits, channels, dtype=acc, device=input.device)
    sums_dy_xmu = torch.empty_like(sums_dy)
    _backward_partial_kernel[(triton.cdiv(channels, block_c), splits)](
        dy, x, mean, invstd, w, b, sums_dy, sums_dy_xmu, per_channel, inner, channels, per_split,
        BLOCK_M=block_m, BLOCK_C=block_c, ACC=_tl_acc(acc), ACT=act,
    )
    sum_dy, sum_dy_xmu = sums_dy.sum(0), sums_dy_xmu.sum(0)  # fixed order over splits: deterministic
    k = w * invstd
    if training:
        mean_dy = sum_dy / per_channel
        proj = sum_dy_xmu * invstd * invstd / per_channel
    else:
        mean_dy = torch.zeros_like(sum_dy)
        proj = torch.zeros_like(sum_dy)
    total = x.numel()
    _backward_apply_kernel[(triton.cdiv(total, ELEMENTWISE_BLOCK),)](
        dy, x, grad_input, mean, invstd, w, b, k, mean_dy, proj, total, inner, channels,
        BLOCK=ELEMENTWISE_BLOCK, ACT=act, INDEX_64=total + ELEMENTWISE_BLOCK > 2**31 - 1,
    )
    return grad_input, (sum_dy_xmu * invstd).to(weight_dtype), sum_dy.to(bias_dtype)
