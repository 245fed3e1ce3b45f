"""The one tolerance table: (rtol, atol) for a result computed in `dtype`, compared with a float64 reference
computed from the same (already rounded) inputs.

Never loosen an entry to make a test pass. An op whose numerics need more (e.g. a long reduction in fp16)
says so with its own named entry below and a comment explaining the error bound.
"""
import torch

TOLERANCES = {
    # float64 runs on the CPU kernels (gradcheck); only summation order differs from the reference.
    torch.float64: (1e-10, 1e-12),
    # float32 accumulation: a few ulps (2^-23 ~ 1.2e-7) per term over modest reductions.
    torch.float32: (1e-5, 1e-5),
    # float16/bfloat16 results are rounded once to the output dtype after float32 accumulation:
    # half an ulp is 2^-11 (fp16) and 2^-8 (bf16) relative; allow a couple of ulps.
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

# Data-movement ops (channel_shuffle, shuffle_cat) move bits: any difference is a bug.
EXACT = (0.0, 0.0)


def tolerance(dtype, exact=False):
    return EXACT if exact else TOLERANCES[dtype]

# Parameter gradients of a whole network trained one step in float64 (tests/models): every training-mode
# BatchNorm backward subtracts per-channel means of the incoming gradient (cancellation), and fastconv's BN
# reduces in another order than ATen's, so 1e-16 rounding differences grow by ~1e8 over ResNet-50's 53
# BN layers (seen: 5e-8 relative on conv1.weight). Still six orders below float32's own noise.
DEEP_NETWORK_GRAD_FLOAT64 = (1e-6, 1e-9)

# A whole float32 network's output against the same network's in float32 (tests/models). The two sum each
# convolution in another order (fastconv's channels_last inference runs oneDNN on prepacked weights, with its own
# blocking; torchvision's runs ATen's call), and rounding differences of ~1e-7 of the activations' magnitude grow
# through the layers: measured 1.2e-6 of the largest logit on ResNet-34 at 64 px (torchvision's own float32
# logits sit 6e-7 of it from float64's). That error scales with the activations, not with each logit: a logit
# near zero beside logits of magnitude 19 cannot meet a bound relative to itself. So the float32 entry applies to
# the outputs divided by their largest magnitude (when above 1): `scaled_to_output`.
def scaled_to_output(out, expected):
    """(out, expected) divided by max(1, max |expected|), to compare with TOLERANCES[torch.float32]."""
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    return out / scale, expected / scale


# Gradients computed in float32 (tests/harness.py: check_backward) are compared the same way. A weight or bias
# gradient is a sum over the batch and every output pixel (depthwise 3x3 on 2x5x37x41: 3034 products an element),
# and float32 rounding of such a sum is ~1e-7 of the magnitude of its terms, not of the result: an element that
# cancels to ~1 beside elements of ~100 can miss rtol=1e-5 of itself. Measured on that sample over 300 random draws:
# 8-10 draws missed the plain float32 entry (worst: 2.2e-5 on an element of 0.79), on the baseline, AVX2 and AVX-512
# kernels alike, while the worst error was 5.6e-7 of the gradient's largest element. One missing product (a pixel
# or tap left out) is ~2e-3 of that element (the median term), 200x the bound.



# A whole network under torch.autocast, or converted to float16 (tests/models): every layer rounds its output to
# float16/bfloat16 and the errors compound through the depth (torchvision's own MobileNetV2 in bfloat16, training mode, 96 px: 0.40 from
# float64 on a largest logit of 0.64), so no per-element bound applies. fastconv's error from float64 must stay
# within this multiple of torchvision's under the same autocast (measured: 0.9-1.12x over nine models), plus
# half a bfloat16 ulp of the largest logit for outputs torchvision happens to hit almost exactly.
AUTOCAST_NETWORK_ERROR_RATIO = 2.0
