"""Every registered model: fastconv vs torchvision eager vs torch.compile(torchvision), inference.

CPU: batch 1 and 32, fp32 NCHW. GPU: batch 1, 32, 256, fp32 NCHW and fp16 channels_last.
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


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype, memory_format", CONFIGS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", fastconv.models.list_models())
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
