"""Putting a method into a model: ``disentangle``, the replacement by attribute name, pools and blocks."""

from __future__ import annotations

import logging
import warnings
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from ..conv import CONVS
from ..envelope import GaussianEnvelope
from ..methods import build_replacement, check_options, get_method
from ..pool import EnvelopePool2d
from .placement import POOL_METHODS, Where, convolutions, modify_stem, select_layers
from .reparam import block_of, envelope_block

__all__ = ["disentangle", "pool_channels", "refuse_scripted", "replace_modules"]

log = logging.getLogger("envconv")


def disentangle(
    model: nn.Module,
    *,
    where: Where = "downsample",
    stem: str = "paper",
    method: str = "gaussian",
    envelope_size: Union[None, int, Sequence[int]] = None,
    order: Optional[str] = None,
    shared_sigma: bool = False,
    sigma_per_axis: bool = False,
    sigma_init: Optional[float] = None,
    envelope_padding_mode: Optional[str] = None,
    input_size: Sequence[int] = (64, 64),
    **method_options,
) -> nn.Module:
    """Put ``method`` into ``model`` at the paper's places (or yours), in place; returns ``model``.

    Every selected ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` or strided pool (see
    :func:`select_layers` for ``where`` and ``stem``) is replaced, by attribute name, with the
    method's module built from it: weights, bias, device, dtype, ``requires_grad`` and
    train/eval mode are kept, and nothing else in the model changes. The new module holds the old
    one's weight and bias ``Parameter`` objects, so weights tied between layers stay tied, and a
    convolution used at several places (one module object under two names) gets one replacement
    at all of them. ``stem="modified"`` first rebuilds the first layer as in Fig. 5c
    (:func:`~envconv.convert.modify_stem`); its two new strided convolutions are then converted
    too (for ``where`` rules that select them).

    Args:
        model: any module holding ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` layers
            (torchvision, timm, torchaudio, envconv models); each gets the layer of its dimensionality.
        where: ``"downsample"`` (the paper), ``"residual"``, ``"identity"``, ``"pools"``,
            ``"downsample+pools"``, a list of names/glob patterns, or a predicate ``(name, module) -> bool``.
        stem: ``"paper"``, ``"none"`` or ``"modified"`` (2-D ResNets).
        method: a name of :data:`envconv.methods.METHODS` (``"gaussian"``: ours; ``"none"``:
            the baseline, which still validates ``where`` and applies ``stem="modified"``).
        envelope_size: :math:`k_g` (or one per spatial axis); ``None`` uses the method's default (9; 3 for
            ``cbs``).
        order: ``"env-conv"`` or ``"conv-env"`` for envelope methods; ``None``: default.
        shared_sigma: one sigma per layer instead of one per channel (``gaussian`` only).
        sigma_per_axis: a sigma per channel and spatial axis (``gaussian`` and ``fixed``): a clip's
            time axis apart from its height and width.
        sigma_init: the initial raw sigma (``gaussian``; ``None``: 0, i.e. sigma 0.833).
        envelope_padding_mode: the envelope's padding (``gaussian`` and ``fixed``; ``None``: zeros).
        input_size: ``(H, W)`` of the dummy image that finds the pools' channel counts
            (:func:`~envconv.convert.pool_channels`), used only when envelopes go at pools.
        **method_options: the method's own options, e.g. ``sigma=0.6`` for ``fixed``,
            ``learnable=False`` for ``gaussian`` (sigma kept at its initial value),
            ``initial_sigma=1.0, decay=0.9, every=5`` for ``cbs``.

    At a pool (``where="pools"``), ``gaussian`` and ``fixed`` put an
    :class:`~envconv.pool.EnvelopePool2d`; their ``order`` ``"env-conv"`` (default) becomes
    ``"env-pool"``, ``"conv-env"`` becomes ``"pool-env"`` (antialiased-cnns' placement).

    Raises:
        TypeError: ``model`` is a TorchScript module (convert the eager model, then script it).
        ValueError: unknown method, ``where`` or ``stem``; an option the method does not
            take; a pattern that matches nothing; a model without convolutions; a method
            other than ``gaussian`` / ``fixed`` at a pool, or a pool whose channels cannot be found.
        TypeError: a selected convolution that cannot be converted (already converted,
            or a subclass with its own ``forward``).

    Every check runs before the first layer is replaced, so an error leaves the model as
    it was, except that ``stem="modified"`` has already rebuilt the first layer when a
    later check (a ``where`` pattern, say) fails.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                     nn.Conv2d(8, 16, 3, stride=2, padding=1))
        >>> net = disentangle(net)
        >>> [type(m).__name__ for m in net]
        ['DisentangledConv2d', 'ReLU', 'DisentangledConv2d']
    """
    refuse_scripted(model, "disentangle")
    get_method(method)
    options = dict(method_options)
    for name, value in (("envelope_size", envelope_size), ("order", order), ("shared_sigma", shared_sigma or None),
                        ("sigma_per_axis", sigma_per_axis or None), ("sigma_init", sigma_init),
                        ("envelope_padding_mode", envelope_padding_mode)):
        if value is not None:
            options[name] = value
    check_options(method, options)
    if isinstance(model, CONVS):
        raise ValueError("model is itself a convolution; convert it with the method's module, e.g. "
                         "DisentangledConv2d.from_conv(conv)")
    if stem == "modified":
        modify_stem(model)
    with warnings.catch_warnings():
        if method == "none":  # the baseline converts nothing: a stem-only warning would mislead
            warnings.simplefilter("ignore", UserWarning)
        names = select_layers(model, where, stem)
    if method == "none":
        return model
    pools = [name for name in names if not isinstance(model.get_submodule(name), CONVS)]
    if pools and method not in POOL_METHODS:
        raise ValueError(f"method {method!r} cannot go at a pool ({pools[0]}, ...): where='pools' takes "
                         f"method {' or '.join(repr(m) for m in POOL_METHODS)}")
    blocks = _reparameterizable_blocks(model, [n for n in names if n not in pools], method, options)
    channels = pool_channels(model, pools + list(blocks), input_size) if pools or blocks else {}
    for block, convs in blocks.items():
        if channels[block] != model.get_submodule(convs[0]).in_channels:
            raise ValueError(f"cannot put the envelope of {convs[0]} in front of {block}, the block that folds it for "
                             f"inference: the block's input has {channels[block]} channels, the convolution reads "
                             f"{model.get_submodule(convs[0]).in_channels}")
    first = convolutions(model)[0][1].weight
    on = {"device": first.device, "dtype": first.dtype}
    inside = {conv for convs in blocks.values() for conv in convs}
    replacements = {}
    for name in names:
        module = model.get_submodule(name)
        if name not in inside and id(module) not in replacements:
            replacements[id(module)] = (_pool_replacement(method, module, channels[name], options, on)
                                        if name in pools else build_replacement(method, module, **options))
    places = replace_modules(model, replacements)
    for block, convs in blocks.items():
        envelope = _envelope(method, channels[block], options, on)
        if not model.get_submodule(convs[0]).weight.requires_grad:  # a frozen block keeps a frozen envelope
            envelope.requires_grad_(False)
        envelope_block(model.get_submodule(block), envelope)
    log.info("envconv: %s at %d layers: %s", method, len(names), ", ".join(names)
             + (f" (also used as {', '.join(sorted(set(places) - set(names)))})" if set(places) - set(names) else "")
             + (f"; in front of the re-parameterizable blocks {', '.join(blocks)}" if blocks else ""))
    return model


def _reparameterizable_blocks(model: nn.Module, convs: Sequence[str], method: str, options: dict) -> dict:
    """The selected convolutions inside blocks that fold themselves for inference, by block (convert.reparam)."""
    blocks: dict = {}
    for name in convs:
        block = block_of(model, name)
        if block is not None:
            blocks.setdefault(block, []).append(name)
    for block, names in blocks.items():
        what = f"{names[0]} is inside {block} ({type(model.get_submodule(block)).__name__}), which folds it into a " \
               f"new convolution for inference, so its envelope goes in front of the block"
        if method not in POOL_METHODS:
            raise ValueError(f"{what}; method {method!r} cannot: use {' or '.join(map(repr, POOL_METHODS))}")
        if isinstance(model.get_submodule(block), (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"{what}; but it is a container whose fold reads its children in order, which an "
                             f"envelope child would change: leave {names[0]} out of where")
        if options.get("order", "env-conv") != "env-conv":
            raise ValueError(f"{what}; order='conv-env' cannot")
        if len({model.get_submodule(n).in_channels for n in names}) > 1:
            raise ValueError(f"{what}; its convolutions {names} read different channel counts, so they are not "
                             f"branches over one input")
    return blocks


def replace_modules(model: nn.Module, replacements: dict) -> List[str]:
    """Put ``replacements[id(old)]`` wherever ``old`` sits in ``model``; returns every name replaced.

    A module used at several places (``named_modules`` lists it once) gets its one
    replacement at all of them, so sharing survives.
    """
    places = [name for name, m in model.named_modules(remove_duplicate=False) if id(m) in replacements and name]
    originals = {name: model.get_submodule(name) for name in places}
    for name in places:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, replacements[id(originals[name])])
    return places


class _SharedPool(ValueError):
    """One pool object called with different channel counts."""


def pool_channels(model: nn.Module, names: Sequence[str], input_size: Sequence[int] = (64, 64)) -> dict:
    """The number of channels each named pool (or block) sees at its input: one dummy forward (eval mode, no grad).

    A pool does not know its channels; the envelope put there needs them (so does one put in
    front of a re-parameterizable block, to check that its convolutions read the block's input). The forward runs on
    zeros of shape ``(1, C, H, W)``, ``C`` the first convolution's input channels (an error
    after the last pool, in a head that does not take that size, is ignored); the model's
    train/eval modes are restored.

    Raises:
        ValueError: the forward fails before reaching every pool (say which; another
            ``input_size`` may help), skips one (a pool the forward does not call), or calls
            one pool object at places with different channel counts.
    """
    modules = {name: model.get_submodule(name) for name in names}
    seen: dict = {}

    def hook(module, inputs, name):
        c = int(inputs[0].shape[1])
        if seen.setdefault(name, c) != c:
            raise _SharedPool(f"the pool {name} is called at places with {seen[name]} and {c} channels: one "
                              f"envelope per pool object cannot serve both; give each place its own pool module")

    first = convolutions(model)[0][1]
    x = torch.zeros(1, first.in_channels, *input_size, device=first.weight.device, dtype=first.weight.dtype)
    handles = [m.register_forward_pre_hook(lambda mod, inp, n=n: hook(mod, inp, n)) for n, m in modules.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except _SharedPool:
        raise
    except (RuntimeError, ValueError) as error:
        if len(seen) == len(modules):  # the head may not take the dummy size; the pools have been seen
            return seen
        raise ValueError(f"cannot find the input channels of {sorted(set(modules) - set(seen))}: a dummy "
                         f"{tuple(x.shape)} forward failed ({error}); pass input_size=(H, W) the model "
                         f"takes") from error
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    missing = sorted(set(modules) - set(seen))
    if missing:
        raise ValueError(f"the forward never calls {missing}: their input channels are unknown; "
                         f"leave them out of where")
    return seen


def _envelope(method: str, channels: int, options: dict, on: dict) -> GaussianEnvelope:
    """The free-standing envelope of ``gaussian`` / ``fixed`` with the method's options (at a pool or a block)."""
    size, padding = options.get("envelope_size", 9), options.get("envelope_padding_mode", "zeros")
    per_axis = options.get("sigma_per_axis", False)
    if method == "fixed":
        return GaussianEnvelope.fixed(channels, options["sigma"], size, padding_mode=padding, per_axis=per_axis, **on)
    return GaussianEnvelope(channels, size, shared=options.get("shared_sigma", False), per_axis=per_axis,
                            init=options.get("sigma_init", 0.0), padding_mode=padding, **on)


def _pool_replacement(method: str, pool: nn.Module, channels: int, options: dict, on: dict) -> EnvelopePool2d:
    order = {"env-conv": "env-pool", "conv-env": "pool-env"}[options.get("order", "env-conv")]
    return EnvelopePool2d(pool, _envelope(method, channels, options, on), order).train(pool.training)


def refuse_scripted(module: nn.Module, what: str) -> None:
    """Raise ``TypeError`` for a TorchScript module, which ``what`` (a function name) cannot change."""
    if isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"{what}() cannot change a TorchScript module (torch.jit.trace): its code is compiled; "
                        f"{what} the eager model first, then trace it")
