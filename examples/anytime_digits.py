"""SmartNet vs MSDNet at equal budgets on scikit-learn's digits (no network): the two evaluations of the
MSDNet paper (Huang et al., ICLR 2018: anytime prediction, budgeted batch classification), on a small
data set.

    python examples/anytime_digits.py --threads 1            # one seed, ~1.5 min on one busy CPU core
    python examples/anytime_digits.py --seeds 0 1 2          # mean and spread over seeds
    python examples/anytime_digits.py --seeds 1 --json s1.json; ...; --report s0.json s1.json s2.json
                                                             # the same, one seed per run, reported together

Both networks are built at about the same multiply-adds at their last exit (checked: within 20 %, printed),
and trained the same way (examples/train_digits.py's defaults and training loop: Adam, cosine decay, the same
epochs, batch and augmentation) on the same images. Then, on the held-out test images:

* Anytime prediction: each exit's accuracy against the multiply-adds to reach it (a sample whose budget runs
  out after exit k is answered by exit k).
* Early exit at softmax-confidence thresholds (0.5, 0.9, 0.99): accuracy against mean multiply-adds.
* Budgeted batch classification: per-exit thresholds fitted on a validation split (held out of the training
  images) so that a geometric share of the samples leaves at each exit (the paper's code: ratios q_k ~ r^k),
  then applied to the test images: accuracy against mean multiply-adds, one row per ratio r.

Every early-exit number comes from ``model.predict`` (later blocks computed only for samples still going).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits  # noqa: E402  (the data, the training loop and the per-exit evaluation)

from fastconv.models import get_model  # noqa: E402
from fastconv.models._anytime import budgeted_thresholds, geometric_exit_fractions  # noqa: E402

BUDGET_MATCH = 0.2  # the last exits' multiply-adds may differ by this fraction at most


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(train_digits.ANYTIME_MODELS),
                        choices=train_digits.ANYTIME_MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per model and seed")
    parser.add_argument("--epochs", type=int, help="default: train_digits.py's (10)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0, 4.0],
                        help="budgeted batch: geometric ratios r of the share of samples leaving at each exit")
    parser.add_argument("--validation-fraction", type=float, default=0.2,
                        help="share of the training images held out to fit the budgeted-batch thresholds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", help="write every run's results to this file")
    parser.add_argument("--report", nargs="+", metavar="JSON",
                        help="train nothing: report the runs saved in these --json files together")
    return parser.parse_args(argv)


def split_validation(train_set, fraction: float):
    """(training, validation) subsets of ``train_set``: a fixed stratified split."""
    from sklearn.model_selection import train_test_split

    labels = train_set.tensors[1].numpy()
    train_rows, validation_rows = train_test_split(range(len(labels)), test_size=fraction, stratify=labels,
                                                   random_state=0)
    return Subset(train_set, train_rows), train_set[validation_rows]


@torch.no_grad()
def budgeted_batch(model, validation, test_set, ratios, costs, device):
    """Accuracy and mean multiply-adds on the test images with thresholds fitted on ``validation``."""
    model.eval()
    validation_logits = model(validation[0].to(device))
    images, labels = (t.to(device) for t in test_set.tensors)
    rows = []
    for ratio in ratios:
        thresholds = budgeted_thresholds(validation_logits, geometric_exit_fractions(ratio, model.num_exits))
        logits, exit_used = model.predict(images, thresholds)
        exit_used = exit_used.cpu()
        rows.append(dict(ratio=ratio, accuracy=(logits.argmax(1) == labels).float().mean().item(),
                         mean_multiply_adds=costs[exit_used].mean().item(),
                         exit_shares=(torch.bincount(exit_used, minlength=model.num_exits) / len(labels)).tolist()))
    return rows


def run(name, seed, args, data):
    train_set, validation, test_set = data
    model_args = train_digits.parse_args(["--model", name, "--seed", str(seed), "--device", args.device,
                                          "--threads", str(args.threads), "--thresholds", *map(str, args.thresholds)]
                                         + (["--epochs", str(args.epochs)] if args.epochs else [])
                                         + (["--no-progress"] if args.no_progress else []))
    world = train_digits.Distributed(args.device)
    torch.manual_seed(seed)
    model = get_model(name, in_channels=1).to(world.device)
    start = time.perf_counter()
    train_digits.train(model, train_digits.training_phases(model, model_args), train_set, model_args, world)
    seconds = time.perf_counter() - start
    results = train_digits.evaluate(model, test_set, model_args, world.device)
    costs = torch.tensor(results["exit_multiply_adds"], dtype=torch.float64)
    results.update(model=name, seed=seed, train_seconds=seconds, epochs=model_args.epochs,
                   parameters=sum(p.numel() for p in model.parameters()),
                   budgeted_batch=budgeted_batch(model, validation, test_set, args.ratios, costs, world.device))
    return results


def summary(values, scale=100.0, digits=1):
    """``mean`` (one seed) or ``mean ± stdev`` (several), times ``scale``."""
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def report(runs, args, test_samples):
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    by_model = {name: [r for r in runs if r["model"] == name] for name in args.models}
    first = {name: results[0] for name, results in by_model.items()}
    console.print(f"digits: {test_samples} test images (one image = {100 / test_samples:.2f} %), seeds {args.seeds}; "
                  "accuracy in %, mean ± stdev over seeds; multiply-adds (MACs) per image")
    models = Table(title="Models (equal budget: multiply-adds at the last exit)")
    for column in ("model", "parameters", "MACs to each exit", "train s / run"):
        models.add_column(column, justify="right")
    for name, results in first.items():
        models.add_row(name, f"{results['parameters']:,}",
                       " / ".join(f"{c / 1e6:.2f} M" for c in results["exit_multiply_adds"]),
                       summary([r["train_seconds"] for r in by_model[name]], 1.0))
    console.print(models)

    anytime = Table(title="Anytime prediction: accuracy at each exit (MACs to reach it)")
    anytime.add_column("exit", justify="right")
    for name in by_model:
        anytime.add_column(name, justify="right")
    for index in range(max(len(r["exit_accuracy"]) for r in first.values())):
        cells = []
        for name, results in by_model.items():
            if index >= len(results[0]["exit_accuracy"]):
                cells.append("")
                continue
            cost = results[0]["exit_multiply_adds"][index] / 1e6
            cells.append(f"{summary([r['exit_accuracy'][index] for r in results])} % ({cost:.2f} M)")
        anytime.add_row(str(index + 1), *cells)
    console.print(anytime)

    console.print(_operating_points(
        "Early exit at a confidence threshold: accuracy (mean MACs)", "threshold", args.thresholds, "early_exit",
        by_model))
    console.print(_operating_points(
        "Budgeted batch: thresholds fitted on the validation split, share ~ r^k leaving at exit k; test accuracy "
        "(mean MACs)", "ratio r", args.ratios, "budgeted_batch", by_model))


def _operating_points(title, label, settings, key, by_model):
    """A table with one row per setting (threshold or budget ratio) and, per model, the test accuracy over the
    seeds and the mean multiply-adds per image at that setting (results[key][row])."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column(label, justify="right")
    for name in by_model:
        table.add_column(name, justify="right")
    for row, setting in enumerate(settings):
        table.add_row(f"{setting:g}", *(
            f"{summary([r[key][row]['accuracy'] for r in results])} % "
            f"({statistics.fmean(r[key][row]['mean_multiply_adds'] for r in results) / 1e6:.2f} M)"
            for results in by_model.values()))
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        saved = [json.loads(Path(path).read_text()) for path in args.report]
        runs = [run for result in saved for run in result["runs"]]
        args.seeds = [seed for result in saved for seed in result["seeds"]]
        args.models = list(dict.fromkeys(run["model"] for run in runs))
        args.thresholds, args.ratios = saved[0]["thresholds"], saved[0]["ratios"]
        report(runs, args, saved[0]["test_samples"])
        return runs
    torch.set_num_threads(args.threads)
    train_set, test_set = train_digits.load_digits(0.2)
    training, validation = split_validation(train_set, args.validation_fraction)
    last_costs = {name: get_model(name, in_channels=1).exit_costs((1, 32, 32))[-1] for name in args.models}
    if max(last_costs.values()) > (1 + BUDGET_MATCH) * min(last_costs.values()):
        raise SystemExit(f"the models' last exits differ by more than {BUDGET_MATCH:.0%} in multiply-adds: "
                         f"{last_costs}; resize one (see the builders' arguments)")
    runs = [run(name, seed, args, (training, validation, test_set)) for seed in args.seeds for name in args.models]
    report(runs, args, len(test_set))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(seeds=args.seeds, thresholds=args.thresholds, ratios=args.ratios,
                           test_samples=len(test_set), runs=runs), f, indent=1)
    return runs


if __name__ == "__main__":
    main()
