"""Command line: ``python -m fastconv info`` and ``python -m fastconv bench``."""
import argparse
import json
import os
import platform
import sys

import torch


def _info(args):
    import fastconv
    from fastconv import _backend

    build = fastconv.BUILD_INFO
    binary = build["binary"]
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"fastconv {fastconv.__version__} ({os.path.dirname(fastconv.__file__)})",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}",
        f"_C built against torch {binary['torch_version']}",
        "CUDA kernels compiled: "
        + (f"yes, for {', '.join(f'sm_{a // 10}' for a in binary['cuda_archs'])} (CUDA runtime "
           f"{binary['cuda_runtime'] // 1000}.{binary['cuda_runtime'] % 1000 // 10})" if binary["with_cuda"] else "no"),
        f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!s} (Triton on CPU tensors: "
        f"{'interpreter' if _backend.TRITON_INTERPRET else 'off'})",
        f"backend: {fastconv.get_backend()} (FASTCONV_BACKEND={os.environ.get('FASTCONV_BACKEND', '')})",
        "devices: cpu" + "".join(
            f", cuda:{i} {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
            for i in range(torch.cuda.device_count())
        ),
        "",
        "op backends that can run here (implemented, per device):",
    ]
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"build": build, "ops": {}}
    for name, entry in fastconv.ops.OPS.items():
        runnable = {d: _backend.available(entry.backends, d) for d in device_types}
        report["ops"][name] = {"implemented": list(entry.backends), "runnable": runnable}
        per_device = "; ".join(f"{d}: {', '.join(b) or '-'}" for d, b in runnable.items())
        lines.append(f"  {name:<20} implemented: {', '.join(entry.backends):<30} runnable -> {per_device}")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print("\n".join(lines))


def _bench(args):
    import fastconv
    from fastconv import _bench

    device_type = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    device = torch.device(device_type)
    if device_type == "cpu":
        batches, multipliers = (1, 32), ("x1.0",)
        configs = [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last)]
    else:
        batches, multipliers = (1, 32, 256), tuple(_bench.SHUFFLENET_V2_STAGES)
        configs = [(torch.float32, torch.contiguous_format), (torch.float16, torch.channels_last)]
    name = torch.cuda.get_device_name() if device_type == "cuda" else platform.processor() or "cpu"
    print(f"fastconv bench on {device_type} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for dtype, memory_format in configs:
        cases = _bench.channel_shuffle_cases(device, dtype, memory_format, batches, multipliers)
        for case in cases:
            case_rows = _bench.run_case(
                case, device_type, fastconv.ops.channel_shuffle, fastconv.ops._reference.channel_shuffle,
                compile_reference=not args.no_compile,
            )
            for row in case_rows:
                print(f"  {row['case']:<66} {row['variant']:<26} "
                      f"{row['seconds'] * 1e6:10.1f} us  x{row['speedup']:5.2f}  {row['gbps']:7.1f} GB/s  "
                      f"err {row['max_abs_err']:.1e}", flush=True)
            rows.extend(case_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="build, devices, and which backend each op has here")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="fastconv vs reference vs torch.compile on this device")
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    bench.add_argument("--cpu", action="store_true", help="bench the CPU even when a GPU is present")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    bench.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
