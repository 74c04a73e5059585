r"""Rebuilding envelopes from weights: a plain model converted where a state dict says.

Code that builds an architecture and then loads weights into it (Hugging Face's
``from_pretrained``, timm's ``checkpoint_path``, a ``load_state_dict`` in user code)
builds plain convolutions, and the envelopes' keys are left over. :func:`load_disentangled`
reads the state dict first: every ``<layer>.envelope.raw_sigma`` names a layer to convert,
and the records stored beside it (:class:`~envconv.state_dict.ArchitectureRecord`) give the
envelope size :math:`k_g`, learned or fixed sigma, padding and order. The model is converted
exactly there, then loaded.

Example:
    >>> import torch, torchvision, envconv
    >>> trained = envconv.shrink(envconv.disentangle(torchvision.models.resnet18()), 3)
    >>> plain = torchvision.models.resnet18()             # what a loader rebuilds
    >>> model = envconv.load_disentangled(plain, trained.state_dict())
    >>> [(e.name, e.size) for e in envconv.envelopes(model)][:2]
    [('conv1', 3), ('layer2.0.conv1', 3)]
"""

from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..conv import CONVS, ENVELOPE_CONVS, ORDERS, EnvelopeConv2d
from ..envelope import GaussianEnvelope, read_envelope_record
from ..methods import build_replacement
from ..pool import POOL_ORDERS, POOLS, EnvelopePool2d
from ..state_dict import RECORD_KEY, load_weights, read_order_record
from .reparam import envelope_block, is_envelope_block, reparameterizable
from .replace import refuse_scripted, replace_modules

__all__ = ["envelope_specs", "disentangle_like", "load_disentangled"]

_SUFFIX = "envelope.raw_sigma"
Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


def _layer_of(key: str) -> Optional[str]:
    if key == _SUFFIX:
        return ""
    return key[: -len(_SUFFIX) - 1] if key.endswith("." + _SUFFIX) else None


def _key(layer: str, name: str) -> str:
    return f"{layer}.{name}" if layer else name


def envelope_specs(state: Mapping[str, torch.Tensor]) -> Dict[str, dict]:
    """Every layer of ``state`` with an envelope, mapped to what its records say.

    Each value has ``values`` (the number of stored sigmas, per axis for ``per_axis``), ``per_axis``
    (a sigma per spatial axis), ``size``, ``learnable``, ``padding_mode``, ``channels`` and ``order``
    (the order record, ``None`` for an envelope in front of a block, which has none).

    Raises:
        ValueError: a corrupt or missing envelope record.
    """
    specs = {}
    for key, raw in state.items():
        layer = _layer_of(key)
        if layer is None:
            continue
        record_key = _key(layer, "envelope." + RECORD_KEY)
        if record_key not in state:
            raise ValueError(f"the weights have {key} but not its record {record_key} (envconv stores one with every "
                             f"envelope): they were not saved from an envconv model's state_dict()")
        rec = read_envelope_record(state[record_key], record_key)
        spec = {"values": raw.shape[0] if raw.dim() == 2 else raw.numel(), "per_axis": raw.dim() == 2,
                "size": rec.size, "learnable": rec.learnable, "padding_mode": rec.padding_mode,
                "channels": rec.channels, "order": None}
        order = state.get(_key(layer, RECORD_KEY))
        if order is not None:
            spec["order"] = order  # decoded against the layer's kind, conv or pool
        specs[layer] = spec
    return specs


def _envelope(spec: dict, on: dict) -> GaussianEnvelope:
    """A free-standing envelope as ``spec`` records it (for a pool or a block; convolutions go through the methods)."""
    size, padding, channels = spec["size"], spec["padding_mode"], spec["channels"]
    shared, per_axis = spec["values"] == 1 and channels > 1, spec["per_axis"]
    if spec["learnable"] is False:
        return GaussianEnvelope.fixed(channels, _zero_sigmas(shared, channels, per_axis, 2), size,
                                      padding_mode=padding, per_axis=per_axis, **on)
    return GaussianEnvelope(channels, size, shared=shared, per_axis=per_axis, padding_mode=padding, **on)


def _zero_sigmas(shared: bool, channels: int, per_axis: bool, dims: int):
    """Placeholder sigmas of a fixed envelope's shape (the stored values replace them)."""
    values = [0.0] * (1 if shared else channels)
    return [[0.0] * dims for _ in values] if per_axis else (0.0 if shared else values)


def _order(layer: str, spec: dict, orders) -> str:
    if spec["order"] is None:
        raise ValueError(f"the weights have an envelope at {layer or '(root)'!r} but not the layer's order record "
                         f"({_key(layer, RECORD_KEY)})")
    return read_order_record(spec["order"], orders)


def _replacement(layer: str, module: nn.Module, spec: dict, on: dict) -> nn.Module:
    if type(module) in POOLS:
        order = _order(layer, spec, POOL_ORDERS)
        return EnvelopePool2d(module, _envelope(spec, on), order).train(module.training)
    if not isinstance(module, CONVS):
        raise ValueError(f"the weights have an envelope at {layer or '(root)'!r}, but that module is a "
                         f"{type(module).__name__}, neither a convolution nor a max / average pool")
    order = _order(layer, spec, ORDERS)
    channels = module.in_channels if order == "env-conv" else module.out_channels
    shared = spec["values"] == 1 and channels > 1
    options = {"envelope_size": spec["size"], "order": order, "envelope_padding_mode": spec["padding_mode"]}
    if spec["per_axis"]:
        options["sigma_per_axis"] = True
    if spec["learnable"] is False:  # the sigma values come with the weights
        sigma = _zero_sigmas(shared, channels, spec["per_axis"], len(module.kernel_size))
        return build_replacement("fixed", module, sigma=sigma, **options)
    return build_replacement("gaussian", module, shared_sigma=shared, **options)


def disentangle_like(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Convert ``model`` in place exactly where ``state`` has envelopes, as the state dict records them.

    A plain ``nn.Conv2d`` gets a :class:`~envconv.DisentangledConv2d` (a learned sigma, or a fixed
    one: ``learnable=False``); a max / average pool an
    :class:`~envconv.EnvelopePool2d`; a re-parameterizable block its envelope in front
    (:mod:`envconv.convert.reparam`); with the recorded size, order, padding and a shared or per-channel
    sigma. Layers that already have an envelope are left as they are (loading then checks them).
    Nothing is loaded: see :func:`load_disentangled`.


    Args:
        model: the rebuilt model (plain, or already partly converted).
        state: a state dict, e.g. from :func:`envconv.state_dict.load_weights`.

    Raises:
        TypeError: a TorchScript model, or a convolution that cannot be converted (see
            :func:`envconv.conv.conv_arguments`).
        ValueError: an envelope key whose layer is missing from ``model`` or is not a convolution
            or pool; a corrupt record.

    Example:
        >>> import torch
        >>> from envconv import DisentangledConv2d
        >>> state = DisentangledConv2d(3, 8, 3, envelope_size=5).state_dict()
        >>> model = disentangle_like(nn.Sequential(nn.Conv2d(3, 8, 3)), {f"0.{k}": v for k, v in state.items()})
        >>> type(model[0]).__name__, model[0].envelope_size
        ('DisentangledConv2d', 5)
    """
    refuse_scripted(model, "disentangle_like")
    specs = envelope_specs(state)
    todo: List[Tuple[str, nn.Module]] = []
    for layer in specs:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"the weights have an envelope at {layer!r}, which {type(model).__name__} does not "
                             f"have (is it the same architecture, with the same module names?)") from None
        if not isinstance(module, (EnvelopeConv2d, EnvelopePool2d, *ENVELOPE_CONVS.values())) \
                and not is_envelope_block(module):
            todo.append((layer, module))
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    on = {"device": first.device, "dtype": first.dtype} if first is not None else {}
    replacements, blocks = {}, []
    for layer, module in todo:
        if reparameterizable(module) and not isinstance(module, CONVS):  # envconv.convert.reparam: in front of it
            blocks.append((module, _envelope(specs[layer], on)))
        elif id(module) not in replacements:
            replacements[id(module)] = _replacement(layer, module, specs[layer], on)
    replace_modules(model, replacements)
    for module, envelope in blocks:
        envelope_block(module, envelope)
    return model


def load_disentangled(model: nn.Module, source: Source, *, strict: bool = True) -> nn.Module:
    """Give a rebuilt model its envelopes back and load the weights: :func:`disentangle_like`, then ``load_state_dict``.

    Args:
        model: the model a loader built (plain convolutions where the weights have envelopes).
        source: a state dict, a torch file (a state dict or a checkpoint holding one under
            ``"model"`` / ``"state_dict"``), a ``.safetensors`` file or a Hugging Face
            ``save_pretrained`` directory (:func:`envconv.state_dict.load_weights`).
        strict: as for ``load_state_dict``. A mismatch of an envelope's size, padding or order
            with a layer that already had one raises whatever ``strict`` says.

    Returns:
        ``model``, converted in place and loaded.

    Raises:
        FileNotFoundError, ValueError, ImportError: an unreadable ``source`` (see ``load_weights``).
        RuntimeError: ``load_state_dict``'s error (missing or unexpected keys, shapes, architecture records).

    Example:
        >>> import torch
        >>> from envconv import DisentangledConv2d
        >>> trained = nn.Sequential(DisentangledConv2d(3, 8, 3, envelope_size=5, order="conv-env"))
        >>> model = load_disentangled(nn.Sequential(nn.Conv2d(3, 8, 3)), trained.state_dict())
        >>> model[0].order, torch.equal(model[0].weight, trained[0].weight)
        ('conv-env', True)
    """
    state = load_weights(source)
    disentangle_like(model, state)
    model.load_state_dict(state, strict=strict)
    return model
