"""The libraries a user would pick instead of envconv, put at the paper's places as comparison methods.

Importing this module registers four methods in :data:`envconv.methods.METHODS`; each builds its
replacement from the real peer package, imported when a model is built (``pip install dcls
antialiased-cnns kornia timm``; a missing one raises an ``ImportError`` naming it). Like every
method, :func:`envconv.disentangle` puts them where its ``where`` rule says: in a ResNet the stem
and the strided convolutions of the first block of stages 2-4 (both paths).

* ``dcls``: DCLS ``Dcls1d`` / ``Dcls2d`` (``version="gauss"``): the convolution's k x k taps at
  learned positions inside a ``dilated_kernel_size`` window, a learned sigma per tap and axis. A
  1 x 1 convolution is left as it is: its one tap can only learn a shift.
* ``blurpool``: antialiased-cnns' placement: a strided k x k conv becomes the conv at stride 1,
  then ``antialiased_cnns.BlurPool`` (fixed binomial blur) at the stride; a strided 1 x 1 conv
  becomes the blur at the stride, then the conv. Unstrided ones stay.
* ``blur-before``: a fixed blur where envconv puts its envelope: timm's ``BlurPool2d`` at stride 1
  (binomial ``filt_size`` taps, reflect padding; antialiased-cnns' ``BlurPool1D`` for an
  ``nn.Conv1d``), then the unchanged convolution.
* ``kornia-blur``: kornia's ``gaussian_blur2d`` with a learned sigma (one per layer, or one per
  channel by folding the channels into the batch) in front of the convolution: envconv's own
  function computed by kornia (equal at equal sigma and size).

And envconv's own envelope at antialiased-cnns' place (not a peer; the control that separates the
placement from the learned sigma):

* ``envelope-after``: a strided k x k conv becomes the conv at stride 1, then envconv's learned
  envelope evaluated at the stride (:class:`~envconv.EnvelopePool2d` with ``order="pool-env"``
  over a 1 x 1 average pool: the envelope alone); a strided 1 x 1 conv gets ours, whose envelope
  already comes first and is read at the stride. Unstrided ones stay. At sigma -> 0 it is the
  original network exactly.

``dcls`` and ``blur-before`` convert ``nn.Conv1d`` too, the others ``nn.Conv2d`` only. Nothing here
is imported by the library (``import envconv``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .. import kernels as EF
from ..conv import DisentangledConv2d, adopt_weights, conv_arguments
from ..methods import METHODS, register_method
from ..pool import EnvelopePool2d

__all__ = ["PEERS", "REGISTERED", "KorniaBlurConv2d", "freeze_dcls"]

#: The peer methods and the PyPI package each needs.
PEERS = {"dcls": "dcls", "blurpool": "antialiased-cnns", "blur-before": "timm", "kornia-blur": "kornia"}
#: Every method this module registers: the peers, and envconv's envelope at antialiased-cnns' place.
REGISTERED = (*PEERS, "envelope-after")


def _need(module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(f"this comparison method needs the {package!r} package (pip install {package})") from err


def _strided(conv: nn.Conv2d) -> bool:
    return any(s > 1 for s in conv.stride)


def _at_stride_one(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` rebuilt at stride 1 with the same weight and bias Parameters."""
    args = conv_arguments(conv)
    args["stride"] = 1
    return adopt_weights(nn.Conv2d(**args), conv)


def _dcls(conv: nn.Module, *, dilated_kernel_size: int = 5):
    if all(k == 1 for k in conv.kernel_size):
        return conv
    construct = _need("DCLS.construct.modules", "dcls")
    args = conv_arguments(conv)
    dims, k = len(conv.kernel_size), conv.kernel_size[0]
    if args["padding_mode"] != "zeros" or any(d != 1 for d in args["dilation"]) or set(conv.kernel_size) != {k}:
        raise ValueError(f"dcls replaces square, undilated, zero-padded convolutions, got {conv}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # DCLS logs 2-5 warnings to the root logger for every layer it builds on CPU
    try:
        layer = (construct.Dcls1d if dims == 1 else construct.Dcls2d)(
            args["in_channels"], args["out_channels"], kernel_count=k ** dims, stride=args["stride"],
            padding=dilated_kernel_size // 2, dilated_kernel_size=dilated_kernel_size, groups=args["groups"],
            bias=args["bias"], version="gauss")
    finally:
        root.setLevel(level)
    return layer.to(device=args["device"], dtype=args["dtype"]).train(conv.training)


def freeze_dcls(model: nn.Module) -> nn.Module:
    """Replace every DCLS layer of ``model`` by a plain convolution with its dense kernel, built once.

    DCLS rebuilds its dense ``dilated_kernel_size`` kernel from the tap weights, positions and
    sigmas at every call, inference included; for inference the kernel can be built once and
    run as an ``nn.Conv1d`` / ``nn.Conv2d`` (same outputs, nothing left to train). Returns ``model``
    (a frozen convolution itself when ``model`` is a DCLS layer).
    """
    construct = _need("DCLS.construct.modules", "dcls")
    for name, layer in list(model.named_modules()):
        if not isinstance(layer, (construct.Dcls1d, construct.Dcls2d)):
            continue
        conv_type = nn.Conv1d if isinstance(layer, construct.Dcls1d) else nn.Conv2d
        with torch.no_grad():
            dense = layer.DCK(layer.weight, layer.P, layer.SIG)
            plain = conv_type(layer.in_channels, layer.out_channels, dense.shape[2:], stride=layer.stride,
                              padding=layer.padding, groups=layer.groups, bias=layer.bias is not None,
                              device=dense.device, dtype=dense.dtype)
            plain.weight.copy_(dense)
            if layer.bias is not None:
                plain.bias.copy_(layer.bias)
        plain.requires_grad_(False).train(layer.training)
        if name:
            model.set_submodule(name, plain)
        else:
            return plain
    return model


def _blurpool(conv: nn.Conv2d, *, filt_size: int = 4):
    if not _strided(conv):
        return conv
    aa = _need("antialiased_cnns", "antialiased-cnns")
    stride = conv.stride[0]
    if conv.kernel_size == (1, 1):  # antialiased-cnns' ResNet downsample: blur, then the 1x1 conv
        return nn.Sequential(aa.BlurPool(conv.in_channels, filt_size=filt_size, stride=stride), _at_stride_one(conv))
    return nn.Sequential(_at_stride_one(conv), aa.BlurPool(conv.out_channels, filt_size=filt_size, stride=stride))


def _envelope_after(conv: nn.Conv2d, *, envelope_size: int = 9, sigma_init: float = 0.0):
    if not _strided(conv):
        return conv
    if conv.kernel_size == (1, 1):
        return DisentangledConv2d.from_conv(conv, envelope_size=envelope_size, sigma_init=sigma_init)
    subsample = nn.AvgPool2d(1, stride=conv.stride)
    envelope = EnvelopePool2d.from_pool(subsample, conv.out_channels, envelope_size=envelope_size, order="pool-env",
                                        sigma_init=sigma_init, device=conv.weight.device, dtype=conv.weight.dtype)
    if not conv.weight.requires_grad:
        envelope.requires_grad_(False)
    return nn.Sequential(_at_stride_one(conv), envelope.train(conv.training))


def _blur_before(conv: nn.Module, *, filt_size: int = 3):
    if isinstance(conv, nn.Conv1d):  # timm blurs images only: antialiased-cnns' 1-D blur
        blur = _need("antialiased_cnns.blurpool", "antialiased-cnns").BlurPool1D(conv.in_channels, filt_size=filt_size,
                                                                                  stride=1)
    else:
        blur = _need("timm.layers", "timm").BlurPool2d(conv.in_channels, filt_size=filt_size, stride=1)
    return nn.Sequential(blur.to(conv.weight.device, conv.weight.dtype), conv)


class KorniaBlurConv2d(nn.Module):
    """kornia's ``gaussian_blur2d`` with a learned sigma (eq. (9)'s softplus parameterisation), then ``conv``.

    Args:
        conv: the convolution that follows (kept as it is, at its stride).
        size: the blur's k x k size.
        per_channel: one sigma per input channel (channels folded into kornia's batch), else one per layer.
    """

    def __init__(self, conv: nn.Conv2d, size: int = 9, per_channel: bool = True) -> None:
        super().__init__()
        self.kornia = _need("kornia.filters", "kornia")
        self.size = size
        channels = conv.in_channels if per_channel else 1
        self.raw_sigma = nn.Parameter(torch.zeros(channels, device=conv.weight.device, dtype=conv.weight.dtype))
        self.conv = conv

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        sigma = EF.sigma2_from_raw(self.raw_sigma).sqrt()
        if self.raw_sigma.numel() == 1:
            sigma = sigma.expand(n, 2)
            return self.kornia.gaussian_blur2d(x, (self.size, self.size), sigma, border_type="constant")
        sigma = sigma.repeat(n).unsqueeze(1).expand(n * c, 2)  # sample-major: (n, c) -> n * C + c
        folded = x.reshape(n * c, 1, h, w)
        return self.kornia.gaussian_blur2d(folded, (self.size, self.size), sigma, border_type="constant").view(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.blur(x))


def _kornia_blur(conv: nn.Conv2d, *, envelope_size: int = 9, per_channel: bool = True):
    return KorniaBlurConv2d(conv, envelope_size, per_channel)


def _register() -> None:
    for name, build, reference, summary, dims in (
        ("dcls", _dcls, "Khalfaoui-Hassani et al. 2023", "DCLS Dcls1d/2d (gauss): learned tap positions", (1, 2)),
        ("blurpool", _blurpool, "Zhang 2019", "antialiased-cnns: conv at stride 1, then a fixed BlurPool", (2,)),
        ("blur-before", _blur_before, "timm BlurPool2d", "a fixed binomial blur before the convolution", (1, 2)),
        ("kornia-blur", _kornia_blur, "kornia", "kornia gaussian_blur2d with a learned sigma", (2,)),
        ("envelope-after", _envelope_after, "Zhang 2019's placement",
         "the conv at stride 1, then envconv's learned envelope at the stride", (2,)),
    ):
        if name not in METHODS:  # a second import (importlib.reload) keeps the first registration
            register_method(name, build, reference, summary, dims)


_register()
