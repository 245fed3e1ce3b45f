"""The device's two ceilings, measured: copy bandwidth and matrix-multiply rate.

Benchmarks report achieved GB/s and TFLOP/s as a fraction of these measured figures (not datasheet ones).
"""
import torch


def copy_bandwidth_gbps(device, megabytes=1024):
    """Large device-to-device copy; counts bytes read plus bytes written."""
    from fastconv._bench import median_seconds

    n = megabytes * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), torch.device(device).type)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def matmul_tflops(device, dtype=torch.bfloat16, size=8192):
    """A large square matrix product on random data (zeros can run faster than real data)."""
    from fastconv._bench import median_seconds

    if torch.device(device).type == "cpu":
        dtype, size = torch.float32, 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, torch.device(device).type)
    return 2 * size**3 / seconds / 1e12


if __name__ == "__main__":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{device}: copy {copy_bandwidth_gbps(device):.0f} GB/s, matmul {matmul_tflops(device):.1f} TFLOP/s")
