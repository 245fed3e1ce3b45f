"""Command line: ``python -m fastconv info`` and ``python -m fastconv bench``."""
import argparse
import datetime
import json
import os
import pathlib
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
        f"CPU kernels run with: {binary.get('cpu_isa', '?')} (of baseline, avx2, avx512; FASTCONV_CPU_ISA caps it)",
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
    lines += ["", _auto_table_lines()]
    report["auto_table"] = _backend.AUTO_TABLE
    lines.append(f"models: {len(fastconv.models.list_models())} registered ({', '.join(fastconv.models.list_models())})")
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print("\n".join(lines))


def _auto_table_lines():
    """How "auto" chooses here: the measured table in use (path, devices, entries) and the fallback."""
    from fastconv import _backend

    path = os.environ.get("FASTCONV_AUTO_TABLE") or _backend.DEFAULT_AUTO_TABLE
    choices = _backend.AUTO_TABLE.get("choices", {})
    fallback = "; ".join(f"{d}: {' > '.join(order)}" for d, order in _backend.AUTO_ORDER.items())
    lines = [f"auto backend table: {path}" + ("" if choices else " (no measurements: fallback only)")]
    for device, ops in sorted(choices.items()):
        measured = _backend.AUTO_TABLE.get("measured_on", {}).get(device, {})
        lines.append(f"  {device}: measured on {measured.get('device', '?')}, torch {measured.get('torch', '?')}, "
                     f"{measured.get('date', '?')}")
        for op, classes in sorted(ops.items()):
            lines.append(f"    {op:<20} " + ", ".join(f"{k} -> {b}" for k, b in sorted(classes.items())))
    lines.append(f"  fallback without an entry (or when the entry cannot run here): {fallback}")
    return "\n".join(lines)


def _spread(cases, count):
    """`count` cases spread evenly over the list (the quick suite keeps every network's range of sizes)."""
    if len(cases) <= count:
        return cases
    return [cases[round(i * (len(cases) - 1) / (count - 1))] for i in range(count)]


def _op_suite(device, quick):
    """{op name: (cases, public fn, reference fn)} for the bench; shapes from the real networks."""
    import fastconv
    from fastconv import _bench
    from fastconv.ops import _reference

    if quick and device.type == "cpu":
        batches, multipliers, per_op = (1, 32), ("x1.0",), 6
        configs = [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last)]
    elif quick:  # a GPU: the mixed-precision channels_last configurations matter most
        batches, multipliers, per_op = (1, 256), ("x1.0",), 9
        configs = [(torch.float32, torch.contiguous_format), (torch.float16, torch.channels_last),
                   (torch.bfloat16, torch.channels_last)]
    else:
        batches, multipliers, per_op = (1, 32, 256), tuple(_bench.SHUFFLENET_V2_STAGES), None
        configs = [(torch.float32, torch.contiguous_format), (torch.float16, torch.channels_last),
                   (torch.bfloat16, torch.channels_last)]

    def cases(builder):
        built = [c for dtype, fmt in configs for c in builder(dtype, fmt)]
        return _spread(built, per_op) if per_op else built

    def bn_cases(dtype, fmt):
        return [c for training in (False, True) for c in _bench.batch_norm_act_cases(device, dtype, fmt, batches, training)]

    return {
        "channel_shuffle": (cases(lambda d, f: _bench.channel_shuffle_cases(device, d, f, batches, multipliers)),
                            fastconv.ops.channel_shuffle, _reference.channel_shuffle),
        "shuffle_cat": (cases(lambda d, f: _bench.shuffle_cat_cases(device, d, f, batches, multipliers)),
                        fastconv.ops.shuffle_cat, _reference.shuffle_cat),
        # The ShuffleNetV2 unit's tail (1x1 conv + ReLU, then shuffle_cat): one op vs ATen's four.
        "shuffle_cat_conv2d_act": (cases(lambda d, f: _bench.shuffle_cat_conv_cases(device, d, f, batches,
                                                                                    multipliers)),
                                   fastconv.ops.shuffle_cat_conv2d_act, _bench.shuffle_cat_conv2d_act_reference),
        "squeeze_excite": (cases(lambda d, f: _bench.squeeze_excite_cases(device, d, f, batches)),
                           fastconv.ops.squeeze_excite, _reference.squeeze_excite),
        "depthwise_conv2d": (cases(lambda d, f: _bench.depthwise_conv2d_cases(device, d, f, batches)),
                             fastconv.ops.depthwise_conv2d, _bench.depthwise_conv2d_reference),
        # Eval conv-BN-act on every MobileNetV2 / ResNet-50 conv layer: the three ATen ops (conv, BN, act) vs
        # conv2d_act on the folded parameters.
        "conv2d_act": (cases(lambda d, f: _bench.conv2d_act_cases(device, d, f, batches)), _bench.conv_bn_act_fused,
                       _bench.conv_bn_act_reference),
        # DCN-ResNet-50 stages 3-5 and a detection neck; "reference" is the plain-ATen composition (the bench in
        # benches/ also compares with torchvision.ops.deform_conv2d).
        "deform_conv2d": (cases(lambda d, f: _bench.deform_conv2d_cases(device, d, f, batches[:1], neck=None)),
                          fastconv.ops.deform_conv2d, _reference.deform_conv2d),
        # Training cases carry the output gradient: timed as a whole step (forward + backward).
        "batch_norm_act": (cases(bn_cases), _bench.batch_norm_act_step(fastconv.ops.batch_norm_act),
                           _bench.batch_norm_act_step(_reference.batch_norm_act)),
    }


def _plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows)]
    height = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(11, 0.22 * len(cases) * max(len(variants), 2) / 2 + 1.5))
    for i, variant in enumerate(variants):
        ys = [cases.index(r["case"]) + i * height for r in rows if r["variant"] == variant]
        xs = [r["speedup"] for r in rows if r["variant"] == variant]
        ax.barh(ys, xs, height=height, label=variant)
    ax.set_xscale("log", base=2)  # ratios: 2x faster and 2x slower are the same distance from 1
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cases))])
    ax.set_yticklabels(cases, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over the reference measured in the same run (log scale; right of 1 is faster)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bench(args):
    import fastconv
    from fastconv import _bench, _bench_models, _roofline
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or logged: don't wrap the table at 80 columns
        console = Console(width=170)
    device_type = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    device = torch.device(device_type)
    quick = device_type == "cpu" if args.quick is None else args.quick
    name = torch.cuda.get_device_name() if device_type == "cuda" else (platform.processor() or "cpu")
    title = f"fastconv bench on {device_type} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    console.print(title)
    copy_gbps = _roofline.copy_bandwidth_gbps(device, megabytes=256 if device_type == "cpu" else 1024)
    console.print(f"measured copy bandwidth: {copy_gbps:.0f} GB/s (read + write)")

    suite = _op_suite(device, quick)
    ops = list(suite) if args.ops in (None, "all") else [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in suite]
    if unknown:
        sys.exit(f"unknown --ops {unknown}; available: {', '.join(suite)}")
    models = _bench_models.HEADLINE_MODELS if args.models is None else tuple(m for m in args.models.split(",") if m)
    registered = set(fastconv.models.list_models())
    skipped_models = [m for m in models if m not in registered]
    models = [m for m in models if m in registered]
    model_configs = ([(1, torch.float32, torch.contiguous_format)] if device_type == "cpu" else
                     [(1, torch.float16, torch.channels_last), (256, torch.float16, torch.channels_last)])

    rows = []
    jobs = [("op", op, case) for op in ops for case in suite[op][0]]
    jobs += [("model", m, config) for m in models for config in model_configs]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(jobs))
        for kind, what, item in jobs:
            progress.update(task, description=f"{what}")
            if kind == "op":
                _, public, reference = suite[what]
                case_rows = _bench.run_case(item, device_type, public, reference, compile_reference=not args.no_compile)
                for row in case_rows:
                    row["kind"] = "op"
                    row["roofline"] = row["gbps"] / copy_gbps
            else:
                batch, dtype, fmt = item
                case_rows = _bench_models.run_model_case(what, batch, device, dtype, fmt,
                                                         compile_reference=not args.no_compile)
            rows.extend(case_rows)
            progress.advance(task)

    table = Table(title=title, show_lines=False)
    for column in ("case", "variant", "median", "vs ref", "GB/s", "% copy BW", "max |err|"):
        table.add_column(column, justify="left" if column in ("case", "variant") else "right")
    previous = None
    for row in rows:
        case = row["case"] if row["case"] != previous else ""
        previous = row["case"]
        ratio = f"{row['speedup']:.2f}x"
        table.add_row(
            case, row["variant"], f"{row['seconds'] * 1e6:,.1f} us",
            f"[green]{ratio}[/]" if row["speedup"] >= 1.0 else f"[red]{ratio}[/]",
            f"{row['gbps']:.1f}" if row.get("gbps") else "",
            f"{100 * row['roofline']:.0f}%" if row.get("roofline") else "",
            f"{row['max_abs_err']:.1e}",
        )
    console.print(table)
    console.print("% copy BW: achieved bytes/s over the measured device copy bandwidth; above 100% the data "
                  "fits in a cache.")
    if skipped_models:
        console.print(f"not registered yet, skipped: {', '.join(skipped_models)}")

    out_dir = pathlib.Path("bench-results")
    json_path = pathlib.Path(args.json) if args.json else out_dir / f"bench-{device_type}.json"
    plot_path = pathlib.Path(args.plot) if args.plot else out_dir / f"bench-{device_type}.png"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"device": name, "torch": torch.__version__, "copy_gbps": copy_gbps,
                                     "rows": rows}, indent=2))
    _plot(rows, plot_path, title)
    console.print(f"wrote {json_path} and {plot_path}")
    if args.write_auto_table is not None:
        from fastconv import _backend

        path = args.write_auto_table or os.environ.get("FASTCONV_AUTO_TABLE") or _backend.DEFAULT_AUTO_TABLE
        key = _backend.device_key(device)
        choices = _bench.auto_choices(rows)
        measured_on = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "date": datetime.date.today().isoformat(), "quick": quick}
        _bench.write_auto_table(path, key, choices, measured_on)
        console.print(f"wrote the auto table for {key} ({sum(map(len, choices.values()))} entries) to {path}")


def _check(args):
    import fastconv
    from fastconv import _bench_models

    names = ([n for n in fastconv.models.list_models() if _bench_models.has_reference(n)] if not args.models
             else args.models.split(","))
    failures = 0
    print(f"{'model':<22} {'keys':<6} {'relative max error':>20}  (eval, float64, {args.resolution} px, vs torchvision or timm)")
    for name in names:
        keys_equal, error = _bench_models.parity(name, resolution=args.resolution)
        ok = keys_equal and error <= 1e-9
        failures += not ok
        print(f"{name:<22} {'same' if keys_equal else 'DIFF':<6} {error:>20.2e}  {'ok' if ok else 'FAIL'}", flush=True)
    print(f"{len(names) - failures} of {len(names)} models equal their reference")
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastconv", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="build, devices, and which backend each op has here")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_info)
    bench = commands.add_parser("bench", help="fastconv vs reference vs torch.compile on this device")
    bench.add_argument("--ops", help="comma-separated ops to bench, 'all' (default) or '' for none")
    bench.add_argument("--models", help="comma-separated models (default: the headline models), '' for none")
    bench.add_argument("--json", metavar="PATH", help="rows as JSON (default bench-results/bench-<device>.json)")
    bench.add_argument("--plot", metavar="PATH", help="speed-up chart (default bench-results/bench-<device>.png)")
    bench.add_argument("--cpu", action="store_true", help="bench the CPU even when a GPU is present")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    bench.add_argument("--quick", action=argparse.BooleanOptionalAction, default=None,
                       help="fewer shapes (default on the CPU)")
    bench.add_argument("--write-auto-table", nargs="?", const="", metavar="PATH",
                       help="write the fastest backend per op and shape class into the table \"auto\" reads "
                            "(default: the one in use, see `info`); only this device's measured entries change")
    bench.set_defaults(run=_bench)
    check = commands.add_parser("check", help="zoo parity: every model against its torchvision reference")
    check.add_argument("--models", help="comma-separated models (default: every registered model with a "
                                        "torchvision reference)")
    check.add_argument("--resolution", type=int, default=64, help="input size (default 64)")
    check.set_defaults(run=_check)
    args = parser.parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
