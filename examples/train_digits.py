"""Train LeNet-5, SmartNet or MSDNet on real data with no network: scikit-learn's bundled digits (1,797 8x8 images,
10 classes), resized to 32x32, through fastconv's ops (forward and backward).

    python examples/train_digits.py --model lenet5                 # >= 97 % test accuracy in seconds on a CPU
    python examples/train_digits.py --model smartnet               # per-exit accuracy, early-exit FLOPs saved
    python examples/train_digits.py --model msdnet                 # the same for MSDNet (same budget flags)
    python examples/anytime_digits.py                              # SmartNet vs MSDNet at equal budgets
    torchrun --nproc_per_node=2 examples/train_digits.py --model lenet5   # DistributedDataParallel

Under torchrun (RANK / WORLD_SIZE set) the script trains with DistributedDataParallel: gloo on CPU, nccl on
GPU, a DistributedSampler shards each epoch, and the per-process batch is --batch-size / WORLD_SIZE so the
global batch (and so the optimisation) matches the single-process run.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import fastconv
from fastconv.models import exit_loss

ANYTIME_MODELS = ("smartnet", "msdnet")  # multi-exit networks (fastconv.models._anytime.AnytimeNetwork)
DEFAULT_EPOCHS = {"lenet5": 12, "smartnet": 10, "msdnet": 10}
DEFAULT_BATCH_SIZE = {"lenet5": 32, "smartnet": 64, "msdnet": 64}
DEFAULT_LEARNING_RATE = {"lenet5": 3e-3, "smartnet": 5e-3, "msdnet": 5e-3}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["lenet5", *ANYTIME_MODELS], default="lenet5")
    parser.add_argument("--epochs", type=int, help="default: 12 (lenet5), 10 (smartnet, msdnet)")
    parser.add_argument("--batch-size", type=int,
                        help="global batch size, split across processes; default 32 (lenet5), 64 (smartnet, msdnet)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (cosine decay); default 3e-3 (lenet5), "
                                                 "5e-3 (smartnet, msdnet)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    parser.add_argument("--classic", action="store_true", help="lenet5: the 1998 tanh / average-pooling form")
    parser.add_argument("--training", choices=["joint", "exit-by-exit"], default="joint",
                        help="smartnet, msdnet: all exits at once (uniform weighted sum of losses) or one exit at a "
                             "time")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.9, 0.99],
                        help="smartnet, msdnet: softmax confidence thresholds for early exit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per process (default 1: these nets are too small for intra-op "
                             "parallelism to pay, and on a busy machine extra threads only spin)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--max-shift", type=int, default=2, help="augmentation: random translation in pixels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", help="write the results to this file (rank 0)")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE[args.model]
    args.lr = args.lr or DEFAULT_LEARNING_RATE[args.model]
    return args


def load_digits(test_fraction: float):
    """(train, test) TensorDatasets of 1x32x32 images in [-1, 1]; a fixed stratified split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False) * 2 - 1
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_rows, test_rows = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                             stratify=labels.numpy(), random_state=0)
    return (TensorDataset(images[train_rows], labels[train_rows]),
            TensorDataset(images[test_rows], labels[test_rows]))


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y (zero fill): the augmentation."""
    if max_shift == 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, [max_shift] * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator).tolist()
    return torch.stack([image[:, dy:dy + size, dx:dx + size] for image, (dy, dx) in zip(padded, offsets)])


class Distributed:
    """The process group when launched by torchrun, else a single process."""

    def __init__(self, device: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world_size > 1
        self.device = torch.device(device)
        if self.enabled:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if self.device.type == "cuda":
                self.device = torch.device("cuda", local_rank)
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def close(self):
        if self.enabled:
            dist.destroy_process_group()


def progress_bar(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), disable=not enabled)


def train(model, phases, train_set, args, world: Distributed):
    """Run ``phases``: (description, epochs, trainable parameters, frozen modules, loss(model, x, y))."""
    sampler = DistributedSampler(train_set, world.world_size, world.rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size // world.world_size, sampler=sampler)
    generator = torch.Generator().manual_seed(args.seed * 1000 + world.rank)  # augmentation, per process
    with progress_bar(world.main and not args.no_progress) as progress:
        for description, epochs, parameters, frozen, loss_fn in phases:
            trainable = {id(p) for p in parameters}
            for p in model.parameters():
                p.requires_grad_(id(p) in trainable)
            wrapped = world.wrap(model)  # DDP syncs the parameters that require grad at construction
            optimizer = torch.optim.Adam(parameters, lr=args.lr)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
            task = progress.add_task(description, total=epochs * len(loader), status="")
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                model.train()
                for module in frozen:  # frozen blocks keep their BatchNorm statistics
                    module.eval()
                for images, labels in loader:
                    images = random_shift(images, args.max_shift, generator).to(world.device)
                    labels = labels.to(world.device)
                    loss = loss_fn(wrapped, images, labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    progress.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
    for p in model.parameters():
        p.requires_grad_(True)


def training_phases(model, args):
    if args.model == "lenet5":
        return [("lenet5", args.epochs, list(model.parameters()), [],
                 lambda m, x, y: F.cross_entropy(m(x), y))]
    if args.training == "joint":
        return [(f"{args.model} (joint)", args.epochs, list(model.parameters()), [],
                 lambda m, x, y: exit_loss(m(x), y))]
    phases = []
    for index in range(model.num_exits):  # exit k trains its own modules on top of the frozen earlier ones
        frozen = [module for earlier in range(index) for module in model.exit_modules(earlier)]
        phases.append((f"{args.model} exit {index + 1}", args.epochs, model.exit_parameters(index), frozen,
                       lambda m, x, y, k=index: F.cross_entropy(m(x, num_exits=k + 1)[-1], y)))
    return phases


@torch.no_grad()
def evaluate(model, test_set, args, device):
    model.eval()
    images, labels = (t.to(device) for t in test_set.tensors)
    if args.model == "lenet5":
        return {"test_accuracy": (model(images).argmax(1) == labels).float().mean().item()}
    exit_accuracy = [(logits.argmax(1) == labels).float().mean().item() for logits in model(images)]
    costs = torch.tensor(model.exit_costs(images.shape[1:]), dtype=torch.float64)
    early_exit = []
    for threshold in args.thresholds:
        logits, exit_used = model.predict(images, threshold)
        mean_cost = costs[exit_used.cpu()].mean().item()
        early_exit.append(dict(threshold=threshold, accuracy=(logits.argmax(1) == labels).float().mean().item(),
                               mean_exit=exit_used.double().mean().item() + 1, mean_multiply_adds=mean_cost,
                               flops_saved=1 - mean_cost / costs[-1].item()))
    return {"test_accuracy": exit_accuracy[-1], "exit_accuracy": exit_accuracy,
            "exit_multiply_adds": costs.tolist(), "early_exit": early_exit}


def report(results):
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{results['model']}: test accuracy {100 * results['test_accuracy']:.2f} % "
                  f"({results['test_samples']} test images), trained in {results['train_seconds']:.1f} s "
                  f"on {results['world_size']} process(es), {results['device']}")
    if "exit_accuracy" not in results:
        return
    exits = Table(title=f"{results['model']} exits")
    for column in ("exit", "accuracy", "multiply-adds to reach it"):
        exits.add_column(column, justify="right")
    for index, (accuracy, cost) in enumerate(zip(results["exit_accuracy"], results["exit_multiply_adds"])):
        exits.add_row(str(index + 1), f"{100 * accuracy:.2f} %", f"{cost / 1e6:.2f} M")
    console.print(exits)
    early = Table(title="Early exit (stop at the first exit with softmax confidence >= threshold)")
    for column in ("threshold", "accuracy", "mean exit", "mean multiply-adds", "FLOPs saved"):
        early.add_column(column, justify="right")
    for row in results["early_exit"]:
        early.add_row(f"{row['threshold']:g}", f"{100 * row['accuracy']:.2f} %", f"{row['mean_exit']:.2f}",
                      f"{row['mean_multiply_adds'] / 1e6:.2f} M", f"{100 * row['flops_saved']:.1f} %")
    console.print(early)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    world = Distributed(args.device)
    torch.manual_seed(args.seed)
    train_set, test_set = load_digits(args.test_fraction)
    if args.model == "lenet5":
        model = fastconv.models.lenet5(classic=args.classic)
    else:
        model = fastconv.models.get_model(args.model, in_channels=1)
    model.to(world.device)
    start = time.perf_counter()
    train(model, training_phases(model, args), train_set, args, world)
    seconds = time.perf_counter() - start
    results = dict(model=args.model, world_size=world.world_size, device=str(world.device), epochs=args.epochs,
                   seed=args.seed, train_seconds=seconds, test_samples=len(test_set),
                   **evaluate(model, test_set, args, world.device))
    if world.main:
        report(results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    world.close()
    return results


if __name__ == "__main__":
    main()
