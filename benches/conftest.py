"""pytest-benchmark harness: `pytest benches` (see README). Kernels are compared within one run.

Each benchmark's group is one case (op + shape + dtype + layout); its variants are the reference (ATen,
cuDNN on GPUs), torch.compile of the reference, and every fastconv backend that can run here. The summary
at the end prints each variant's median, its speed-up over the reference of the same group and the
achieved bandwidth (benchmark.extra_info["bytes"] / median).
"""
import pytest
import torch

from fastconv import _bench

GPU = torch.cuda.is_available()


def sync():
    if GPU:
        torch.cuda.synchronize()


@pytest.fixture
def timed(benchmark):
    """timed(fn, bytes_moved, backend=None): benchmark fn (synchronising on GPUs), recording the bytes it must
    move. `backend`: the fastconv backend, set around the whole measurement (see _bench.using)."""

    def run(fn, bytes_moved, backend=None):
        with _bench.using(backend):
            fn()  # warm-up: compile, autotune, allocate
            sync()
            benchmark.extra_info["bytes"] = bytes_moved

            def call():
                fn()
                sync()

            return benchmark(call)

    return run


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) if session else None
    if not benchmarks:
        return
    groups = {}
    for bench in benchmarks:
        groups.setdefault(bench.group, []).append(bench)
    write = terminalreporter.write_line
    write("")
    write("fastconv: speed-up over the reference of the same group, and achieved bandwidth")
    for group, members in groups.items():
        reference = [b for b in members if b.params.get("variant") == "reference-eager"]
        base = reference[0].stats.median if reference else None
        write(f"  {group}")
        for bench in members:
            median = bench.stats.median
            ratio = f"x{base / median:6.2f}" if base else "   n/a"
            moved = bench.extra_info.get("bytes", 0)
            bandwidth = f"{moved / median / 1e9:8.1f} GB/s" if moved else ""
            variant = bench.params.get("variant", bench.name)
            write(f"    {variant:<24} {median * 1e6:10.1f} us  {ratio}  {bandwidth}{_workspace(bench, reference)}")


def _workspace(bench, reference):
    """The peak workspace a bench measured (extra_info["peak_workspace_bytes"], GPU only), and its fraction of
    the reference's."""
    peak = bench.extra_info.get("peak_workspace_bytes")
    if peak is None:
        return ""
    base = reference[0].extra_info.get("peak_workspace_bytes") if reference else None
    fraction = f" ({peak / base:.2f} of the reference's)" if base else ""
    return f"  peak workspace {peak / 2**20:9.1f} MiB{fraction}"
