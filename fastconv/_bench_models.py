"""Model benchmarks: a fastconv model vs the same network from torchvision, eager and torch.compile'd.

Both models hold the same weights (torchvision's random init loaded into ours, strict), so the outputs are
compared as well as the times.
"""
from collections.abc import Mapping

import torch

import fastconv
from fastconv._bench import median_seconds

HEADLINE_MODELS = ("shufflenet_v2_x1_0", "mobilenet_v2", "resnet50")
REFERENCE_NAMES = {"shufflenet_v2": "shufflenet_v2_x1_0"}
# Arguments both builders get here: nothing to download (torchvision's deeplabv3_resnet50 fetches an ImageNet
# backbone by default; the weights are random anyway).
MODEL_KWARGS = {"deeplabv3_resnet50": dict(weights_backbone=None)}
# Inputs smaller than this fail inside the network (torchvision's weights' min_size; Inception v4 and
# Inception-ResNet v2 do not pad their stems and reach a 1x1 grid at 75 px).
MIN_RESOLUTION = {"inception_v3": 75, "inception_v4": 75, "inception_resnet_v2": 75}


def reference_library(name):
    """"torchvision" when torchvision has the network, "timm" when timm has it (the timm-compatible models),
    else None (models fastconv defines itself, e.g. lenet5 or smartnet)."""
    import torchvision

    reference_name = REFERENCE_NAMES.get(name, name)
    if reference_name in torchvision.models.list_models():
        return "torchvision"
    try:
        import timm
    except ImportError:
        return None
    return "timm" if reference_name in timm.list_models() else None


def has_reference(name):
    return reference_library(name) is not None


def reference_model(name, **kwargs):
    """The reference network: torchvision's builder of `name`, else timm's (a test/bench-only dependency)."""
    reference_name = REFERENCE_NAMES.get(name, name)
    if reference_library(name) == "torchvision":
        import torchvision

        return torchvision.models.get_model(reference_name, **kwargs)
    import timm

    return timm.create_model(reference_name, pretrained=False, **kwargs)


def main_output(output):
    """The tensor to compare: the output itself, or the "out" entry of a segmentation model's dict."""
    return output["out"] if isinstance(output, Mapping) else output


def model_pair(name, device, dtype, memory_format):
    kwargs = MODEL_KWARGS.get(name, {})
    reference = reference_model(name, **kwargs).eval()
    ours = fastconv.models.get_model(name, **kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return [m.to(device=device, dtype=dtype, memory_format=memory_format) for m in (ours, reference)]


def run_model_case(name, batch, device, dtype, memory_format, resolution=224, compile_reference=True):
    """Inference rows for one model: torchvision (or timm) eager (baseline), torch.compile of it, fastconv."""
    device_type = torch.device(device).type
    ours, reference = model_pair(name, device, dtype, memory_format)
    x = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype).contiguous(
        memory_format=memory_format)
    library = reference_library(name)
    variants = {f"{library} eager": reference}
    if compile_reference:
        torch._dynamo.reset()
        variants[f"torch.compile({library})"] = torch.compile(reference, dynamic=False)
    variants["fastconv"] = ours
    label = (f"{name} batch {batch} {str(dtype).replace('torch.', '')} "
             f"{'channels_last' if memory_format == torch.channels_last else 'NCHW'}")
    rows, baseline = [], None
    with torch.inference_mode():
        expected = main_output(reference(x)).double()
        for variant, model in variants.items():
            out = model(x)  # warm-up (and compilation) outside the timing
            seconds = median_seconds(lambda: model(x), device_type, min_run_time=0.5)
            baseline = baseline or seconds
            rows.append(dict(kind="model", case=label, variant=variant, seconds=seconds, speedup=baseline / seconds,
                             gbps=None, max_abs_err=(main_output(out).double() - expected).abs().max().item()))
    return rows


def parity(name, resolution=64, batch=1):
    """(keys identical?, max |fastconv - reference| / max |reference|) in eval, float64, with the same
    weights and random BN statistics; the reference is torchvision's, else timm's."""
    resolution = max(resolution, MIN_RESOLUTION.get(name, 0))
    ours, reference = model_pair(name, "cpu", torch.float64, torch.contiguous_format)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(1.0, 2.0)  # BN gains mostly <= 1: deep SE nets stay well-conditioned
        ours.load_state_dict(reference.state_dict())
        resolution = max(resolution, MIN_RESOLUTION.get(name, 1))
        x = torch.randn(batch, 3, resolution, resolution, dtype=torch.float64)
        expected = main_output(reference(x))
        error = ((main_output(ours(x)) - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
    return list(ours.state_dict()) == list(reference.state_dict()), error
