r"""Curriculum by Smoothing (Sinha, Garg and Larochelle, NeurIPS 2020), the paper's "CBS".

A fixed Gaussian blur after the convolution whose sigma decays on a schedule:

.. math::

    Y = \mathbf g(\cdot,\cdot;\sigma_t) * (\mathbf F * X), \qquad
    \sigma_t = \sigma_0\,\gamma^{\lfloor t / N \rfloor}

at epoch :math:`t` (counted from 0). Defaults are those of the official code
(pairlab/CBS, ``arguments.py``): :math:`\sigma_0 = 1`, :math:`\gamma = 0.9`, every
:math:`N = 5` epochs, kernel size 3; its README says to tune the three numbers for new
data. The decay has no lower bound. Nothing is learned: the blur adds no parameter.
The trainer calls :func:`set_curriculum_epoch` at the start of every epoch; the
current sigma is a buffer, so it is saved and restored with the model.

Placement differs from the CBS code (which blurs after every convolution): envconv
puts it where ``disentangle``'s ``where`` rule says, like every comparison method.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import kernels as EF
from ..envelope import GaussianEnvelope

__all__ = ["CurriculumSmoothing", "cbs_sigma", "set_curriculum_epoch", "CBS_DEFAULTS"]

#: Defaults of the official CBS code (initial sigma, decay factor, decay period in epochs, kernel size).
CBS_DEFAULTS = {"initial_sigma": 1.0, "decay": 0.9, "every": 5, "size": 3}


def cbs_sigma(epoch: int, initial_sigma: float = 1.0, decay: float = 0.9, every: int = 5) -> float:
    """The CBS schedule: ``initial_sigma * decay ** (epoch // every)``.

    Example:
        >>> [round(cbs_sigma(e), 4) for e in (0, 4, 5, 10)]
        [1.0, 1.0, 0.9, 0.81]
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return initial_sigma * decay ** (epoch // every)


class CurriculumSmoothing(GaussianEnvelope):
    """A fixed, single-sigma Gaussian envelope that follows the CBS schedule.

    Args:
        channels: number of channels.
        size: kernel size (CBS: 3).
        initial_sigma, decay, every: the schedule of :func:`cbs_sigma`.
    """

    def __init__(self, channels: int, size: int = 3, *, initial_sigma: float = 1.0, decay: float = 0.9,
                 every: int = 5, device=None, dtype=None) -> None:
        if not (initial_sigma > 0 and math.isfinite(initial_sigma)):
            raise ValueError(f"initial_sigma must be a positive number, got {initial_sigma!r}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (epochs), got {every!r}")
        super().__init__(channels, size, shared=True, learnable=False, device=device, dtype=dtype)
        self.initial_sigma, self.decay, self.every = float(initial_sigma), float(decay), every
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> float:
        """Set sigma for ``epoch``; returns it."""
        sigma = cbs_sigma(epoch, self.initial_sigma, self.decay, self.every)
        with torch.no_grad():
            self.raw_sigma.copy_(EF.raw_from_sigma(sigma).reshape(1))
        return sigma

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, initial_sigma={self.initial_sigma}, decay={self.decay}, "
                f"every={self.every}")


def set_curriculum_epoch(model: nn.Module, epoch: int) -> int:
    """Set every :class:`~envconv.methods.cbs.CurriculumSmoothing` in ``model`` to ``epoch``; returns how many.

    Example:
        >>> from envconv import create_model
        >>> set_curriculum_epoch(create_model("small_resnet20", num_classes=10, method="cbs"), 5)
        5
    """
    layers = [m for m in model.modules() if isinstance(m, CurriculumSmoothing)]
    for m in layers:
        m.set_epoch(epoch)
    return len(layers)
