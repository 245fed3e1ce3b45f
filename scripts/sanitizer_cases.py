"""One small forward + backward case per CUDA kernel, for compute-sanitizer (memcheck, racecheck).

Run by scripts/gpu_check.sh as `compute-sanitizer --tool memcheck python scripts/sanitizer_cases.py`.
Odd shapes on purpose: tails and partial vectors are where out-of-bounds accesses hide.
"""
import sys

import torch

import fastconv

# `python scripts/sanitizer_cases.py cpu` runs the same cases on the CPU kernels: how CI keeps the script valid.
DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"


def _leaf(*shape, dtype=torch.float32, channels_last=False):
    t = torch.randn(*shape, device=DEVICE, dtype=dtype)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    return t.requires_grad_()


def cases():
    """(name, callable) for every op the cuda backend implements; the name starts with the op."""
    ops = fastconv.ops
    x = _leaf(3, 10, 7, 5)
    x_cl = _leaf(3, 10, 7, 5, channels_last=True)
    half = torch.randn(2, 6, 3, 3, device=DEVICE, dtype=torch.float16)
    yield "channel_shuffle NCHW fwd+bwd", lambda: ops.channel_shuffle(x, 2).sum().backward()
    yield "channel_shuffle channels_last fwd+bwd", lambda: ops.channel_shuffle(x_cl, 5).sum().backward()
    yield "channel_shuffle fp16 odd offset", lambda: ops.channel_shuffle(half[:, :, 1:], 3)

    a, b = _leaf(2, 5, 3, 7), _leaf(2, 5, 3, 7)
    a_cl, b_cl = _leaf(2, 6, 5, 3, dtype=torch.float16, channels_last=True), _leaf(
        2, 6, 5, 3, dtype=torch.float16, channels_last=True)
    yield "shuffle_cat NCHW fwd+bwd", lambda: ops.shuffle_cat(a, b).sum().backward()
    yield "shuffle_cat fp16 channels_last fwd+bwd", lambda: ops.shuffle_cat(a_cl, b_cl).float().sum().backward()

    for dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        se_in = _leaf(3, 20, 5, 7, dtype=dtype, channels_last=channels_last)
        fc = [_leaf(*shape, dtype=dtype) for shape in ((6, 20, 1, 1), (6,), (20, 6, 1, 1), (20,))]
        yield (f"squeeze_excite {dtype} channels_last={channels_last} fwd+bwd",
               lambda se_in=se_in, fc=fc: ops.squeeze_excite(se_in, *fc, gate="hardsigmoid").float().sum().backward())

    for dtype, channels_last, kernel, stride, dilation in (
        (torch.float32, False, 3, 1, 1), (torch.float16, True, 5, 2, 1), (torch.float32, True, 7, 1, 2),
        (torch.bfloat16, False, 31, 1, 1),
    ):
        dw_in = _leaf(2, 6, 33, 17, dtype=dtype, channels_last=channels_last)
        dw_w, dw_b = _leaf(12, 1, kernel, kernel, dtype=dtype), _leaf(12, dtype=dtype)
        yield (f"depthwise_conv2d {dtype} {kernel}x{kernel} s{stride} d{dilation} channels_last={channels_last}",
               lambda dw_in=dw_in, dw_w=dw_w, dw_b=dw_b, stride=stride, dilation=dilation, kernel=kernel:
               ops.depthwise_conv2d(dw_in, dw_w, dw_b, stride, dilation * (kernel // 2), dilation, "relu6")
               .float().sum().backward())

    # Multiplier 1, one case per forward path of csrc/cuda/depthwise_conv2d.cu (the cases above, m = 2, run the
    # NCHW tiles and, in channels_last, the generic kernel): channels_last vectors of 16 bytes, 8 bytes and one
    # element, unrolled and runtime shapes; NCHW tiles with partial edges, the runtime (large-kernel) instance
    # with and without its sliding window, and a dilation whose tile needs more than 48 KiB of shared memory.
    # silu/hardswish recompute the float pre-activation in the backward: the float-output instances.
    for dtype, channels_last, channels, kernel, stride, dilation, activation in (
        (torch.float16, True, 16, 3, 1, 1, "relu6"), (torch.float32, True, 6, 5, 2, 1, "silu"),
        (torch.bfloat16, True, 5, 3, 2, 1, None), (torch.float32, True, 8, 31, 1, 1, "hardswish"),
        (torch.float16, True, 12, 3, 1, 2, "silu"), (torch.float32, False, 3, 3, 2, 1, "silu"),
        (torch.float16, False, 4, 7, 1, 1, None), (torch.bfloat16, False, 2, 3, 3, 2, "hardswish"),
        (torch.float32, False, 2, 3, 1, 40, None),
    ):
        dw_in = _leaf(2, channels, 37, 70, dtype=dtype, channels_last=channels_last)
        dw_w, dw_b = _leaf(channels, 1, kernel, kernel, dtype=dtype), _leaf(channels, dtype=dtype)
        yield (f"depthwise_conv2d m1 {dtype} C{channels} {kernel}x{kernel} s{stride} d{dilation} {activation} "
               f"channels_last={channels_last}",
               lambda dw_in=dw_in, dw_w=dw_w, dw_b=dw_b, stride=stride, dilation=dilation, kernel=kernel,
               activation=activation: ops.depthwise_conv2d(dw_in, dw_w, dw_b, stride, dilation * (kernel // 2),
                                                           dilation, activation).float().sum().backward())

    # Rows wider than a block of threads: the NCHW grad_weight kernel's pixel step wraps within one row.
    wide_in, wide_w = _leaf(2, 3, 5, 300), _leaf(3, 1, 3, 3)
    yield ("depthwise_conv2d NCHW 300-wide rows fwd+bwd",
           lambda: fastconv.ops.depthwise_conv2d(wide_in, wide_w, None, 1, 1).sum().backward())

    for dtype, channels_last, kernel, stride, groups, activation in (
        (torch.float32, False, 3, 1, 1, "relu"), (torch.float16, True, 1, 1, 1, "relu6"),
        (torch.bfloat16, True, 3, 2, 2, "hardswish"), (torch.float32, True, 5, 1, 4, None),
    ):
        ca_in = _leaf(3, 8, 11, 9, dtype=dtype, channels_last=channels_last)
        ca_w, ca_b = _leaf(12, 8 // groups, kernel, kernel, dtype=dtype), _leaf(12, dtype=dtype)
        yield (f"conv2d_act {dtype} {kernel}x{kernel} s{stride} g{groups} {activation} channels_last={channels_last}",
               lambda ca_in=ca_in, ca_w=ca_w, ca_b=ca_b, stride=stride, kernel=kernel, groups=groups,
               activation=activation: ops.conv2d_act(ca_in, ca_w, ca_b, stride, kernel // 2, 1, groups, activation)
               .float().sum().backward())

    # The ShuffleNet unit's tail: a and the branch are views of one tensor (a read block-strided in place), the
    # epilogue's interleaved stores; one NCHW case with a 3x3 grouped convolution and partial tiles.
    for dtype, channels_last in ((torch.float32, False), (torch.float16, True), (torch.bfloat16, True)):
        sc_x = _leaf(3, 2 * 70, 9, 7, dtype=dtype, channels_last=channels_last)
        sc_w, sc_b = _leaf(70, 70, 1, 1, dtype=dtype), _leaf(70, dtype=dtype)
        yield (f"shuffle_cat_conv2d_act {dtype} 1x1 split channels_last={channels_last}",
               lambda sc_x=sc_x, sc_w=sc_w, sc_b=sc_b: ops.shuffle_cat_conv2d_act(
                   *sc_x.chunk(2, dim=1), sc_w, sc_b, activation="relu").float().sum().backward())
    sc_a, sc_in, sc_w3 = _leaf(2, 6, 5, 4), _leaf(2, 4, 9, 7), _leaf(6, 2, 3, 3)
    yield ("shuffle_cat_conv2d_act 3x3 s2 g2 NCHW",
           lambda: ops.shuffle_cat_conv2d_act(sc_a, sc_in, sc_w3, None, 2, 1, 1, 2, "silu").sum().backward())

    for dtype, channels_last, offset_groups in ((torch.float32, False, 1), (torch.float16, True, 2),
                                                (torch.float32, True, 4)):
        dc_in = _leaf(2, 8, 9, 7, dtype=dtype, channels_last=channels_last)
        # offsets of a few pixels: samples land across the border (the zero-padding paths)
        dc_offset = (3 * torch.randn(2, 2 * offset_groups * 9, 5, 3, device=DEVICE)).to(dtype).requires_grad_()
        dc_mask = torch.rand(2, offset_groups * 9, 5, 3, device=DEVICE).to(dtype).requires_grad_()
        dc_w, dc_b = _leaf(6, 4, 3, 3, dtype=dtype), _leaf(6, dtype=dtype)
        yield (f"deform_conv2d {dtype} channels_last={channels_last} offset_groups={offset_groups} fwd+bwd",
               lambda dc_in=dc_in, dc_offset=dc_offset, dc_mask=dc_mask, dc_w=dc_w, dc_b=dc_b:
               ops.deform_conv2d(dc_in, dc_offset, dc_w, dc_b, stride=(2, 2), padding=(1, 1), dilation=(1, 2),
                                 mask=dc_mask).float().sum().backward())

    for dtype, channels_last, training in ((torch.float32, False, True), (torch.float16, True, True),
                                           (torch.float32, True, False)):
        bn_in = _leaf(3, 9, 5, 7, dtype=dtype, channels_last=channels_last)
        weight, bias = _leaf(9), _leaf(9)
        mean, var = torch.zeros(9, device=DEVICE), torch.ones(9, device=DEVICE)
        yield (f"batch_norm_act {dtype} channels_last={channels_last} training={training}",
               lambda bn_in=bn_in, weight=weight, bias=bias, mean=mean, var=var, training=training:
               ops.batch_norm_act(bn_in, weight, bias, mean, var, training, 0.1, 1e-5, "relu")
               .float().sum().backward())


def main():
    with fastconv.backend(DEVICE):
        for name, run in cases():
            run()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            print(f"ran {name}")
    covered = {name.split()[0] for name, _ in cases()}
    missing = [op for op, entry in fastconv.ops.OPS.items() if DEVICE in entry.backends and op not in covered]
    if missing:
        raise SystemExit(f"sanitizer_cases.py has no case for the CUDA kernels of: {', '.join(missing)}")


if __name__ == "__main__":
    main()
