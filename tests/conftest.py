"""Test configuration: seeding, the Triton interpreter on GPU-less machines, and the backend matrix.

TRITON_INTERPRET must be set before any Triton kernel is defined, i.e. before fastconv.triton_kernels is
imported, so it is decided here at collection time, before the tests import fastconv.
"""
import os
import random

import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastconv  # noqa: E402

@pytest.fixture(autouse=True)
def _seed_and_restore_backend():
    torch.manual_seed(0)
    random.seed(0)
    previous = fastconv.get_backend()
    yield
    fastconv.set_backend(previous)


def pytest_report_header(config):
    binary = fastconv.BUILD_INFO["binary"]
    return [
        f"fastconv: torch {torch.__version__}, CUDA kernels built: {binary['with_cuda']} "
        f"(archs {binary.get('cuda_archs')}), GPU: {GPU}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}",
    ]
