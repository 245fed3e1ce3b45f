"""examples/train_digits.py on real data (scikit-learn's bundled digits, no network): LeNet-5 reaches 97 %
test accuracy, SmartNet reports its exits, and the same script trains under torchrun with 2 processes
(DistributedDataParallel over gloo)."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_digits.py"
pytest.importorskip("sklearn", reason="scikit-learn ships the digits data set (a test dependency)")


@pytest.fixture(autouse=True)
def restore_threads():
    """The example sets its own thread count (--threads); give the rest of the session its own back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_example():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lenet5_reaches_97_percent_on_digits():
    start = time.perf_counter()
    results = load_example().main(["--model", "lenet5", "--no-progress", "--device", "cpu"])
    print(f"lenet5 on digits: {100 * results['test_accuracy']:.2f} % after {results['train_seconds']:.1f} s of "
          f"training ({time.perf_counter() - start:.1f} s in all; the budget is 60 s on a 2-core CPU)")
    assert results["test_accuracy"] >= 0.97


def test_smartnet_reports_exits_and_flops_saved():
    results = load_example().main(["--model", "smartnet", "--epochs", "4", "--no-progress", "--device", "cpu"])
    print(json.dumps({k: results[k] for k in ("exit_accuracy", "early_exit", "train_seconds")}, indent=1))
    assert len(results["exit_accuracy"]) == 4
    assert results["exit_accuracy"][-1] >= 0.9
    low, middle, high = results["early_exit"]
    assert [low["threshold"], middle["threshold"], high["threshold"]] == [0.5, 0.9, 0.99]
    # A lower threshold stops earlier: fewer blocks run on average, more FLOPs saved.
    assert 1 <= low["mean_exit"] <= middle["mean_exit"] <= high["mean_exit"] <= 4
    assert low["flops_saved"] >= middle["flops_saved"] >= high["flops_saved"] >= 0
    assert low["flops_saved"] > 0


def test_lenet5_trains_with_ddp_on_two_processes(tmp_path):
    """torchrun --nproc_per_node=2: DistributedDataParallel with gloo on the CPU, same accuracy bar."""
    output = tmp_path / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", FASTCONV_BACKEND=os.environ.get("FASTCONV_BACKEND", "auto"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
               "--model", "lenet5", "--no-progress", "--device", "cpu", "--json", str(output)]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads(output.read_text())
    print(f"lenet5, 2 processes (gloo): {100 * results['test_accuracy']:.2f} % after "
          f"{results['train_seconds']:.1f} s of training ({time.perf_counter() - start:.1f} s with start-up)")
    assert results["world_size"] == 2
    assert results["test_accuracy"] >= 0.97


def test_anytime_digits_compares_smartnet_and_msdnet_at_equal_budget(tmp_path):
    """examples/anytime_digits.py, one epoch (the numbers are the README's, from the full run): both nets
    trained, their last exits within 20 % in multiply-adds, every early-exit row between the first and the
    last exit's cost, the budgeted-batch shares summing to 1; --report reads the saved runs back."""
    spec = importlib.util.spec_from_file_location("anytime_digits", ROOT / "examples" / "anytime_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "runs.json"
    runs = module.main(["--epochs", "1", "--ratios", "0.1", "4", "--no-progress", "--device", "cpu",
                        "--json", str(output)])
    assert [run["model"] for run in runs] == ["smartnet", "msdnet"]
    last = [run["exit_multiply_adds"][-1] for run in runs]
    assert max(last) <= 1.2 * min(last)
    for run in runs:
        first, final = run["exit_multiply_adds"][0], run["exit_multiply_adds"][-1]
        assert len(run["exit_accuracy"]) == 4 and len(run["budgeted_batch"]) == 2
        for row in run["early_exit"] + run["budgeted_batch"]:
            assert first <= row["mean_multiply_adds"] <= final
        for row in run["budgeted_batch"]:
            assert abs(sum(row["exit_shares"]) - 1) < 1e-6
    assert module.main(["--report", str(output)]) == json.loads(output.read_text())["runs"]
