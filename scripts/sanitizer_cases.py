"""One small forward + backward case per CUDA kernel, for compute-sanitizer (memcheck, racecheck).

Run by scripts/gpu_check.sh as `compute-sanitizer --tool memcheck python scripts/sanitizer_cases.py`.
Odd shapes on purpose: tails and partial vectors are where out-of-bounds accesses hide.
"""
import torch

import fastconv


def cases():
    """(name, callable) for every op the cuda backend implements."""
    x = torch.randn(3, 10, 7, 5, device="cuda", requires_grad=True)
    x_cl = torch.randn(3, 10, 7, 5, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    half = torch.randn(2, 6, 3, 3, device="cuda", dtype=torch.float16)
    yield "channel_shuffle NCHW fwd+bwd", lambda: fastconv.ops.channel_shuffle(x, 2).sum().backward()
    yield "channel_shuffle channels_last fwd+bwd", lambda: fastconv.ops.channel_shuffle(x_cl, 5).sum().backward()
    yield "channel_shuffle fp16 odd offset", lambda: fastconv.ops.channel_shuffle(half[:, :, 1:], 3)


def main():
    with fastconv.backend("cuda"):
        for name, run in cases():
            run()
            torch.cuda.synchronize()
            print(f"ran {name}")
    covered = {name.split()[0] for name, _ in cases()}
    missing = [op for op, entry in fastconv.ops.OPS.items() if "cuda" in entry.backends and op not in covered]
    if missing:
        raise SystemExit(f"sanitizer_cases.py has no case for the CUDA kernels of: {', '.join(missing)}")


if __name__ == "__main__":
    main()
