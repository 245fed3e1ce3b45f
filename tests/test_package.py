"""The package contract: import safety, the backend switch, the op table and the CLI."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import fastconv
from fastconv import _backend
from fastconv.ops._registry import register_op

ROOT = pathlib.Path(fastconv.__file__).resolve().parent.parent


def python(code, env=None, cwd=ROOT):
    environment = {k: v for k, v in os.environ.items() if k not in ("FASTCONV_BACKEND", "TRITON_INTERPRET")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment, capture_output=True, text=True)


# An editable install's import hook resolves submodules missing from a shadowing copy (like _C) to the
# source tree; the copies below must stand alone, so the hook is removed first.
WITHOUT_EDITABLE_HOOK = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]\n"
)


def copy_package(tmp_path, with_binary):
    """A copy of the fastconv sources; the compiled extension only if asked."""
    target = tmp_path / "fastconv"
    shutil.copytree(ROOT / "fastconv", target, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
    if with_binary:
        for library in (ROOT / "fastconv").glob("_C*.so"):
            shutil.copy(library, target / library.name)
    return target


def test_missing_extension_raises_clear_import_error(tmp_path):
    package = copy_package(tmp_path, with_binary=False)
    (package / "_build_info.py").unlink(missing_ok=True)
    result = python(WITHOUT_EDITABLE_HOOK + "import fastconv", cwd=tmp_path)
    assert result.returncode == 1
    assert "ImportError: fastconv: the compiled extension fastconv._C is not usable" in result.stderr
    assert "pip install --no-build-isolation -e ." in result.stderr


def test_extension_built_for_another_torch_is_not_loaded(tmp_path):
    package = copy_package(tmp_path, with_binary=True)
    record = (package / "_build_info.py").read_text()
    (package / "_build_info.py").write_text(record.replace(torch.__version__, "1.0.0"))
    result = python(WITHOUT_EDITABLE_HOOK + "import fastconv", cwd=tmp_path)
    assert result.returncode == 1
    assert f"built against torch 1.0.0, running torch {torch.__version__}" in result.stderr


def test_backend_switch_and_context():
    assert fastconv.get_backend() == "auto"
    fastconv.set_backend("reference")
    assert fastconv.get_backend() == "reference"
    with fastconv.backend("cpu"):
        assert fastconv.get_backend() == "cpu"
    assert fastconv.get_backend() == "reference"
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        fastconv.set_backend("cudnn")


def test_backend_from_environment():
    result = python("import fastconv; print(fastconv.get_backend())", env={"FASTCONV_BACKEND": "reference"})
    assert result.stdout.strip() == "reference", result.stderr
    result = python("import fastconv", env={"FASTCONV_BACKEND": "fast"})
    assert "unknown FASTCONV_BACKEND 'fast'" in result.stderr


def test_auto_picks_a_kernel_that_runs():
    x = torch.randn(2, 4, 3, 3)
    assert fastconv.ops.OPS["channel_shuffle"].select("cpu") is torch.ops.fastconv.channel_shuffle.default
    with fastconv.backend("auto"):
        fastconv.ops.channel_shuffle(x, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
def test_backend_that_cannot_run_raises():
    x = torch.randn(2, 4, 3, 3)
    with fastconv.backend("cuda"), pytest.raises(RuntimeError, match="the cuda backend runs on cuda tensors"):
        fastconv.ops.channel_shuffle(x, 2)
    # Triton on CPU tensors only under the interpreter, chosen before import
    result = python(
        "import torch, fastconv\nwith fastconv.backend('triton'):\n"
        "    fastconv.ops.channel_shuffle(torch.randn(2, 4, 3, 3), 2)"
    )
    assert "TRITON_INTERPRET=1" in result.stderr and "RuntimeError" in result.stderr


def test_registering_an_op_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_op("channel_shuffle", reference=lambda x: x)


def test_cli_info_tells_what_was_built():
    result = subprocess.run(
        [sys.executable, "-m", "fastconv", "info"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    binary = fastconv.BUILD_INFO["binary"]
    assert f"_C built against torch {binary['torch_version']}" in result.stdout
    assert ("CUDA kernels compiled: yes, for sm_" in result.stdout) == binary["with_cuda"]
    assert "channel_shuffle" in result.stdout
    assert _backend.CUDA_KERNELS_BUILT == binary["with_cuda"]
    assert fastconv.BUILD_INFO["with_cuda"] == binary["with_cuda"], "the build record disagrees with the binary"


def test_cli_bench_writes_table_json_and_plot(tmp_path):
    json_path, plot_path, table_path = tmp_path / "bench.json", tmp_path / "bench.png", tmp_path / "auto.json"
    result = subprocess.run(
        [sys.executable, "-m", "fastconv", "bench", "--cpu", "--ops", "channel_shuffle", "--models", "",
         "--no-compile", "--json", str(json_path), "--plot", str(plot_path), "--write-auto-table", str(table_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "fastconv cpu" in result.stdout and "reference (ATen)" in result.stdout
    rows = json.loads(json_path.read_text())["rows"]
    assert {r["variant"] for r in rows} == {"reference (ATen)", "fastconv cpu"}
    assert all(r["max_abs_err"] == 0 for r in rows)  # a permutation: exact
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the measured choices, one per shape class the cases covered, loadable by "auto"
    table = _backend.load_auto_table(table_path)
    assert set(table["choices"]["cpu"]["channel_shuffle"]) == {r["shape_class"] for r in rows}
    assert set(table["choices"]["cpu"]["channel_shuffle"].values()) <= {"cpu", "reference"}


def test_cli_check_zoo_parity():
    result = subprocess.run([sys.executable, "-m", "fastconv", "check", "--models", "shufflenet_v2_x0_5,resnet18"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 models equal their reference" in result.stdout


def test_sanitizer_script_covers_every_cuda_op_and_runs():
    """scripts/sanitizer_cases.py is what compute-sanitizer runs on a lent GPU; on the CPU kernels here it must run
    every case and fail when an op with a CUDA kernel has none (so a new op cannot skip the sanitizer)."""
    script = ROOT / "scripts" / "sanitizer_cases.py"
    result = subprocess.run([sys.executable, str(script), "cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    ran = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("ran ")}
    assert ran >= {op for op, entry in fastconv.ops.OPS.items() if "cuda" in entry.backends}


@pytest.mark.skipif(not _backend.TRITON_AVAILABLE, reason="triton is not installed")
def test_every_triton_kernel_compiles_for_hopper():
    """The interpreter the Triton tests run under accepts programs Triton's compiler rejects: every kernel the
    sanitizer cases reach (forward and backward of each op, three dtypes, both layouts) is compiled for sm_90 here,
    with no GPU (scripts/triton_compile_check.py), and must fit the chip's shared memory."""
    script = ROOT / "scripts" / "triton_compile_check.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    modules = {line.split()[3].split(".")[0] for line in result.stdout.splitlines() if line.startswith("compiled for")}
    assert modules >= {op for op, entry in fastconv.ops.OPS.items() if "triton" in entry.backends} - {
        "shuffle_cat_conv2d_act"}  # its kernel is conv2d_act's


def test_auto_follows_the_measured_table(monkeypatch):
    x = torch.randn(2, 4, 3, 3)  # float32/contiguous/small
    x_cl = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last)
    assert _backend.shape_class(x) == "float32/contiguous/small"
    assert _backend.shape_class(x_cl) == "float32/channels_last/small"
    assert _backend.shape_class(torch.empty(1 << 22)) == "float32/contiguous/large"
    monkeypatch.setattr(_backend, "_AUTO_CHOICES", {"cpu": {"channel_shuffle": {
        "float32/contiguous/small": "reference",  # measured faster: auto runs ATen there
        "float32/channels_last/small": "cuda",  # cannot run on CPU tensors: auto falls back to the heuristic
    }}})
    entry = fastconv.ops.OPS["channel_shuffle"]
    with fastconv.backend("auto"):
        assert entry.select(x) is entry.implementations["reference"]
        assert entry.select(x_cl) is entry.implementations["cpu"]
        assert entry.select(torch.randn(2, 4, 3, 3, dtype=torch.float64)) is entry.implementations["cpu"]
        torch.testing.assert_close(fastconv.ops.channel_shuffle(x, 2), torch.nn.functional.channel_shuffle(x, 2))
    with fastconv.backend("cpu"):  # a named backend ignores the table
        assert entry.select(x) is entry.implementations["cpu"]


def test_auto_choices_from_bench_rows():
    from fastconv import _bench

    def row(case, klass, variant, speedup):
        return dict(op="depthwise_conv2d", case=case, shape_class=klass, variant=variant, speedup=speedup)

    rows = [
        row("a", "small", "reference (ATen)", 1.0), row("a", "small", "torch.compile(reference)", 9.0),
        row("a", "small", "fastconv cpu", 0.5),
        row("b", "large", "reference (ATen)", 1.0), row("b", "large", "fastconv cpu", 3.0),
        row("c", "large", "reference (ATen)", 1.0), row("c", "large", "fastconv cpu", 0.5),  # geomean 1.22
    ]
    assert _bench.auto_choices(rows) == {"depthwise_conv2d": {"small": "reference", "large": "cpu"}}


def test_auto_table_with_an_unknown_backend_is_refused(tmp_path):
    path = tmp_path / "auto.json"
    path.write_text(json.dumps({"choices": {"cpu": {"channel_shuffle": {"float32/contiguous/small": "cudnn"}}}}))
    result = python("import fastconv", env={"FASTCONV_AUTO_TABLE": str(path)})
    assert "names unknown backend 'cudnn'" in result.stderr
    result = python("import fastconv.__main__ as m; print(m._auto_table_lines())",
                    env={"FASTCONV_AUTO_TABLE": str(tmp_path / "missing.json")})
    assert "no measurements: fallback only" in result.stdout and "cpu: cpu" in result.stdout


def test_benches_collect():
    """benches/ is not part of the test run; a broken case builder must still fail CI."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "benches")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
