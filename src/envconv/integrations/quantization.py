r"""Conv-BN fusion and graph-mode (PT2E) quantization of converted models.

* :func:`fuse_modules` is ``torch.ao.quantization.fuse_modules`` with fusers for envconv's
  layers: a BatchNorm after an env->conv layer folds into its convolution exactly (the envelope
  comes first, :math:`\mathrm{BN}(\mathbf F * \bar X) = \mathbf F' * \bar X + b'`), and a ReLU after
  it is kept beside it. conv->env layers are refused: the envelope between the convolution and
  the BatchNorm zero-pads, so the BatchNorm's shift cannot move into the convolution's bias.
* :func:`separate_envelopes` makes each :class:`~envconv.DisentangledConv2d` (and its 1-D and
  3-D twins) run as the envelope op and an ordinary ``aten.conv2d``, so that PT2E quantizers
  (``prepare_pt2e`` / ``convert_pt2e`` with, e.g., torchao's XNNPACK quantizer) see and quantize
  its convolution; the envelope itself stays in floating point. Without it the convolution is
  inside the ``envconv::envelope_conv`` op, which the quantizers
  leave alone.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from envconv import DisentangledConv2d
    >>> net = nn.Sequential(DisentangledConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> fused = fuse_modules(net, [["0", "1", "2"]])
    >>> [type(m).__name__ for m in fused]
    ['Sequential', 'Identity', 'Identity']
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.allclose(fused(x), net(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy
from typing import List, Sequence, Union

import torch
from torch import nn

from ..conv import (
    DisentangledConv1d,
    DisentangledConv2d,
    DisentangledConv3d,
    EnvelopeConv1d,
    EnvelopeConv2d,
    EnvelopeConv3d,
)

#: The layers :func:`separate_envelopes` changes.
DISENTANGLED = (DisentangledConv1d, DisentangledConv2d, DisentangledConv3d)

__all__ = ["FUSER_METHODS", "fuse_conv_bn", "fuse_modules", "separate_envelopes"]


def fuse_conv_bn(conv: EnvelopeConv2d, bn: nn.BatchNorm2d) -> EnvelopeConv2d:
    """A copy of the env->conv layer ``conv`` with the eval-mode BatchNorm ``bn`` folded into its weight and bias.

    Raises:
        ValueError: a conv->env layer, a BatchNorm without running statistics, or either module
            in training mode (fold for inference; the statistics must be final).

    Example:
        >>> conv, bn = DisentangledConv2d(3, 4, 3, bias=False).eval(), nn.BatchNorm2d(4).eval()
        >>> fused = fuse_conv_bn(conv, bn)
        >>> x = torch.randn(1, 3, 6, 6)
        >>> fused.bias is not None and torch.allclose(fused(x), bn(conv(x)), atol=1e-6)
        True
    """
    if conv.order != "env-conv":
        raise ValueError("cannot fold a BatchNorm into a conv->env layer: the envelope between them zero-pads, so "
                         "the BatchNorm's shift does not commute with it; keep the BatchNorm")
    if conv.training or bn.training:
        raise ValueError("fuse for inference: put the model in eval mode first (model.eval())")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return fused


def _conv_bn(is_qat: bool, conv, bn):
    _no_qat(is_qat)
    return fuse_conv_bn(conv, bn)


def _conv_bn_relu(is_qat: bool, conv, bn, relu):
    _no_qat(is_qat)
    return nn.Sequential(fuse_conv_bn(conv, bn), relu)


def _conv_relu(is_qat: bool, conv, relu):
    _no_qat(is_qat)
    return nn.Sequential(conv, relu)


def _no_qat(is_qat: bool) -> None:
    if is_qat:
        raise NotImplementedError("quantization-aware fusion of envelope layers is not supported: eager-mode QAT "
                                  "has no quantized envelope; use PT2E "
                                  "(envconv.integrations.quantization.separate_envelopes)")


#: ``torch.ao.quantization`` fuser methods for envconv's layers (``additional_fuser_method_mapping``).
FUSER_METHODS = {
    patterns: fuser
    for layers, bn in (((DisentangledConv1d, EnvelopeConv1d), nn.BatchNorm1d),
                       ((DisentangledConv2d, EnvelopeConv2d), nn.BatchNorm2d),
                       ((DisentangledConv3d, EnvelopeConv3d), nn.BatchNorm3d))
    for layer in layers
    for patterns, fuser in (((layer, bn), _conv_bn), ((layer, bn, nn.ReLU), _conv_bn_relu),
                            ((layer, nn.ReLU), _conv_relu))
}


def fuse_modules(model: nn.Module, modules_to_fuse: Union[Sequence[str], Sequence[Sequence[str]]],
                 inplace: bool = False) -> nn.Module:
    """``torch.ao.quantization.fuse_modules`` that also fuses envconv's layers (see :data:`FUSER_METHODS`).

    Plain conv-bn(-relu) groups fuse as torch fuses them; a group starting with an
    :class:`~envconv.EnvelopeConv2d` or :class:`~envconv.DisentangledConv2d` (or their 1-D and
    3-D kin, with ``BatchNorm1d`` / ``BatchNorm3d``) gets the layer with
    the BatchNorm folded in (and the ReLU beside it in an ``nn.Sequential``); the other members
    become ``nn.Identity``. Eval mode only.
    """
    mapping = {"additional_fuser_method_mapping": FUSER_METHODS}
    return torch.ao.quantization.fuse_modules(model, modules_to_fuse, inplace=inplace, fuse_custom_config_dict=mapping)


def separate_envelopes(model: nn.Module) -> List[str]:
    """Run every disentangled convolution in ``model`` (1-D, 2-D, 3-D) as the envelope op and a plain convolution.

    Sets ``recompute_envelope = False`` on each (the output is unchanged; training memory grows
    by one feature map per layer), so that graph-mode quantizers see ``aten.conv2d`` (``conv1d``,
    ``conv3d``) and quantize it. Returns the names of the layers changed.
    """
    names = []
    for name, module in model.named_modules():
        if isinstance(module, DISENTANGLED) and module.recompute_envelope:
            module.recompute_envelope = False
            names.append(name)
    return names
