"""A small, real learning demo: a disentangled convolution learns a known envelope back.

A teacher blurs random images with fixed Gaussian envelopes of known sigma (one per
channel, or one per channel and axis) and then applies a fixed 3x3 convolution. A
:class:`~envconv.DisentangledConv2d` student (``DisentangledConv1d`` / ``DisentangledConv3d`` for
sequences and volumes) with the teacher's filter, frozen, and sigma initialised at the paper's
raw value 0 (sigma = 0.833) learns the sigmas from the teacher's outputs by gradient
descent on the mean squared error. With a sigma per axis, each axis's sigma is learned back
on its own: a volume's depth apart from its height and width.

The discrete filter is frozen because only the composite filter g * F is identified
by input/output pairs: a free 3x3 filter can absorb part of a blur, so sigma would
not be recoverable as a number.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..conv import DISENTANGLED_CONVS, DisentangledConv2d
from ..envelope import GaussianEnvelope
from .arguments import integer, non_negative_int, positive_float, positive_int
from .tables import format_table

__all__ = ["SigmaRecoveryResult", "run_sigma_recovery", "add_arguments", "main"]


@dataclass
class SigmaRecoveryResult:
    """Outcome of :func:`run_sigma_recovery`: the target and learned sigmas and the loss history."""

    teacher_sigma: list
    learned_sigma: list
    losses: List[float]

    @property
    def relative_error(self) -> List[float]:
        """``abs(learned - teacher) / teacher`` per channel (per channel and axis, flattened, for a sigma per axis)."""
        return [abs(s - t) / t for s, t in zip(_flat(self.learned_sigma), _flat(self.teacher_sigma))]


def _flat(values) -> List[float]:
    return [float(v) for row in values for v in (row if isinstance(row, (list, tuple)) else [row])]


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def run_sigma_recovery(
    teacher_sigma: Sequence[Union[float, Sequence[float]]] = (0.6, 1.3, 1.8),
    *,
    spatial_dims: int = 2,
    steps: int = 400,
    lr: float = 0.1,
    batch_size: int = 8,
    image_size: int = 32,
    envelope_size: int = 9,
    out_channels: int = 8,
    seed: int = 0,
    callback: Optional[Callable[[int, float, torch.Tensor], None]] = None,
) -> SigmaRecoveryResult:
    """Train a student's sigmas to match a teacher's; returns what it learned.

    Args:
        teacher_sigma: the teacher's sigma per input channel (each > 0), or per channel a
            sequence of one sigma per spatial axis (a sigma per axis, learned per axis).
        spatial_dims: 1 (sequences), 2 (images) or 3 (volumes): the student is a
            ``DisentangledConv{1,2,3}d``.
        steps: optimisation steps (Adam on ``raw_sigma``).
        lr: Adam learning rate.
        batch_size: images per step: random N(0, 1) images, fresh at every step.
        image_size: their side, (batch_size, C, image_size, image_size) in 2-D (one side per axis).
        envelope_size: k_g of both envelopes.
        out_channels: output channels of the 3x3 convolution.
        seed: seeds the teacher's filter and the images.
        callback: called as ``callback(step, loss, sigma)`` after every step.
    """
    if spatial_dims not in _CONVS:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    per_axis = bool(teacher_sigma) and all(isinstance(s, (list, tuple)) for s in teacher_sigma)
    if per_axis and any(len(s) != spatial_dims for s in teacher_sigma):
        raise ValueError(f"a per-axis teacher_sigma needs {spatial_dims} sigmas per channel (one per spatial "
                         f"axis), got {[list(s) for s in teacher_sigma]}")
    if not teacher_sigma or any(not isinstance(s, (int, float)) or not s > 0 for s in _flat(teacher_sigma)):
        raise ValueError(f"teacher_sigma must be positive numbers, got {list(teacher_sigma)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator = torch.Generator().manual_seed(seed)
    channels = len(teacher_sigma)
    sigma = [list(s) for s in teacher_sigma] if per_axis else list(teacher_sigma)
    teacher_env = GaussianEnvelope.fixed(channels, sigma, envelope_size, spatial_dims=spatial_dims,
                                         per_axis=per_axis)
    teacher_conv = _CONVS[spatial_dims](channels, out_channels, 3, padding=1, bias=False)
    with torch.no_grad():
        teacher_conv.weight.copy_(torch.randn(teacher_conv.weight.shape, generator=generator) / 3)
    layer = DisentangledConv2d if spatial_dims == 2 else DISENTANGLED_CONVS[_CONVS[spatial_dims]]
    student = layer.from_conv(teacher_conv, envelope_size=envelope_size, sigma_init=0.0, sigma_per_axis=per_axis)
    student.weight.requires_grad_(False)
    optimizer = torch.optim.Adam([student.envelope.raw_sigma], lr=lr)
    losses = []
    for step in range(1, steps + 1):
        x = torch.randn(batch_size, channels, *[image_size] * spatial_dims, generator=generator)
        with torch.no_grad():
            target = teacher_conv(teacher_env(x))
        loss = F.mse_loss(student(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1], student.envelope.sigma.detach())
    return SigmaRecoveryResult(
        teacher_sigma=[[float(v) for v in s] for s in sigma] if per_axis else [float(s) for s in sigma],
        learned_sigma=student.envelope.sigma.detach().tolist(),
        losses=losses,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``envconv sigma-demo``'s arguments to ``parser``."""
    parser.add_argument("--sigma", type=_channel_sigma, nargs="+", default=[0.6, 1.3, 1.8],
                        help="teacher sigma per channel (default: 0.6 1.3 1.8); a sigma per axis as "
                             "comma-separated values, one per spatial axis, e.g. 0.6,1.5,1.5 with --dims 3")
    parser.add_argument("--dims", type=integer, choices=(1, 2, 3), default=2,
                        help="spatial dimensions: 1 sequences, 2 images (default), 3 volumes")
    parser.add_argument("--steps", type=positive_int, default=400, help="optimisation steps (default: 400)")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="Adam learning rate (default: 0.1)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per step (default: 8)")
    parser.add_argument("--image-size", type=positive_int, default=32, help="image side in pixels (default: 32)")
    parser.add_argument("--envelope-size", type=positive_int, default=9, help="k_g of the envelopes (default: 9)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    return parser


def _channel_sigma(text: str):
    """One channel's teacher sigma: a number, or comma-separated numbers (one per axis)."""
    try:
        values = [float(v) for v in text.split(",") if v]  # "0.6," is one axis's sigma (1-D, per axis)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    return values[0] if len(values) == 1 and "," not in text else tuple(values)


def main(args: argparse.Namespace) -> int:
    """Run ``envconv sigma-demo``: print the loss and sigmas as they are learned, then the errors."""
    sigma, dims = args.sigma, args.dims
    per_axis = any(isinstance(s, tuple) for s in sigma)
    if per_axis and not all(isinstance(s, tuple) and len(s) == dims for s in sigma):
        print(f"envconv sigma-demo: error: with a sigma per axis give every channel {dims} comma-separated "
              f"values (--dims {dims}), got {' '.join(map(str, sigma))}")
        return 2
    shown = ", ".join("(" + ", ".join(f"{v:g}" for v in s) + ")" if per_axis else f"{s:g}" for s in sigma)
    side = "x".join([str(args.image_size)] * dims)
    print(
        f"Teacher: Gaussian envelope (k_g={args.envelope_size}) with sigma = {shown} per channel"
        f"{' (one per axis)' if per_axis else ''}, then a fixed size-3 conv.\n"
        f"Student: DisentangledConv{dims}d with the teacher's filter (frozen), raw sigma "
        f"initialised at 0; Adam lr={args.lr:g}, {args.steps} steps, batches of "
        f"{args.batch_size} random {side} inputs.\n"
    )
    names = [f"sigma[{c},{a}]" for c in range(len(sigma)) for a in range(dims)] if per_axis else \
        [f"sigma[{c}]" for c in range(len(sigma))]
    header = ["step", "loss"] + names
    print(format_table(header, [], min_width=9))
    every = max(1, args.steps // 10)

    def report(step: int, loss: float, learned) -> None:
        if step == 1 or step % every == 0 or step == args.steps:
            cells = [str(step), f"{loss:.3e}"] + [f"{float(s):.4f}" for s in learned.reshape(-1)]
            print(format_table(header, [cells], min_width=9).splitlines()[1], flush=True)

    result = run_sigma_recovery(
        sigma,
        spatial_dims=dims,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        envelope_size=args.envelope_size,
        seed=args.seed,
        callback=report,
    )
    print()
    labels = [n.removeprefix("sigma[").rstrip("]") for n in names]
    rows = [
        [label, f"{t:.4f}", f"{s:.4f}", f"{100 * e:.3f}%"]
        for label, t, s, e in zip(labels, _flat(result.teacher_sigma), _flat(result.learned_sigma),
                                  result.relative_error)
    ]
    print(format_table(["channel" + (",axis" if per_axis else ""), "teacher", "learned", "rel. error"], rows))
    print(f"\nfinal loss {result.losses[-1]:.3e}; max relative sigma error {100 * max(result.relative_error):.3f}%")
    return 0
