"""One training epoch and one evaluation pass; what the trainer, ``eval`` and ``probe`` share.

Loss and error sums are kept on the device and summed over processes at the end, so a
step never waits for the host except at the ``log_every`` checks of the loss.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, world_size

__all__ = ["EpochStats", "NonFiniteLossError", "topk_correct", "train_one_epoch", "evaluate", "recalibrate_batchnorm",
           "autocast", "parameter_clamp"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochStats:
    """Mean loss, top-1 / top-5 error (%) over ``images`` images, and the wall time.

    Example:
        >>> stats = EpochStats(loss=0.5, top1_err=10.0, top5_err=1.0, images=100, seconds=2.0)
        >>> stats.images_per_s, stats.as_dict()["top1_err"]
        (50.0, 10.0)
    """

    loss: float
    top1_err: float
    top5_err: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s}


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many rows have their target among the top ``k`` logits, for each ``k`` (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == targets[:, None]
    return torch.stack([hit[:, : min(k, logits.shape[1])].any(dim=1).sum() for k in ks])


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``amp_dtype``, or nothing when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool,
               dtype: Optional[torch.dtype] = None):
    images = images.to(device, dtype=dtype, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def _stats(sums: torch.Tensor, seconds: float) -> EpochStats:
    loss_sum, top1, top5, n = all_reduce_sum(sums).tolist()
    n = int(n)
    if n == 0:
        return EpochStats(float("nan"), float("nan"), float("nan"), 0, seconds)
    return EpochStats(loss_sum / n, 100.0 * (1 - top1 / n), 100.0 * (1 - top5 / n), n, seconds)


def parameter_clamp(model: nn.Module) -> Callable[[], None]:
    """What to call after each optimizer step: every ``clamp_parameters()`` of ``model``'s modules.

    Layers that keep their parameters in range that way (DCLS's tap positions) expect it after
    every step, as their own training loops do.
    """
    modules = [m for m in model.modules() if callable(getattr(m, "clamp_parameters", None))]

    def clamp() -> None:
        for module in modules:
            module.clamp_parameters()

    return clamp


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    dtype: Optional[torch.dtype] = None,
    label_smoothing: float = 0.0,
    log_every: int = 50,
    progress=None,
    epoch: int = 0,
    scheduler=None,
) -> EpochStats:
    """Train ``model`` for one pass over ``loader``; returns this epoch's statistics over all processes.

    ``scheduler``, when given, is stepped after every optimizer step (a per-step schedule); a
    module with a ``clamp_parameters()`` method (DCLS's layers) has it called after every step.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (checked every ``log_every``
            steps and at the end, before any checkpoint of this epoch is written).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> loader = torch.utils.data.DataLoader(data, batch_size=16)
        >>> first = train_one_epoch(model, loader, optimizer, device=torch.device("cpu"))
        >>> later = [train_one_epoch(model, loader, optimizer, device=torch.device("cpu")) for _ in range(5)][-1]
        >>> first.images, later.loss < first.loss
        (64, True)
    """
    model.train()
    clamp = parameter_clamp(model)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss * n, top-1 hits, top-5 hits, n
    start = time.perf_counter()
    for step, (images, targets) in enumerate(loader, 1):
        images, targets = _to_device(images, targets, device, channels_last, dtype)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        clamp()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            n = targets.shape[0]
            sums[0] += loss.detach().double() * n
            sums[1:3] += topk_correct(logits.detach(), targets)
            sums[3] += n
        if step % log_every == 0:
            _check_finite(sums, epoch, step)
            if progress is not None:  # the loss (a device sync) every log_every steps only
                progress.set_postfix(loss=float(sums[0] / sums[3]), err=float(100 * (1 - sums[1] / sums[3])),
                                     refresh=False)
        if progress is not None:
            progress.update(1)  # the bar moves from the first step
    _check_finite(sums, epoch, None)
    return _stats(sums, time.perf_counter() - start)


def _check_finite(sums: torch.Tensor, epoch: int, step: Optional[int]) -> None:
    if not bool(torch.isfinite(sums[0])):
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        raise NonFiniteLossError(
            f"the training loss is not finite ({where}); stopping without writing this epoch's checkpoint. "
            "Lower train.lr, add train.warmup_epochs, or use train.amp=none; the last finished checkpoint is intact")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    dtype: Optional[torch.dtype] = None,
    progress=None,
) -> EpochStats:
    """Mean cross-entropy and top-1 / top-5 error of ``model`` (in eval mode) over ``loader``, all processes.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> data = torch.utils.data.TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,)))
        >>> stats = evaluate(model, torch.utils.data.DataLoader(data, batch_size=4), device=torch.device("cpu"))
        >>> stats.images, 0 <= stats.top1_err <= 100, stats.top5_err
        (10, True, 0.0)
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    start = time.perf_counter()
    for images, targets in loader:
        images, targets = _to_device(images, targets, device, channels_last, dtype)
        with autocast(device, amp_dtype):
            logits = model(images)
        n = targets.shape[0]
        sums[0] += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        sums[1:3] += topk_correct(logits, targets)
        sums[3] += n
        if progress is not None:
            progress.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return _stats(sums, time.perf_counter() - start)


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, batches: int, *, device: Optional[torch.device] = None,
                          channels_last: bool = False, dtype: Optional[torch.dtype] = None) -> int:
    """Recompute every BatchNorm layer's running mean and variance with the model's current weights.

    The statistics become the plain average of the batch statistics over the first ``batches``
    batches of ``loader`` (items ``(images, labels)``), as :func:`torch.optim.swa_utils.update_bn`
    computes them, then the average over all processes; the model's train / eval mode is kept.
    During training they are exponential averages over batches that earlier weights produced,
    which lag the final weights.

    Returns:
        The number of images this process computed the statistics from.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
        >>> images = [(torch.full((4, 1, 5, 5), 2.0), torch.zeros(4))]
        >>> recalibrate_batchnorm(net, images, batches=1)
        4
        >>> torch.allclose(net[1].running_mean, net[0](images[0][0]).mean((0, 2, 3)).detach())
        True
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive int, got {batches!r}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta, training = [m.momentum for m in norms], model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    device = device or next(iter(model.parameters()), torch.zeros(0)).device
    seen = 0
    with torch.no_grad():
        for images, targets in itertools.islice(loader, batches):
            model(_to_device(images, targets, device, channels_last, dtype)[0])
            seen += len(images)
        world = world_size()
        for m in norms:  # all_reduce_sum sums in place
            all_reduce_sum(m.running_mean).div_(world)
            all_reduce_sum(m.running_var).div_(world)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(training)
    return seen
