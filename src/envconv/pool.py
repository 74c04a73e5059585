r"""A learned Gaussian envelope at a strided pooling layer: learnable blur pooling.

Networks that downsample with pools (VGG, DenseNet's transitions, the average-pool shortcut
of ResNet-D) get the paper's envelope where they downsample, as the strided convolutions of
a ResNet do. Two orders, as for convolutions (eqs. (3)-(6)):

* ``"env-pool"`` (the paper's env->conv): :math:`Y = \mathrm{pool}_s(\mathbf g_\sigma * X)`.
* ``"pool-env"`` (antialiased-cnns' placement, Zhang 2019): the pool at stride 1, then the
  envelope evaluated every :math:`s` pixels, :math:`Y = (\mathbf g_\sigma * \mathrm{pool}_1(X))_{\downarrow s}`;
  a fixed binomial blur there is antialiased-cnns' ``BlurPool``, a learned sigma per channel is ours.

At :math:`\sigma \to 0` (the delta envelope) both equal the original pool exactly.
"""

from __future__ import annotations

import copy
from typing import Sequence, Union

import torch
from torch import nn

from .envelope import GaussianEnvelope
from .state_dict import OrderRecord

__all__ = ["POOL_ORDERS", "POOLS", "EnvelopePool2d", "strided_pool"]

#: Processing orders of :class:`EnvelopePool2d`.
POOL_ORDERS = ("env-pool", "pool-env")
#: The pooling layers that take an envelope (when strided).
POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def strided_pool(module: nn.Module) -> bool:
    """Whether ``module`` is a max or average pool that downsamples (a stride above 1 on some axis)."""
    if type(module) not in POOLS:  # subclasses may pool differently
        return False
    stride = module.stride if module.stride is not None else module.kernel_size
    return any(s > 1 for s in _pair(stride))


class EnvelopePool2d(OrderRecord, nn.Module):
    r"""A strided max or average pool with a Gaussian envelope in front of it (or behind it).

    Args:
        pool: the ``nn.MaxPool2d`` / ``nn.AvgPool2d`` it replaces (kept as ``self.pool``; for
            ``"pool-env"`` a stride-1 copy, the envelope then takes the stride).
        envelope: a :class:`~envconv.GaussianEnvelope` over the pool's channels.
        order: ``"env-pool"`` or ``"pool-env"`` (see the module docstring).

    Shape:
        Input :math:`(N, C, H, W)`, output the pool's :math:`(N, C, H', W')`.

    Raises:
        TypeError: ``pool`` is not a max or average pool, ``envelope`` not a module.
        ValueError: an unknown order; ``"pool-env"`` with ``ceil_mode=True`` (its last
            window would be cut off by the subsampling) or with a max pool's ``return_indices``.

    Example:
        >>> pool = nn.MaxPool2d(2)
        >>> layer = EnvelopePool2d.from_pool(pool, channels=4, envelope_size=5)
        >>> x = torch.randn(1, 4, 8, 8)
        >>> layer(x).shape
        torch.Size([1, 4, 4, 4])
        >>> with torch.no_grad():
        ...     _ = layer.envelope.raw_sigma.fill_(-1e4)   # sigma -> 0: the delta envelope
        >>> torch.equal(layer(x), pool(x))
        True
    """

    _orders, _record_kind = POOL_ORDERS, "pool"  # the order record (state_dict.OrderRecord)

    def __init__(self, pool: nn.Module, envelope: nn.Module, order: str = "env-pool") -> None:
        super().__init__()
        if type(pool) not in POOLS:
            raise TypeError(f"pool must be an nn.MaxPool2d or nn.AvgPool2d, got {type(pool).__name__}")
        self._check_arguments(order, envelope)
        stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        if order == "pool-env":
            if pool.ceil_mode:
                raise ValueError("order='pool-env' needs ceil_mode=False: subsampling the stride-1 pool would drop "
                                 "the last, partial window; use order='env-pool'")
            if getattr(pool, "return_indices", False):
                raise ValueError("order='pool-env' cannot return the max pool's indices; use order='env-pool'")
            pool = copy.copy(pool)
            pool.stride = 1
        self.pool = pool
        self.envelope = envelope
        self.order = order
        self.stride = [int(s) for s in stride]

    @classmethod
    def from_pool(cls, pool: nn.Module, channels: int, *, envelope_size: Union[int, Sequence[int]] = 9,
                  order: str = "env-pool", shared_sigma: bool = False, sigma_per_axis: bool = False,
                  sigma_init: float = 0.0, envelope_padding_mode: str = "zeros", device=None,
                  dtype=None) -> "EnvelopePool2d":
        """A learned envelope (per channel, or ``shared_sigma``; ``sigma_per_axis``) at ``pool``, over ``channels``."""
        envelope = GaussianEnvelope(channels, envelope_size, shared=shared_sigma, per_axis=sigma_per_axis,
                                    init=sigma_init,
                                    padding_mode=envelope_padding_mode, device=device, dtype=dtype)
        return cls(pool, envelope, order).train(pool.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "env-pool":
            return self.pool(self.envelope(x))
        return self.envelope(self.pool(x), self.stride)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"
