"""Every registered model with a torchvision/timm twin: fastconv vs the twin eager vs torch.compile(twin), inference
and one training step.

Inference: CPU batch 1 and 32, fp32 NCHW; GPU batch 1, 32, 256, fp32 NCHW and fp16 channels_last. Training: see
TRAIN_CONFIGS.
Run: pytest benches/bench_models.py (-k shufflenet for one family).
"""
import pytest
import torch

import fastconv
from fastconv import _bench_models

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
CONFIGS = [(torch.float32, torch.contiguous_format)] + ([(torch.float16, torch.channels_last)] if GPU else [])
BATCHES = (1, 32, 256) if GPU else (1, 32)
VARIANTS = ["reference-eager", "reference-compile", "fastconv"]
# The models with a torchvision or timm twin to compare with (fastconv's own networks, e.g. lenet5, have none).
MODELS = [name for name in fastconv.models.list_models() if _bench_models.has_reference(name)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype, memory_format", CONFIGS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_model_inference(benchmark, timed, name, batch, dtype, memory_format, variant):
    benchmark.group = f"{name} batch {batch} {str(dtype)[6:]} {'CL' if memory_format == torch.channels_last else 'NCHW'}"
    ours, reference = _bench_models.model_pair(name, DEVICE, dtype, memory_format)
    x = torch.randn(batch, 3, 224, 224, device=DEVICE, dtype=dtype).contiguous(memory_format=memory_format)
    if variant == "reference-compile":
        torch._dynamo.reset()
        model = torch.compile(reference, dynamic=False)
    else:
        model = reference if variant == "reference-eager" else ours

    def run():
        with torch.inference_mode():
            return model(x)

    timed(run, bytes_moved=0)


# One training step (forward, loss, backward, SGD with momentum). GPU: fp32, and AMP (float16 autocast over
# float32 parameters, channels_last), the configuration of issue 8's MobileNetV2 target. CPU: batch 2 rather than
# 1: BatchNorm in training needs more than one value per channel (torchvision's DeepLabV3 pools to 1x1 before a
# BN).
TRAIN_CONFIGS = [("fp32", torch.contiguous_format)] + ([("amp-fp16", torch.channels_last)] if GPU else [])
TRAIN_BATCHES = (32, 256) if GPU else (2, 32)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision, memory_format", TRAIN_CONFIGS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("batch", TRAIN_BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_model_train_step(benchmark, timed, name, batch, precision, memory_format, variant):
    layout = "CL" if memory_format == torch.channels_last else "NCHW"
    benchmark.group = f"{name} train step batch {batch} {precision} {layout}"
    ours, reference = _bench_models.model_pair(name, DEVICE, torch.float32, memory_format)
    module = (ours if variant == "fastconv" else reference).train()
    model = module
    if variant == "reference-compile":
        torch._dynamo.reset()
        model = torch.compile(module, dynamic=False)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=DEVICE).contiguous(memory_format=memory_format)
    amp = precision.startswith("amp")

    def step():
        with torch.autocast(DEVICE, dtype=torch.float16, enabled=amp):
            loss = _bench_models.main_output(model(x)).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timed(step, bytes_moved=0)
