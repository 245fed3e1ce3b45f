"""What every multi-exit ("anytime") network here shares: the exit-by-exit forward, early-exit inference
with per-sample stopping, the multiply-adds to reach each exit, the exit confidence, the joint loss, and the
budgeted-batch thresholds of MSDNet (Huang et al., ICLR 2018, and its code's ``dynamic_evaluate``).

A network subclasses :class:`AnytimeNetwork` and says how to run itself one exit at a time:

* ``start(x)`` -> the state before the first block (whatever later blocks read: SmartNet's feature matrix,
  MSDNet's list of per-scale maps);
* ``step(index, state)`` -> runs block ``index`` (updating ``state``) and returns exit ``index``'s logits;
* ``keep(state, rows)`` -> the state of only the samples ``rows`` (indices into the current batch);
* ``exit_modules(index)`` -> the modules exit ``index`` adds (trained alone in exit-by-exit training).
"""
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastconv.models._complexity import multiply_add_counter

__all__ = ["AnytimeNetwork", "budgeted_thresholds", "exit_confidence", "exit_loss", "geometric_exit_fractions"]


def exit_confidence(logits: torch.Tensor) -> torch.Tensor:
    """The confidence an exit has in its prediction: the top softmax probability, ``(N, classes) -> (N,)``."""
    return logits.softmax(1).amax(1)


def exit_loss(exit_logits: Sequence[torch.Tensor], target: torch.Tensor,
              weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Joint training loss: ``sum_k weights[k] * cross_entropy(exit_logits[k], target)`` (uniform weights
    summing to 1 by default, as in MSDNet)."""
    weights = weights or [1.0 / len(exit_logits)] * len(exit_logits)
    return sum(w * F.cross_entropy(logits, target) for w, logits in zip(weights, exit_logits))


class AnytimeNetwork(nn.Module):
    """Base of the multi-exit networks: ``model(x)`` is the list of exit logits, earliest first;
    :meth:`predict` stops each sample early; :meth:`exit_costs` counts what each exit costs."""

    num_classes: int

    @property
    def num_exits(self) -> int:
        raise NotImplementedError

    def start(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(self, index: int, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def keep(self, state: Any, rows: torch.Tensor) -> Any:
        raise NotImplementedError

    def exit_modules(self, index: int) -> List[nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, num_exits: Optional[int] = None) -> List[torch.Tensor]:
        """The logits of the first ``num_exits`` exits (default: all), earliest first."""
        state = self.start(x)
        return [self.step(index, state) for index in range(num_exits or self.num_exits)]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, threshold: Union[float, Sequence[float]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Early-exit inference: (logits ``(N, num_classes)``, exit index ``(N,)``).

        Each sample stops at the first exit whose :func:`exit_confidence` is >= ``threshold`` (one number, or
        one per exit as :func:`budgeted_thresholds` gives; the last exit takes the rest); later blocks run only
        on the samples still going. Call in eval mode: in training mode BatchNorm would normalise each block
        over the samples that reach it.
        """
        thresholds = [threshold] * self.num_exits if isinstance(threshold, (int, float)) else list(threshold)
        if len(thresholds) != self.num_exits:
            raise ValueError(f"predict: threshold needs one value per exit ({self.num_exits}), got {len(thresholds)}")
        batch = x.shape[0]
        logits = torch.empty(batch, self.num_classes, device=x.device, dtype=x.dtype)
        exit_used = torch.full((batch,), self.num_exits - 1, device=x.device, dtype=torch.long)
        going = torch.arange(batch, device=x.device)  # original indices of the samples still going
        state = self.start(x)
        for index in range(self.num_exits):
            exit_logits = self.step(index, state)
            last = index == self.num_exits - 1
            stop = (torch.ones_like(going, dtype=torch.bool) if last
                    else exit_confidence(exit_logits) >= thresholds[index])
            logits[going[stop]] = exit_logits[stop].to(logits.dtype)
            exit_used[going[stop]] = index
            rows = (~stop).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            going = going[rows]
            state = self.keep(state, rows)
        return logits, exit_used

    def exit_parameters(self, index: int) -> List[nn.Parameter]:
        """The parameters trained for exit ``index`` alone in exit-by-exit training (:meth:`exit_modules`)."""
        return [p for module in self.exit_modules(index) for p in module.parameters()]

    def exit_costs(self, input_size: Sequence[int]) -> List[int]:
        """Multiply-adds for one ``(C, H, W)`` input to reach each exit (cumulative, earliest first): every
        block up to and including the exit's, and every exit on the way."""
        reference = next(self.parameters())
        x = torch.zeros(1, *input_size, device=reference.device, dtype=reference.dtype)
        was_training = self.training
        self.eval()
        costs = []
        with multiply_add_counter() as count:
            state = self.start(x)
            for index in range(self.num_exits):
                self.step(index, state)
                costs.append(count())
        self.train(was_training)
        return costs


def geometric_exit_fractions(ratio: float, num_exits: int) -> List[float]:
    """The share of samples meant to leave at each exit in budgeted batch classification: ``q_k`` proportional
    to ``ratio ** k`` (k = 1..num_exits), summing to 1 (MSDNet's code: ``p = exp(log(ratio) * k)``). Small
    ratios send most samples out early (a small budget), ratios above 1 keep them to the end."""
    weights = [ratio ** k for k in range(1, num_exits + 1)]
    return [w / sum(weights) for w in weights]


def budgeted_thresholds(exit_logits: Sequence[torch.Tensor], fractions: Sequence[float]) -> List[float]:
    """Per-exit confidence thresholds under which about ``fractions[k]`` of the samples (of held-out data:
    ``exit_logits`` is a forward of it) leave at exit k, as MSDNet's ``dynamic_eval_find_threshold``: at each
    exit, of the samples still going, the most confident ones leave. The last threshold is -inf."""
    confidences = torch.stack([exit_confidence(logits.float()) for logits in exit_logits])  # (exits, N)
    samples = confidences.shape[1]
    going = torch.ones(samples, dtype=torch.bool, device=confidences.device)
    thresholds = []
    for index in range(len(exit_logits) - 1):
        quota = min(int(round(samples * fractions[index])), int(going.sum()))
        candidates = torch.where(going, confidences[index], torch.full_like(confidences[index], -1.0))
        if quota == 0:
            thresholds.append(float("inf"))
            continue
        ranked = candidates.sort(descending=True).values
        thresholds.append(ranked[quota - 1].item())
        going &= confidences[index] < thresholds[-1]
    thresholds.append(float("-inf"))
    return thresholds
